"""Emulated Adyen Checkout API v71 (``POST /adyen/v71/sessions``) and its standard
notifications, close enough that :class:`providers.adyen.AdyenAdapter` cannot tell.

Auth is ``X-API-Key`` (401 with Adyen's ServiceError body otherwise); ``Idempotency-Key``
replays the first answer and refuses a different body with the same key; validation errors
answer 422 ``errorType: validation``. ``notify`` POSTs a NotificationRequest whose item carries
a valid ``hmacSignature`` made with the sandbox HMAC key.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from aiohttp import web

from gateway.domain.money import is_active_currency
from providers.adyen.transformers import (
    IDEMPOTENCY_KEY_MAX,
    METADATA_KEY_MAX,
    METADATA_MAX_PAIRS,
    METADATA_VALUE_MAX,
    adyen_exponent,
    hmac_signature,
)
from providers.sandbox import adyen_payments
from providers.sandbox.state import SandboxSession, SandboxState

__all__ = ["error_body", "notify", "register"]

PROVIDER = "adyen"
_MAX_EXPIRY = timedelta(hours=24)
_REQUIRED = {
    "merchantAccount": "901",
    "amount": "100",
    "reference": "130",
    "returnUrl": "14_030",
}


def error_body(status: int, message: str, code: str = "000", kind: str = "") -> dict[str, Any]:
    """Adyen's ServiceError shape: ``{status, errorCode, message, errorType}``."""
    if not kind:
        kind = {401: "security", 403: "security", 422: "validation"}.get(status, "internal")
        if status == 429:
            kind = "throttling"
    return {"status": status, "errorCode": code, "message": message, "errorType": kind}


def _error(status: int, message: str, code: str = "000") -> web.Response:
    body = orjson.dumps(error_body(status, message, code))
    return web.Response(status=status, body=body, content_type="application/json")


def _fingerprint(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _problem(body: dict[str, Any], now: datetime) -> tuple[str, str] | None:
    """The first validation problem as (errorCode, message), or None."""
    for field, code in _REQUIRED.items():
        if body.get(field) in (None, ""):
            return code, f"Required field '{field}' is not provided."
    amount = body["amount"]
    value = amount.get("value") if isinstance(amount, dict) else None
    currency = amount.get("currency") if isinstance(amount, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return "137", "Invalid amount specified"
    if not isinstance(currency, str) or not is_active_currency(currency):
        return "138", "Unsupported currency specified"
    lines = body.get("lineItems")
    if isinstance(lines, list) and lines:
        try:
            total = sum(int(line["amountIncludingTax"]) * int(line["quantity"]) for line in lines)
        except (KeyError, TypeError, ValueError):
            return "702", "lineItems need amountIncludingTax and quantity"
        if total != value:
            return "14_032", "The sum of lineItems does not match the amount"
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        return "702", "Unexpected input: metadata must be an object"
    if len(metadata) > METADATA_MAX_PAIRS:
        return "14_055", f"Metadata allows at most {METADATA_MAX_PAIRS} entries"
    for key, item in metadata.items():
        if len(key) > METADATA_KEY_MAX or not isinstance(item, str):
            return "14_056", "Metadata key too long or value not a string"
        if len(item) > METADATA_VALUE_MAX:
            return "14_057", f"Metadata value exceeds {METADATA_VALUE_MAX} characters"
    if "expiresAt" in body:
        try:
            expires = datetime.fromisoformat(str(body["expiresAt"]))
        except ValueError:
            return "702", "Unexpected input: expiresAt"
        if expires.tzinfo is None or not now < expires <= now + _MAX_EXPIRY:
            return "14_019", "expiresAt must be in the future and within 24 hours"
    if not urlsplit(str(body["returnUrl"])).scheme:
        return "14_030", "Return URL is not valid"
    return None


def _return_url(return_url: str, session_id: str) -> str:
    """The return URL with what Adyen appends: ``sessionId`` and an opaque ``sessionResult``."""
    query = urlencode({"sessionId": session_id, "sessionResult": secrets.token_urlsafe(24)})
    return f"{return_url}{'&' if '?' in return_url else '?'}{query}"


def register(app: web.Application, state: SandboxState) -> None:
    """Add ``POST /adyen/v71/sessions`` to the sandbox app."""

    async def create_session(request: web.Request) -> web.Response:
        secret = state.config.secret(PROVIDER, "api_key")
        given = request.headers.get("X-API-Key", "")
        if not given or not secrets.compare_digest(given.encode(), secret.encode()):
            return _error(401, "HTTP Status Response - Unauthorized")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "Unexpected input: malformed JSON", "702")
        if not isinstance(body, dict):
            return _error(400, "Unexpected input: body must be an object", "702")
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
            return _error(422, f"Idempotency-Key longer than {IDEMPOTENCY_KEY_MAX}", "704")
        fingerprint = _fingerprint(body)
        if key is not None:
            record = state.idempotency_get(PROVIDER, key)
            if record is not None:
                if record.in_flight or record.fingerprint != fingerprint or record.body is None:
                    return _error(422, "request already processed or in progress", "704")
                return web.Response(
                    status=record.status or 201,
                    body=record.body,
                    content_type="application/json",
                    headers=record.headers,
                )
        now = datetime.now(UTC)
        problem = _problem(body, now)
        if problem is not None:
            return _error(422, problem[1], problem[0])
        if body["merchantAccount"] != state.config.secret(PROVIDER, "merchant_account"):
            return _error(403, "Invalid Merchant Account", "901")
        if key is not None:  # claimed before the work: a concurrent retry meets it in flight
            state.idempotency_begin(PROVIDER, key, fingerprint)

        async def work() -> web.Response:
            # runs to its end even when the caller hangs up (see SandboxState.detached)
            await state.creation_delay(PROVIDER, key)
            session_id = "CS" + secrets.token_hex(8).upper()
            expires = (
                datetime.fromisoformat(body["expiresAt"])
                if "expiresAt" in body
                else now + timedelta(hours=1)
            )
            answer: dict[str, Any] = {
                **body,
                "id": session_id,
                "expiresAt": expires.astimezone(UTC).isoformat(timespec="seconds"),
                "sessionData": "Ab02b4c0!" + secrets.token_urlsafe(48),
            }
            if body.get("mode") == "hosted":
                answer["url"] = state.checkout_url(request, PROVIDER, session_id)
            currency = body["amount"]["currency"]
            return_to = _return_url(str(body["returnUrl"]), session_id)
            state.add_session(
                SandboxSession(
                    provider=PROVIDER,
                    id=session_id,
                    amount=body["amount"]["value"],
                    currency=currency,
                    success_url=return_to,
                    failure_url=return_to,
                    expires_at=expires,
                    order_reference=str(body["reference"]),
                    metadata=dict(body.get("metadata") or {}),
                    raw_request=body,
                    minor_exponent=adyen_exponent(currency),
                    extra={"merchantAccount": body["merchantAccount"]},
                    saves_only=_saves_only(body),
                )
            )
            raw = orjson.dumps(answer)
            headers = {"Idempotency-Key": key} if key is not None else {}
            if key is not None:
                state.idempotency_finish(PROVIDER, key, 201, raw, headers)
            return web.Response(
                status=201, body=raw, content_type="application/json", headers=headers
            )

        return await state.detached(work())

    app.router.add_post(f"/{PROVIDER}/v71/sessions", create_session)
    adyen_payments.register(app, state)


def _saves_only(body: dict[str, Any]) -> bool:
    """A zero-value session that stores the method: its pay page saves, charging nothing."""
    stores = body.get("storePaymentMethodMode") == "enabled" and body.get("shopperReference")
    return bool(stores) and body["amount"]["value"] == 0


#: outcome -> (eventCode, success, reason). Adyen's ``CANCELLATION`` is a merchant cancelling
#: an authorisation, never a shopper leaving: a shopper who leaves the page (the sandbox's
#: Cancel) leaves the session to lapse, which Adyen reports as ``OFFER_CLOSED``; the sandbox
#: closes the offer at once instead of at the session's expiry.
_EVENTS = {
    "paid": ("AUTHORISATION", True, None),
    "declined": ("AUTHORISATION", False, "Refused"),
    "cancelled": ("OFFER_CLOSED", True, None),
    "expired": ("OFFER_CLOSED", True, None),
}


_psp_reference = adyen_payments.psp_reference


def notification_for(state: SandboxState, session: SandboxSession, outcome: str) -> bytes:
    """The signed NotificationRequest body Adyen sends for ``outcome`` of ``session``."""
    code, success, reason = _EVENTS[outcome]
    payment_psp = session.extra.setdefault("pspReference", _psp_reference())
    item: dict[str, Any] = {
        "amount": {"value": session.amount, "currency": session.currency},
        "eventCode": code,
        "eventDate": datetime.now(UTC).isoformat(timespec="seconds"),
        "merchantAccountCode": session.extra.get(
            "merchantAccount", state.config.secret(PROVIDER, "merchant_account")
        ),
        "merchantReference": session.order_reference or "",
        "pspReference": payment_psp if code == "AUTHORISATION" else _psp_reference(),
        "success": "true" if success else "false",
    }
    if code == "AUTHORISATION":
        item["paymentMethod"] = "visa"
    else:
        item["originalReference"] = payment_psp
    if reason:
        item["reason"] = reason
    additional = {f"metadata.{key}": value for key, value in session.metadata.items()}
    additional["checkoutSessionId"] = session.id
    request = session.raw_request or {}
    stored = request.get("storePaymentMethodMode") in ("enabled", "askForConsent")
    if code == "AUTHORISATION" and success and stored and request.get("shopperReference"):
        # the shopper agreed to store the card: the token Adyen reports for later payments
        token = session.extra.setdefault("storedPaymentMethodId", _psp_reference())
        additional["tokenization.storedPaymentMethodId"] = token
        additional["tokenization.shopperReference"] = str(request["shopperReference"])
        additional["recurringProcessingModel"] = str(request.get("recurringProcessingModel", ""))
    if code == "AUTHORISATION" and success and isinstance(session.amount, int):
        token = session.extra.get("storedPaymentMethodId")
        adyen_payments.record_session_payment(
            state, payment_psp, request, session.amount, session.currency, token
        )
    item["additionalData"] = additional
    additional["hmacSignature"] = hmac_signature(item, state.config.secret(PROVIDER, "hmac_key"))
    return orjson.dumps({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]})


async def notify(state: SandboxState, session: SandboxSession, outcome: str) -> None:
    """POST Adyen's signed standard notification for ``outcome`` to the gateway."""
    body = notification_for(state, session, outcome)
    await state.send_webhook(PROVIDER, body, {"Content-Type": "application/json"})
