"""Emulated Adyen Checkout v71 calls after the checkout: ``POST /adyen/v71/payments`` (a stored
token, shopper absent) and the modifications ``/payments/{pspReference}/captures``,
``/cancels`` and ``/refunds``, with their standard notifications.

Like Adyen: ``/payments`` answers the outcome at once (``resultCode``) and notifies
AUTHORISATION; a modification answers 201 ``status: received`` and its outcome comes only by
notification (CAPTURE, CANCELLATION, REFUND; ``success`` false when the payment cannot take it).
``Idempotency-Key`` replays the first answer (no second charge, no second notification) and
refuses the key with another body or path (422, errorCode 704). The ``declineOffSession`` fault
refuses every ContAuth payment (``resultCode: Refused``).

Payments of hosted sessions are registered here when their AUTHORISATION is sent
(:func:`record_session_payment`), so the modifications work on them too.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.domain.money import is_active_currency
from providers.adyen.transformers import IDEMPOTENCY_KEY_MAX, hmac_signature
from providers.sandbox.state import SandboxState

__all__ = ["AdyenLedger", "SandboxPayment", "ledger", "record_session_payment", "register"]

PROVIDER = "adyen"
_PSP_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def psp_reference() -> str:
    """A 16-character pspReference."""
    return "".join(secrets.choice(_PSP_ALPHABET) for _ in range(16))


@dataclass(slots=True)
class SandboxPayment:
    """One authorised payment and what its modifications did to it (minor units)."""

    psp: str
    amount: int
    currency: str
    merchant_reference: str
    manual: bool
    metadata: dict[str, str] = field(default_factory=dict)
    captured: int = 0
    refunded: int = 0
    cancelled: bool = False


@dataclass(slots=True)
class AdyenLedger:
    """Adyen's memory beyond sessions: stored tokens and authorised payments."""

    #: storedPaymentMethodId -> shopperReference it was stored under
    tokens: dict[str, str] = field(default_factory=dict)
    payments: dict[str, SandboxPayment] = field(default_factory=dict)


def ledger(state: SandboxState) -> AdyenLedger:
    """The Adyen ledger of ``state`` (created on first use)."""
    found = state.extensions.get(PROVIDER)
    if not isinstance(found, AdyenLedger):
        found = AdyenLedger()
        state.extensions[PROVIDER] = found
    return found


def record_session_payment(
    state: SandboxState,
    psp: str,
    request: Mapping[str, Any],
    amount: int,
    currency: str,
    token: str | None,
) -> None:
    """Remember the authorised payment of a hosted session (and the token it stored)."""
    book = ledger(state)
    additional = request.get("additionalData")
    manual = isinstance(additional, Mapping) and additional.get("manualCapture") == "true"
    book.payments[psp] = SandboxPayment(
        psp=psp,
        amount=amount,
        currency=currency,
        merchant_reference=str(request.get("reference", "")),
        manual=manual,
        metadata=dict(request.get("metadata") or {}),
        captured=0 if manual else amount,
    )
    if token is not None:
        book.tokens[token] = str(request.get("shopperReference", ""))


def _error(status: int, message: str, code: str) -> web.Response:
    kind = {401: "security", 403: "security", 422: "validation"}.get(status, "internal")
    body = {"status": status, "errorCode": code, "message": message, "errorType": kind}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _valid_amount(amount: Any) -> bool:
    if not isinstance(amount, dict):
        return False
    value, currency = amount.get("value"), amount.get("currency")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return False
    return isinstance(currency, str) and is_active_currency(currency)


def notification(
    state: SandboxState,
    *,
    code: str,
    success: bool,
    psp: str,
    amount: Mapping[str, Any],
    merchant_reference: str,
    original: str | None = None,
    reason: str | None = None,
    additional: Mapping[str, str] | None = None,
) -> bytes:
    """A signed NotificationRequest with one item, as Adyen sends it."""
    item: dict[str, Any] = {
        "amount": {"value": amount["value"], "currency": amount["currency"]},
        "eventCode": code,
        "eventDate": datetime.now(UTC).isoformat(timespec="seconds"),
        "merchantAccountCode": state.config.secret(PROVIDER, "merchant_account"),
        "merchantReference": merchant_reference,
        "paymentMethod": "visa",
        "pspReference": psp,
        "success": "true" if success else "false",
    }
    if original:
        item["originalReference"] = original
    if reason:
        item["reason"] = reason
    extra = dict(additional or {})
    item["additionalData"] = extra
    extra["hmacSignature"] = hmac_signature(item, state.config.secret(PROVIDER, "hmac_key"))
    return orjson.dumps({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]})


def _notify_later(state: SandboxState, body: bytes) -> None:
    async def send() -> None:
        await state.send_webhook(PROVIDER, body, {"Content-Type": "application/json"})

    state.send_later(PROVIDER, send, 0.05)


#: one handler's work once the request is authenticated, parsed and claimed: the answer's
#: (status, body) and the notifications to send after it
_Work = Callable[[dict[str, Any], web.Request], Awaitable[tuple[int, dict[str, Any], list[bytes]]]]


def _endpoint(state: SandboxState, work: _Work, required: tuple[str, ...]) -> Any:
    """Auth, JSON, required fields, merchant account and idempotency around ``work``."""

    async def handle(request: web.Request) -> web.Response:
        given = request.headers.get("X-API-Key", "")
        secret = state.config.secret(PROVIDER, "api_key")
        if not given or not secrets.compare_digest(given.encode(), secret.encode()):
            return _error(401, "HTTP Status Response - Unauthorized", "000")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "Unexpected input: malformed JSON", "702")
        if not isinstance(body, dict):
            return _error(400, "Unexpected input: body must be an object", "702")
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
            return _error(422, f"Idempotency-Key longer than {IDEMPOTENCY_KEY_MAX}", "704")
        material = orjson.dumps([request.path, body], option=orjson.OPT_SORT_KEYS)
        fingerprint = hashlib.sha256(material).hexdigest()
        if key is not None:
            record = state.idempotency_get(PROVIDER, key)
            if record is not None:
                if record.in_flight or record.fingerprint != fingerprint or record.body is None:
                    return _error(422, "request already processed or in progress", "704")
                return web.Response(
                    status=record.status or 200,
                    body=record.body,
                    content_type="application/json",
                    headers=record.headers,
                )
        for name in required:
            if body.get(name) in (None, ""):
                return _error(422, f"Required field '{name}' is not provided.", "100")
        if "amount" in body and not _valid_amount(body["amount"]):
            return _error(422, "Invalid amount specified", "137")
        if body["merchantAccount"] != state.config.secret(PROVIDER, "merchant_account"):
            return _error(403, "Invalid Merchant Account", "901")
        if key is not None:
            state.idempotency_begin(PROVIDER, key, fingerprint)

        async def run() -> web.Response:
            await state.creation_delay(PROVIDER, key)
            try:
                status, answer, notes = await work(body, request)
            except BaseException:
                if key is not None:
                    state.idempotency_abandon(PROVIDER, key)
                raise
            raw = orjson.dumps(answer)
            headers = {"Idempotency-Key": key} if key is not None else {}
            if key is not None:
                state.idempotency_finish(PROVIDER, key, status, raw, headers)
            for note in notes:
                _notify_later(state, note)
            return web.Response(
                status=status, body=raw, content_type="application/json", headers=headers
            )

        return await state.detached(run())

    return handle


def register(app: web.Application, state: SandboxState) -> None:
    """Add ``/adyen/v71/payments`` and its modifications to the sandbox app."""
    book = ledger(state)

    async def pay(
        body: dict[str, Any], request: web.Request
    ) -> tuple[int, dict[str, Any], list[bytes]]:
        method = body.get("paymentMethod")
        token = method.get("storedPaymentMethodId") if isinstance(method, dict) else None
        shopper = body.get("shopperReference")
        if not isinstance(token, str) or book.tokens.get(token) != shopper:
            return 422, _error_body(422, "Contract not found", "800"), []
        amount = body["amount"]
        reference = str(body["reference"])
        metadata = dict(body.get("metadata") or {})
        psp = psp_reference()
        additional = body.get("additionalData")
        manual = isinstance(additional, dict) and additional.get("manualCapture") == "true"
        absent = body.get("shopperInteraction") == "ContAuth"
        declined = absent and state.fault(PROVIDER).decline_off_session
        answer: dict[str, Any] = {
            "pspReference": psp,
            "merchantReference": reference,
            "amount": amount,
            "resultCode": "Refused" if declined else "Authorised",
        }
        if declined:
            answer["refusalReason"] = "Refused"
            answer["refusalReasonCode"] = "2"
        else:
            book.payments[psp] = SandboxPayment(
                psp=psp,
                amount=amount["value"],
                currency=amount["currency"],
                merchant_reference=reference,
                manual=manual,
                metadata=metadata,
                captured=0 if manual else amount["value"],
            )
        note = notification(
            state,
            code="AUTHORISATION",
            success=not declined,
            psp=psp,
            amount=amount,
            merchant_reference=reference,
            reason="Refused" if declined else None,
            additional={f"metadata.{k}": v for k, v in metadata.items()},
        )
        return 200, answer, [note]

    def _payment(request: web.Request) -> SandboxPayment | None:
        return book.payments.get(request.match_info["psp"])

    def _unknown() -> tuple[int, dict[str, Any], list[bytes]]:
        body = _error_body(422, "Original pspReference is invalid for this environment!", "167")
        return 422, body, []

    def _received(body: dict[str, Any], payment: SandboxPayment, psp: str) -> dict[str, Any]:
        answer = {
            "merchantAccount": body["merchantAccount"],
            "paymentPspReference": payment.psp,
            "pspReference": psp,
            "status": "received",
        }
        for name in ("amount", "reference"):
            if name in body:
                answer[name] = body[name]
        return answer

    async def capture(
        body: dict[str, Any], request: web.Request
    ) -> tuple[int, dict[str, Any], list[bytes]]:
        payment = _payment(request)
        if payment is None:
            return _unknown()
        amount, psp = body["amount"], psp_reference()
        reason = None
        if amount["currency"] != payment.currency:
            reason = "Currency of modification does not match the payment"
        elif payment.cancelled or not payment.manual or payment.captured:
            reason = "Payment is not in a capturable state"
        elif amount["value"] > payment.amount:
            reason = "Insufficient balance on payment"
        if reason is None:
            payment.captured = amount["value"]  # the rest of the authorization is released
        note = notification(
            state,
            code="CAPTURE",
            success=reason is None,
            psp=psp,
            amount=amount,
            merchant_reference=str(body.get("reference") or payment.merchant_reference),
            original=payment.psp,
            reason=reason,
        )
        return 201, _received(body, payment, psp), [note]

    async def cancel(
        body: dict[str, Any], request: web.Request
    ) -> tuple[int, dict[str, Any], list[bytes]]:
        payment = _payment(request)
        if payment is None:
            return _unknown()
        psp = psp_reference()
        reason = "Transaction already captured" if payment.captured else None
        if reason is None:
            payment.cancelled = True
        note = notification(
            state,
            code="CANCELLATION",
            success=reason is None,
            psp=psp,
            amount={"value": payment.amount, "currency": payment.currency},
            merchant_reference=str(body.get("reference") or payment.merchant_reference),
            original=payment.psp,
            reason=reason,
        )
        return 201, _received(body, payment, psp), [note]

    async def refund(
        body: dict[str, Any], request: web.Request
    ) -> tuple[int, dict[str, Any], list[bytes]]:
        payment = _payment(request)
        if payment is None:
            return _unknown()
        amount, psp = body["amount"], psp_reference()
        reason = None
        if amount["currency"] != payment.currency:
            reason = "Currency of modification does not match the payment"
        elif not payment.captured:
            reason = "Transaction hasn't been captured, refund not possible"
        elif amount["value"] > payment.captured - payment.refunded:
            reason = "Insufficient in-process balance on payment to refund"
        if reason is None:
            payment.refunded += amount["value"]
        note = notification(
            state,
            code="REFUND",
            success=reason is None,
            psp=psp,
            amount=amount,
            merchant_reference=str(body.get("reference") or payment.merchant_reference),
            original=payment.psp,
            reason=reason,
        )
        return 201, _received(body, payment, psp), [note]

    base = f"/{PROVIDER}/v71/payments"
    payment_fields = ("merchantAccount", "amount", "reference", "paymentMethod", "returnUrl")
    app.router.add_post(base, _endpoint(state, pay, payment_fields))
    with_amount = ("merchantAccount", "amount")
    app.router.add_post(f"{base}/{{psp}}/captures", _endpoint(state, capture, with_amount))
    app.router.add_post(f"{base}/{{psp}}/cancels", _endpoint(state, cancel, ("merchantAccount",)))
    app.router.add_post(f"{base}/{{psp}}/refunds", _endpoint(state, refund, with_amount))


def _error_body(status: int, message: str, code: str) -> dict[str, Any]:
    return {"status": status, "errorCode": code, "message": message, "errorType": "validation"}
