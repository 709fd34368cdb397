"""``POST /api/v1/webhooks/{provider}``: verified provider events drive the session lifecycle.

The adapter verifies the call (Stripe-Signature, Adyen's per-item HMAC, PayPal's
verify-webhook-signature call) and maps it to events; each event is de-duplicated by its id,
applied atomically and answered in the form the provider expects. A call that fails
verification changes nothing and gets 400; an event for an unknown session is acknowledged
(and logged) so the provider stops resending it; when the gateway cannot process an event
(store down, PayPal's verification unreachable, an exception out of the adapter's parser) it
answers 503 and the provider retries.
A PayPal approval is answered once the capture it calls for is stored with the session; the
capture itself runs in the background (:mod:`gateway.completion`).
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.adapter_boundary import typed
from gateway.api.openapi import EXTRA_PATHS
from gateway.appkeys import ADAPTERS, LIFECYCLE, SETTINGS, STORE
from gateway.domain.errors import BadRequest, NotFound, ServiceUnavailable
from gateway.metrics import WEBHOOKS_RECEIVED
from gateway.middleware import LOG_CONTEXT
from providers.base import ProviderEvent, WebhookVerificationError

__all__ = ["setup_webhook_routes"]

log = logging.getLogger("gateway.webhooks")


def _event_label(event: ProviderEvent) -> str:
    """A bounded metric label: the lifecycle status the event maps to (``refund_<status>`` for
    a refund's progress)."""
    if event.refund is not None:
        return f"refund_{event.refund.status.value.lower()}"
    return event.status.value.lower() if event.status is not None else "other"


async def receive_webhook(request: web.Request) -> web.Response:
    """Verify, de-duplicate and apply a provider's webhook call."""
    provider = request.match_info["provider"]
    adapter = request.app[ADAPTERS].get(provider)
    if adapter is None:
        raise NotFound("Unknown provider")
    request[LOG_CONTEXT]["provider"] = provider
    raw = await request.read()
    try:
        events = await adapter.parse_webhook(request.headers, raw)
    except Exception as raised:  # the adapter boundary: whatever it raises is typed here
        exc = typed(provider, "parse_webhook", raised)
        if isinstance(exc, WebhookVerificationError):
            WEBHOOKS_RECEIVED.labels(provider, "unknown", "invalid_signature").inc()
            log.warning("webhook refused: %s", exc.reason, extra={"provider": provider})
            raise BadRequest("Webhook verification failed") from None
        WEBHOOKS_RECEIVED.labels(provider, "unknown", "error").inc()
        log.warning("webhook not verified now: %s", exc.outcome, extra={"provider": provider})
        raise ServiceUnavailable() from None
    store = request.app[STORE]
    lifecycle = request.app[LIFECYCLE]
    settings = request.app[SETTINGS]
    ttl = settings.webhook_dedup_ttl_seconds
    # an event is leased while it is applied and marked done only afterwards: a process that
    # dies in between leaves the lease to run out, and the provider's resend is applied then
    lease = settings.request_deadline_seconds * 2
    for event in events:
        if event.event_id:
            state = await store.claim_event(provider, event.event_id, lease_s=lease)
            if state == "done":
                WEBHOOKS_RECEIVED.labels(provider, _event_label(event), "duplicate").inc()
                continue
            if state == "processing":
                WEBHOOKS_RECEIVED.labels(provider, _event_label(event), "in_progress").inc()
                raise ServiceUnavailable(details="event is being processed; retry later")
        try:
            outcome = await lifecycle.handle_event(event)
        except BaseException:
            if event.event_id:
                await store.forget_event(provider, event.event_id)
            WEBHOOKS_RECEIVED.labels(provider, _event_label(event), "error").inc()
            raise
        if event.event_id:
            await store.finish_event(provider, event.event_id, ttl_s=ttl)
        WEBHOOKS_RECEIVED.labels(provider, _event_label(event), outcome).inc()
    answer = adapter.webhook_answer()
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)


def setup_webhook_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/webhooks/{provider}", receive_webhook)


EXTRA_PATHS.update(
    {
        "/api/v1/webhooks/{provider}": {
            "post": {
                "operationId": "receiveProviderWebhook",
                "summary": "Provider webhook (Stripe, Adyen, PayPal), verified by its signature",
                "description": "Not for merchants: each provider is configured to call "
                "`/api/v1/webhooks/stripe`, `/adyen` or `/paypal`. Authenticated by the "
                "provider's signature (Stripe-Signature; Adyen HMAC; PayPal verification call).",
                "parameters": [
                    {
                        "name": "provider",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["stripe", "adyen", "paypal"]},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": {"description": "Accepted, in the provider's expected form"},
                    "400": {"description": "Signature or body not valid: nothing changed"},
                    "404": {"description": "Unknown provider"},
                    "503": {"description": "Not processed now; the provider should retry"},
                },
            }
        }
    }
)
