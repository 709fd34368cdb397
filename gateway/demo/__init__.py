"""The demo shop and the result page, routed in sandbox mode only (production answers 404).

::

    GET  /demo                  a merchant's checkout page: a basket and a Buy button; below,
                                the notifications the demo merchant received
    POST /demo/buy              creates a session through the public API with a demo token
                                (minted here, ``sessions:write`` only), then 303 to its page
    GET  /demo/result           one session's outcome for a person to read; needs the
                                session's signed link (:func:`result_link`)
    POST /demo/notifications    the demo merchant's notification endpoint: verifies the
                                ``Gateway-Signature`` and keeps the last ones in memory
"""

from gateway.demo.links import DEMO_MERCHANT, demo_webhook, result_link, result_url
from gateway.demo.routes import setup_demo_routes

__all__ = ["DEMO_MERCHANT", "demo_webhook", "result_link", "result_url", "setup_demo_routes"]
