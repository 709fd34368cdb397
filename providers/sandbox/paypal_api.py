"""Emulated PayPal REST API: OAuth2 tokens, Orders v2 create/get and webhook verification,
close enough that :class:`providers.paypal.PayPalAdapter` cannot tell.

- ``POST /paypal/v1/oauth2/token``: Basic client credentials, ``grant_type=client_credentials``.
- ``POST /paypal/v2/checkout/orders``: Bearer token (401 with issue INVALID_TOKEN otherwise);
  ``PayPal-Request-Id`` answers 201 first and 200 with the same order on a replay; the same id
  with a different body is refused (422 DUPLICATE_REQUEST_ID).
- ``POST /paypal/v1/notifications/verify-webhook-signature``: SUCCESS only for a transmission
  this sandbox really sent, with the same headers, webhook id and event.

``notify`` sends the events PayPal would; for a paid order the sandbox also performs the
merchant's capture (or authorization) itself, so CHECKOUT.ORDER.APPROVED is followed by
PAYMENT.CAPTURE.COMPLETED (or PAYMENT.AUTHORIZATION.CREATED).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from aiohttp import web

from providers.paypal_transformers import REQUEST_ID_MAX
from providers.sandbox.paypal_rules import (
    PayPalError,
    check_order,
    check_verify_request,
    error_body,
)
from providers.sandbox.state import SandboxSession, SandboxState

__all__ = ["PayPalSandbox", "error_body", "notify", "paypal_sandbox", "register"]

PROVIDER = "paypal"
_ORDER_LIFETIME = timedelta(hours=3)
_ID_CHARS = string.ascii_uppercase + string.digits


@dataclass(frozen=True, slots=True)
class Transmission:
    """One webhook delivery as sent: what its headers said and the event it carried."""

    time: str
    sig: str
    cert_url: str
    auth_algo: str
    webhook_id: str
    event: dict[str, Any]


@dataclass(slots=True)
class PayPalSandbox:
    """The emulator's own state: issued tokens and sent transmissions."""

    token_lifetime_seconds: int = 32_400
    tokens: dict[str, datetime] = field(default_factory=dict)
    token_requests: int = 0
    transmissions: dict[str, Transmission] = field(default_factory=dict)

    def revoke_tokens(self) -> None:
        """Invalidate every issued token (as if they had expired)."""
        self.tokens.clear()


def paypal_sandbox(state: SandboxState) -> PayPalSandbox:
    """The PayPal emulator state kept on ``state``."""
    found = state.extensions.get(PROVIDER)
    if not isinstance(found, PayPalSandbox):
        found = state.extensions[PROVIDER] = PayPalSandbox()
    return found


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _paypal_id(length: int = 17) -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(length))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _bearer_problem(request: web.Request, pp: PayPalSandbox) -> web.Response | None:
    auth = request.headers.get("Authorization", "")
    token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
    expires = pp.tokens.get(token)
    if expires is not None and datetime.now(UTC) < expires:
        return None
    detail = {"issue": "INVALID_TOKEN", "description": "The access token is invalid or expired."}
    return _json(error_body(401, details=[detail]), 401)


def _with_query(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def register(app: web.Application, state: SandboxState) -> None:
    """Add PayPal's token, orders and webhook-verification routes to the sandbox app."""
    pp = paypal_sandbox(state)

    async def token(request: web.Request) -> web.Response:
        pp.token_requests += 1
        auth = request.headers.get("Authorization", "")
        try:
            decoded = base64.b64decode(auth.removeprefix("Basic "), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        expected = (
            f"{state.config.secret(PROVIDER, 'client_id')}:"
            f"{state.config.secret(PROVIDER, 'client_secret')}"
        )
        if not auth.startswith("Basic ") or not hmac.compare_digest(
            decoded.encode(), expected.encode()
        ):
            return _json(
                {"error": "invalid_client", "error_description": "Client Authentication failed"},
                401,
            )
        form = parse_qs((await request.read()).decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            return _json(
                {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"},
                400,
            )
        access = "A21AA" + secrets.token_urlsafe(48)
        pp.tokens[access] = datetime.now(UTC) + timedelta(seconds=pp.token_lifetime_seconds)
        return _json(
            {
                "scope": "https://uri.paypal.com/services/payments/payment",
                "access_token": access,
                "token_type": "Bearer",
                "app_id": "APP-SANDBOX",
                "expires_in": pp.token_lifetime_seconds,
                "nonce": f"{_now()}{secrets.token_urlsafe(12)}",
            }
        )

    async def create_order(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not JSON.").response()
        if not isinstance(body, dict):
            return PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not an object.").response()
        key = request.headers.get("PayPal-Request-Id")
        if key is not None and not 0 < len(key) <= REQUEST_ID_MAX:
            return PayPalError(
                400, "INVALID_STRING_LENGTH", "PayPal-Request-Id", f"1 to {REQUEST_ID_MAX}."
            ).response()
        fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        record = state.idempotency_get(PROVIDER, key) if key is not None else None
        if record is not None and record.in_flight:
            detail = {"issue": "REQUEST_IN_PROGRESS", "description": "Retry shortly."}
            return _json({**error_body(409), "name": "RESOURCE_CONFLICT", "details": [detail]}, 409)
        if record is not None:
            if record.fingerprint != fingerprint or record.body is None:
                return PayPalError(
                    422,
                    "DUPLICATE_REQUEST_ID",
                    "PayPal-Request-Id",
                    "The PayPal-Request-Id was already used with a different request.",
                ).response()
            return web.Response(status=200, body=record.body, content_type="application/json")
        try:
            return_url, cancel_url = check_order(body)
        except PayPalError as exc:
            return exc.response()
        if key is not None:  # claimed before the work: a concurrent retry meets it in flight
            state.idempotency_begin(PROVIDER, key, fingerprint)
        try:
            await state.processing_delay(PROVIDER)
        except BaseException:
            if key is not None:
                state.idempotency_abandon(PROVIDER, key)
            raise
        order_id = _paypal_id()
        api = f"{state.public_base(request)}/sandbox/{PROVIDER}"
        action = "payer-action" if "payment_source" in body else "approve"
        order = {
            "id": order_id,
            "intent": body["intent"],
            "status": "PAYER_ACTION_REQUIRED" if action == "payer-action" else "CREATED",
            **({"payment_source": {"paypal": {}}} if action == "payer-action" else {}),
            "purchase_units": body["purchase_units"],
            "create_time": _now(),
            "links": [
                {"href": f"{api}/v2/checkout/orders/{order_id}", "rel": "self", "method": "GET"},
                {
                    "href": state.checkout_url(request, PROVIDER, order_id),
                    "rel": action,
                    "method": "GET",
                },
            ],
        }
        unit = body["purchase_units"][0]
        state.add_session(
            SandboxSession(
                provider=PROVIDER,
                id=order_id,
                amount=str(unit["amount"]["value"]),
                currency=str(unit["amount"]["currency_code"]),
                success_url=_with_query(return_url, token=order_id, PayerID=_paypal_id(13)),
                failure_url=_with_query(cancel_url, token=order_id),
                expires_at=datetime.now(UTC) + _ORDER_LIFETIME,
                order_reference=unit.get("invoice_id"),
                metadata={"gatewaySessionId": unit["custom_id"]} if unit.get("custom_id") else {},
                raw_request=body,
                extra={"order": order, "api": api},
            )
        )
        minimal = {k: order[k] for k in ("id", "status", "links")}
        prefer = request.headers.get("Prefer", "return=minimal").strip().lower()
        raw = orjson.dumps(order if prefer == "return=representation" else minimal)
        if key is not None:
            state.idempotency_finish(PROVIDER, key, 201, raw)
        return web.Response(status=201, body=raw, content_type="application/json")

    async def get_order(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        session = state.get_session(PROVIDER, request.match_info["id"])
        if session is None:
            detail = {"issue": "INVALID_RESOURCE_ID", "description": "Order not found."}
            return _json(
                {**error_body(404), "name": "RESOURCE_NOT_FOUND", "details": [detail]}, 404
            )
        return _json(session.extra["order"])

    async def verify(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
            check_verify_request(body)
        except orjson.JSONDecodeError:
            return PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not JSON.").response()
        except PayPalError as exc:
            return exc.response()
        sent = pp.transmissions.get(body["transmission_id"])
        genuine = sent is not None and (
            hmac.compare_digest(sent.sig, body["transmission_sig"])
            and (sent.time, sent.cert_url, sent.auth_algo, sent.webhook_id, sent.event)
            == (
                body["transmission_time"],
                body["cert_url"],
                body["auth_algo"],
                body["webhook_id"],
                body["webhook_event"],
            )
        )
        return _json({"verification_status": "SUCCESS" if genuine else "FAILURE"})

    app.router.add_post(f"/{PROVIDER}/v1/oauth2/token", token)
    app.router.add_post(f"/{PROVIDER}/v2/checkout/orders", create_order)
    app.router.add_get(f"/{PROVIDER}/v2/checkout/orders/{{id}}", get_order)
    app.router.add_post(f"/{PROVIDER}/v1/notifications/verify-webhook-signature", verify)


def _payment(session: SandboxSession, kind: str, status: str) -> dict[str, Any]:
    order = session.extra["order"]
    unit = order["purchase_units"][0]
    resource: dict[str, Any] = {
        "id": _paypal_id(),
        "status": status,
        "amount": {"currency_code": session.currency, "value": session.amount},
        "supplementary_data": {"related_ids": {"order_id": order["id"]}},
        "create_time": _now(),
        "update_time": _now(),
    }
    for name in ("custom_id", "invoice_id"):
        if unit.get(name):
            resource[name] = unit[name]
    if kind == "capture":
        resource["final_capture"] = True
    source = (session.raw_request or {}).get("payment_source") or {}
    vault = ((source.get("paypal") or {}).get("attributes") or {}).get("vault")
    if status in ("COMPLETED", "CREATED") and vault:
        # ON_SUCCESS: the wallet is vaulted with the successful payment
        token = session.extra.setdefault("vault_id", _paypal_id(7).lower())
        customer = session.extra.setdefault("vault_customer", _paypal_id(10))
        resource["payment_source"] = {
            "paypal": {
                "attributes": {
                    "vault": {"id": token, "status": "VAULTED", "customer": {"id": customer}}
                }
            }
        }
    return resource


def events_for(session: SandboxSession, outcome: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(event_type, resource_type, resource) PayPal sends for ``outcome``, in order.

    Updates the stored order's status as PayPal would.
    """
    order = session.extra["order"]
    if outcome in ("cancelled", "expired"):
        order["status"] = "VOIDED"
        return [("CHECKOUT.ORDER.VOIDED", "checkout-order", dict(order))]
    order["status"] = "APPROVED"
    events = [("CHECKOUT.ORDER.APPROVED", "checkout-order", dict(order))]
    if outcome == "paid" and order["intent"] == "AUTHORIZE":
        events.append(
            ("PAYMENT.AUTHORIZATION.CREATED", "authorization", _payment(session, "auth", "CREATED"))
        )
    elif outcome == "paid":
        capture = _payment(session, "capture", "COMPLETED")
        events.append(("PAYMENT.CAPTURE.COMPLETED", "capture", capture))
    elif order["intent"] == "AUTHORIZE":
        events.append(("CHECKOUT.PAYMENT-APPROVAL.REVERSED", "checkout-order", dict(order)))
    else:
        capture = _payment(session, "capture", "DECLINED")
        events.append(("PAYMENT.CAPTURE.DENIED", "capture", capture))
    if outcome == "paid":
        order["status"] = "COMPLETED"
    return events


async def send_event(
    state: SandboxState, session: SandboxSession, event_type: str, kind: str, resource: Any
) -> None:
    """Sign, remember and POST one webhook event to the gateway."""
    api = session.extra.get("api", "")
    event_id = f"WH-{_paypal_id()}-{_paypal_id()}"
    event = {
        "id": event_id,
        "event_version": "1.0",
        "create_time": _now(),
        "resource_type": kind,
        "resource_version": "2.0",
        "event_type": event_type,
        "summary": event_type.replace(".", " ").lower(),
        "resource": resource,
        "links": [
            {"href": f"{api}/v1/notifications/webhooks-events/{event_id}", "rel": "self"},
        ],
    }
    body = orjson.dumps(event)
    webhook_id = state.config.secret(PROVIDER, "webhook_id")
    transmission_id = str(uuid.uuid4())
    sent_at = _now()
    message = f"{transmission_id}|{sent_at}|{webhook_id}|{zlib.crc32(body)}"
    key = state.config.secret(PROVIDER, "client_secret").encode()
    signature = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
    cert_url = f"{api}/v1/notifications/certs/CERT-SANDBOX-0001"
    paypal_sandbox(state).transmissions[transmission_id] = Transmission(
        sent_at, signature, cert_url, "SHA256withRSA", webhook_id, orjson.loads(body)
    )
    headers = {
        "Content-Type": "application/json",
        "PAYPAL-TRANSMISSION-ID": transmission_id,
        "PAYPAL-TRANSMISSION-TIME": sent_at,
        "PAYPAL-TRANSMISSION-SIG": signature,
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
    }
    await state.send_webhook(PROVIDER, body, headers)


async def notify(state: SandboxState, session: SandboxSession, outcome: str) -> None:
    """POST PayPal's webhook events for ``outcome`` of ``session`` to the gateway, in order."""
    for event_type, kind, resource in events_for(session, outcome):
        await send_event(state, session, event_type, kind, resource)
