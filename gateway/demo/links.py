"""The demo merchant, its notification secret, and the signed links to the result page.

The result page shows a session only to a browser holding its link: ``?session=<id>&sig=<h>``
where ``h`` is an HMAC of the session id under a key derived from the gateway's JWT signing
key (:func:`result_link`). Whoever created the session holds its link; nobody can read
another session by guessing ids.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from gateway.notifications.merchants import MerchantWebhook
from gateway.settings import DEV_JWT_SECRET, Settings

__all__ = [
    "DEMO_MERCHANT",
    "RESULT_PATH",
    "demo_key",
    "demo_webhook",
    "result_link",
    "result_url",
    "sign_session",
    "verify_session",
]

#: the merchant the demo shop and ``make run``'s printed curl act as
DEMO_MERCHANT = "demo-merchant"
RESULT_PATH = "/demo/result"
NOTIFICATIONS_PATH = "/demo/notifications"


def demo_key(settings: Settings) -> bytes:
    """A key for the demo's links and notifications, the same in every worker process.

    Derived from what signs the gateway's tokens (the HS256 secret, the development secret,
    or the private key file's bytes): whoever holds it can mint tokens anyway.
    """
    if settings.jwt_secret is not None:
        material = settings.jwt_secret.get_secret_value().encode()
    elif settings.jwt_private_key_file is not None:
        material = settings.jwt_private_key_file.read_bytes()
    elif settings.jwt_public_key_file is not None:
        material = settings.jwt_public_key_file.read_bytes()
    else:
        material = DEV_JWT_SECRET.encode()
    return hmac.new(material, b"gateway demo merchant", hashlib.sha256).digest()


def result_url(settings: Settings) -> str:
    """The result page's address (a merchant's ``redirectUrls`` may point here)."""
    return f"{settings.base_url}{RESULT_PATH}"


def sign_session(key: bytes, session_id: str) -> str:
    """The ``sig`` that opens ``session_id``'s result page."""
    return hmac.new(key, f"result:{session_id}".encode(), hashlib.sha256).hexdigest()[:32]


def verify_session(key: bytes, session_id: str, sig: str) -> bool:
    """True when ``sig`` opens ``session_id``'s result page."""
    return hmac.compare_digest(sign_session(key, session_id), sig)


def result_link(settings: Settings, session_id: str) -> str:
    """The result page of ``session_id``, signed: what a request's ``redirectUrls`` give.

    A session's id is known before it is created (``session_id_for(merchant, key)``), so the
    demo shop and ``make run``'s printed request put their session's link in the request.
    """
    query = urlencode({"session": session_id, "sig": sign_session(demo_key(settings), session_id)})
    return f"{result_url(settings)}?{query}"


def demo_webhook(settings: Settings) -> MerchantWebhook:
    """The demo merchant's notification webhook: the gateway's own demo endpoint."""
    secret = hmac.new(demo_key(settings), b"notifications", hashlib.sha256).hexdigest()
    return MerchantWebhook(
        merchant_id=DEMO_MERCHANT,
        url=f"{settings.base_url}{NOTIFICATIONS_PATH}",
        secrets=(secret,),
        events=frozenset({"payment_session.created", "payment_session.updated"}),
    )
