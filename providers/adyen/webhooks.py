"""Adyen standard notifications: the per-item HMAC check and the mapping of each
NotificationRequestItem onto the gateway lifecycle.

Which session an item belongs to:

- payment items (AUTHORISATION, OFFER_CLOSED, ...) carry the payment's ``metadata.*``, where the
  adapter put ``gatewaySessionId`` (and ``captureMethod`` for manual capture);
- modification items (CAPTURE, CAPTURE_FAILED, CANCELLATION, REFUND, REFUND_FAILED) carry no
  metadata; their ``merchantReference`` is the ``reference`` the adapter sent with the
  modification: the gateway session id for captures and cancels, ``<session id>:<refund id>``
  for refunds (:func:`providers.adyen.payments.refund_reference`).
"""

from __future__ import annotations

import binascii
import contextlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from gateway.domain.session import RefundStatus, SessionStatus
from providers.adyen.transformers import (
    CAPTURE_METHOD_KEY,
    SESSION_ID_KEY,
    from_adyen_minor,
    verify_hmac,
)
from providers.base import ProviderEvent, RefundUpdate, WebhookVerificationError
from providers.wire import parse_datetime

__all__ = ["MODIFICATION_CODES", "event_from_item", "parse_notification", "split_refund_reference"]

#: (eventCode, success) -> lifecycle status; anything not listed does not move the session.
#: AUTHORISATION success is COMPLETED, or AUTHORIZED for a manual-capture payment.
_STATUS: dict[tuple[str, bool], SessionStatus] = {
    ("AUTHORISATION", True): SessionStatus.COMPLETED,
    ("AUTHORISATION", False): SessionStatus.FAILED,
    ("CAPTURE", True): SessionStatus.COMPLETED,
    ("CANCELLATION", True): SessionStatus.CANCELLED,
    ("TECHNICAL_CANCEL", True): SessionStatus.CANCELLED,
    ("OFFER_CLOSED", True): SessionStatus.EXPIRED,
}

#: the answers to the adapter's own modification calls: no metadata, merchantReference is ours
MODIFICATION_CODES = frozenset(
    {"CAPTURE", "CAPTURE_FAILED", "CANCELLATION", "REFUND", "REFUND_FAILED"}
)
_REFUND_CODES = frozenset({"REFUND", "REFUND_FAILED"})
#: refund reference separator: never part of a gateway session id (UUID) or refund id
_REFUND_SEPARATOR = ":"


def _text(additional: Mapping[str, Any], *keys: str) -> str | None:
    """The first non-empty string among ``additionalData[key]``."""
    for key in keys:
        value = additional.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _metadata(additional: Mapping[str, Any], key: str) -> str | None:
    """A payment metadata value as notifications carry it: ``metadata.<key>`` (or nested)."""
    value = additional.get(f"metadata.{key}")
    if value is None:
        nested = additional.get("metadata")
        value = nested.get(key) if isinstance(nested, Mapping) else None
    return value if isinstance(value, str) and value else None


def split_refund_reference(reference: str) -> tuple[str | None, str]:
    """``(session id, refund id)`` from a refund's merchant reference; a reference without
    the separator is a bare refund id."""
    session_id, separator, refund_id = reference.partition(_REFUND_SEPARATOR)
    if not separator:
        return None, reference
    return session_id or None, refund_id


def _amount(item: Mapping[str, Any], extra: dict[str, str]) -> tuple[Decimal | None, str | None]:
    amount = item.get("amount")
    if not isinstance(amount, Mapping):
        return None, None
    unit, value = amount.get("currency"), amount.get("value")
    if not isinstance(unit, str) or not isinstance(value, int) or isinstance(value, bool):
        return None, None
    if value < 0:  # no notification of a payment or refund has one: a lie, not an amount
        return None, None
    money: Decimal | None = None
    with contextlib.suppress(ValueError):  # unknown currency: keep the event, drop the amount
        money = from_adyen_minor(value, unit)
        extra["amount"] = str(money)
    extra["currency"] = unit
    return money, unit


def _refund_update(
    code: str, success: bool, item: Mapping[str, Any], amount: Decimal | None, unit: str | None
) -> RefundUpdate:
    """REFUND success=true -> SUCCEEDED; REFUND success=false and REFUND_FAILED (whose
    ``success`` only says the failure was recorded) -> FAILED; PENDING (moves nothing) when the
    item's amount is there but cannot be read."""
    reference = item.get("merchantReference")
    _, refund_id = split_refund_reference(reference) if isinstance(reference, str) else (None, "")
    failed = code == "REFUND_FAILED" or not success
    psp = item.get("pspReference")
    status = RefundStatus.FAILED if failed else RefundStatus.SUCCEEDED
    if amount is None and item.get("amount") is not None:
        # there but unreadable: not "no amount", which the gateway applies unchecked
        status, failed = RefundStatus.PENDING, False
    return RefundUpdate(
        status=status,
        provider_refund_id=psp if isinstance(psp, str) and psp else None,
        refund_id=refund_id or None,
        amount=amount,
        currency=unit,
        failure_reason=str(item.get("reason") or "refund failed") if failed else None,
    )


def _session_id(code: str, additional: Mapping[str, Any], item: Mapping[str, Any]) -> str | None:
    found = _metadata(additional, SESSION_ID_KEY)
    if found is not None or code not in MODIFICATION_CODES:
        return found
    reference = item.get("merchantReference")
    if not isinstance(reference, str) or not reference:
        return None
    if code in _REFUND_CODES:
        return split_refund_reference(reference)[0]
    return reference


def event_from_item(item: Mapping[str, Any]) -> ProviderEvent:
    """Map one (already verified) NotificationRequestItem onto the gateway lifecycle.

    AUTHORISATION success -> COMPLETED (AUTHORIZED when the payment's metadata says manual
    capture), failure -> FAILED; CAPTURE success -> COMPLETED with the captured amount;
    CANCELLATION/TECHNICAL_CANCEL -> CANCELLED; OFFER_CLOSED -> EXPIRED. CAPTURE_FAILED and a
    refused CAPTURE leave the status alone (the authorization still stands) with
    ``failure_reason`` and ``extra["captureFailed"]``; REFUND / REFUND_FAILED carry a
    :class:`RefundUpdate` and no status. Every other code leaves the status alone.
    """
    code = str(item.get("eventCode", ""))
    success = str(item.get("success", "")).lower() == "true"
    psp = str(item.get("pspReference", ""))
    raw_additional = item.get("additionalData")
    additional: Mapping[str, Any] = raw_additional if isinstance(raw_additional, Mapping) else {}
    extra: dict[str, str] = {"success": "true" if success else "false"}
    money, currency = _amount(item, extra)
    for name in ("merchantReference", "paymentMethod", "originalReference"):
        if isinstance(item.get(name), str) and item[name]:
            extra[name] = item[name]
    status = _STATUS.get((code, success))
    manual = _metadata(additional, CAPTURE_METHOD_KEY) == "manual"
    if status is SessionStatus.COMPLETED and code == "AUTHORISATION" and manual:
        status = SessionStatus.AUTHORIZED
    original = item.get("originalReference")
    payment_id: str | None = None
    capture_id: str | None = None
    if code == "AUTHORISATION" and psp:
        payment_id = psp
    elif code in MODIFICATION_CODES and isinstance(original, str) and original:
        payment_id = original
    if code in ("CAPTURE", "CAPTURE_FAILED") and psp:
        capture_id = psp
    failure_reason: str | None = None
    if code == "CAPTURE_FAILED" or (code == "CAPTURE" and not success):
        failure_reason = str(item.get("reason") or "capture failed")
        extra["captureFailed"] = "true"
    elif not success:
        failure_reason = str(item.get("reason") or "refused")
    refund = _refund_update(code, success, item, money, currency) if code in _REFUND_CODES else None
    if refund is not None:
        failure_reason = refund.failure_reason
    reference = additional.get("checkoutSessionId")
    return ProviderEvent(
        provider="adyen",
        event_id=f"{psp}:{code}",
        event_type=code,
        reference=reference if isinstance(reference, str) and reference else None,
        session_id=_session_id(code, additional, item),
        status=status,
        occurred_at=parse_datetime(item.get("eventDate")),
        failure_reason=failure_reason,
        payment_id=payment_id,
        capture_id=capture_id,
        customer_id=_text(
            additional,
            "tokenization.shopperReference",
            "recurring.shopperReference",
            "shopperReference",
        ),
        payment_method_id=_text(
            additional, "tokenization.storedPaymentMethodId", "recurring.recurringDetailReference"
        ),
        extra=extra,
        amount=money,
        currency=currency,
        refund=refund,
    )


def parse_notification(raw_body: bytes, hex_key: str | None) -> list[ProviderEvent]:
    """Verify every item's HMAC signature and map the items to events.

    One bad item rejects the whole call (Adyen then retries it), so a forged item can never
    ride along with genuine ones.
    """
    if not hex_key:
        raise WebhookVerificationError("adyen", "no HMAC key configured")
    try:
        binascii.a2b_hex(hex_key)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("adyen", "configured HMAC key is not hex") from None
    try:
        payload = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        raise WebhookVerificationError("adyen", "body is not JSON") from None
    wrappers = payload.get("notificationItems") if isinstance(payload, dict) else None
    if not isinstance(wrappers, list) or not wrappers:
        raise WebhookVerificationError("adyen", "no notificationItems")
    events: list[ProviderEvent] = []
    for index, wrapper in enumerate(wrappers):
        item = wrapper.get("NotificationRequestItem") if isinstance(wrapper, dict) else None
        if not isinstance(item, dict):
            raise WebhookVerificationError("adyen", f"item {index} is malformed")
        if not verify_hmac(item, hex_key):
            raise WebhookVerificationError("adyen", f"item {index}: HMAC signature invalid")
        events.append(event_from_item(item))
    return events
