"""Stripe webhooks: ``Stripe-Signature`` verification and the mapping of events onto
:class:`providers.base.ProviderEvent`.

``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is HMAC-SHA256 (key: the
endpoint secret) over ``"<t>." + raw body``. Any matching ``v1`` is accepted; a timestamp more
than 300 s away from now is refused (replay protection).

Events mapped (the rest are acknowledged and move nothing)::

    checkout.session.completed              paid -> COMPLETED, unpaid -> PROCESSING,
                                            mode=setup -> COMPLETED (customer, setup_intent)
    checkout.session.async_payment_*        COMPLETED / FAILED
    checkout.session.expired                EXPIRED
    payment_intent.amount_capturable_updated  AUTHORIZED (manual capture)
    payment_intent.succeeded                COMPLETED (amount_received)
    payment_intent.canceled                 CANCELLED
    payment_intent.payment_failed           FAILED (decline code)
    charge.refunded                         one refund update per refund the charge lists
    refund.updated                          the refund's update
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from gateway.domain.session import RefundStatus, SessionStatus
from providers.base import ProviderEvent, RefundUpdate, WebhookVerificationError
from providers.stripe.transformers import from_stripe_minor
from providers.wire import from_unix

__all__ = [
    "REFUND_STATUS",
    "SIGNATURE_TOLERANCE_SECONDS",
    "decline_reason",
    "event_from_payload",
    "events_from_payload",
    "id_of",
    "sign_payload",
    "verify_signature",
]

SIGNATURE_TOLERANCE_SECONDS = 300

#: checkout.session event type -> lifecycle status (``completed`` depends on payment_status).
_SESSION_EVENT_STATUS: dict[str, SessionStatus] = {
    "checkout.session.async_payment_succeeded": SessionStatus.COMPLETED,
    "checkout.session.async_payment_failed": SessionStatus.FAILED,
    "checkout.session.expired": SessionStatus.EXPIRED,
}

#: payment_intent event type -> lifecycle status
_INTENT_EVENT_STATUS: dict[str, SessionStatus] = {
    "payment_intent.amount_capturable_updated": SessionStatus.AUTHORIZED,
    "payment_intent.succeeded": SessionStatus.COMPLETED,
    "payment_intent.canceled": SessionStatus.CANCELLED,
    "payment_intent.payment_failed": SessionStatus.FAILED,
}

#: Stripe refund status -> gateway refund status (``requires_action``: still under way)
REFUND_STATUS: dict[str, RefundStatus] = {
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "succeeded": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}


def sign_payload(secret: str, timestamp: int, raw_body: bytes) -> str:
    """The hex ``v1`` signature of ``raw_body`` sent at ``timestamp``."""
    signed = str(timestamp).encode() + b"." + raw_body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    signature_header: str,
    raw_body: bytes,
    *,
    now: float,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> int:
    """Check a ``Stripe-Signature`` header against ``raw_body``; returns its timestamp.

    Accepts when any ``v1`` matches (constant-time compare) and the timestamp is within
    ``tolerance`` seconds of ``now`` (either side); raises WebhookVerificationError otherwise.
    """
    timestamp, signatures = _parse_signature_header(signature_header)
    if abs(now - timestamp) > tolerance:
        raise WebhookVerificationError("stripe", "signature timestamp outside tolerance")
    expected = sign_payload(secret, timestamp, raw_body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookVerificationError("stripe", "no matching v1 signature")
    return timestamp


def id_of(value: Any) -> str | None:
    """An expandable field: an id string, or an expanded object's ``id``."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _session_status(event_type: str, session: Mapping[str, Any]) -> SessionStatus | None:
    if event_type == "checkout.session.completed":
        if session.get("mode") == "setup":
            # a setup session saves a method and charges nothing: complete once it completes
            return SessionStatus.COMPLETED if session.get("status") == "complete" else None
        # paid = money is there; unpaid (async methods, manual capture) stays pending: the
        # PaymentIntent's own events settle it
        paid = session.get("payment_status") == "paid"
        return SessionStatus.COMPLETED if paid else SessionStatus.PROCESSING
    return _SESSION_EVENT_STATUS.get(event_type)


def _money(value: Any, currency: Any) -> tuple[Decimal | None, str | None]:
    money = from_stripe_minor(value, currency)
    return (money[0], money[1]) if money else (None, None)


def decline_reason(error: Any) -> str | None:
    """The short reason code of a Stripe error object (``decline_code``, else ``code``)."""
    if not isinstance(error, Mapping):
        return None
    return _text(error.get("decline_code")) or _text(error.get("code"))


def _envelope(payload: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any], datetime | None]:
    event_id, event_type = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        raise WebhookVerificationError("stripe", "event lacks id or type")
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    created = payload.get("created")
    return event_id, event_type, obj if isinstance(obj, Mapping) else {}, from_unix(created)


def _session_event(
    payload: Mapping[str, Any], event_id: str, event_type: str, obj: Mapping[str, Any]
) -> ProviderEvent:
    metadata = _metadata(obj)
    intent = obj.get("payment_intent")
    payment_method = id_of(intent.get("payment_method")) if isinstance(intent, Mapping) else None
    setup_intent = obj.get("setup_intent")
    if payment_method is None and isinstance(setup_intent, Mapping):
        payment_method = id_of(setup_intent.get("payment_method"))
    extra = {
        key: str(value)
        for key, value in (
            ("payment_status", obj.get("payment_status")),
            ("payment_intent", id_of(intent)),
            ("setup_intent", id_of(setup_intent)),
            ("mode", obj.get("mode")),
            ("order_reference", metadata.get("order_reference")),
            ("saved_method", metadata.get("gateway_saved_method")),
            ("livemode", payload.get("livemode")),
        )
        if value is not None
    }
    failure = "async_payment_failed" if event_type.endswith("async_payment_failed") else None
    total = obj.get("amount_total")
    if obj.get("mode") == "setup" and total is None:
        total = 0  # a setup session charges nothing, in the currency it was opened with
    amount, currency = _money(total, obj.get("currency"))
    return ProviderEvent(
        provider="stripe",
        event_id=event_id,
        event_type=event_type,
        reference=id_of(obj.get("id")),
        session_id=_text(metadata.get("gateway_session_id")),
        status=_session_status(event_type, obj),
        failure_reason=failure,
        customer_id=id_of(obj.get("customer")),
        payment_id=id_of(intent),
        payment_method_id=payment_method,
        extra=extra,
        amount=amount,
        currency=currency,
    )


def _intent_event(
    payload: Mapping[str, Any], event_id: str, event_type: str, obj: Mapping[str, Any]
) -> ProviderEvent:
    status = _INTENT_EVENT_STATUS.get(event_type)
    if status is SessionStatus.COMPLETED:
        field_name = "amount_received"
    elif status is SessionStatus.AUTHORIZED:
        field_name = "amount_capturable"
    else:
        field_name = "amount"
    amount, currency = _money(obj.get(field_name), obj.get("currency"))
    failure = None
    if status is SessionStatus.FAILED:
        failure = decline_reason(obj.get("last_payment_error")) or "payment_failed"
    metadata = _metadata(obj)
    extra = {
        key: str(value)
        for key, value in (
            ("payment_intent_status", obj.get("status")),
            ("order_reference", metadata.get("order_reference")),
            ("livemode", payload.get("livemode")),
        )
        if value is not None
    }
    return ProviderEvent(
        provider="stripe",
        event_id=event_id,
        event_type=event_type,
        # the PaymentIntent is not the hosted session: the gateway matches by session id
        reference=None,
        session_id=_text(metadata.get("gateway_session_id")),
        status=status,
        failure_reason=failure,
        customer_id=id_of(obj.get("customer")),
        payment_method_id=id_of(obj.get("payment_method")),
        payment_id=id_of(obj.get("id")),
        extra=extra,
        amount=amount,
        currency=currency,
    )


def _refund_update(refund: Mapping[str, Any]) -> RefundUpdate | None:
    status = REFUND_STATUS.get(str(refund.get("status")))
    if status is None:
        return None
    amount, currency = _money(refund.get("amount"), refund.get("currency"))
    if amount is None and (refund.get("amount"), refund.get("currency")) != (None, None):
        # an amount that is there but cannot be read (negative, fractional, unknown currency)
        # must not pass as none: the gateway applies an update without one unchecked
        status = RefundStatus.PENDING
    failure = _text(refund.get("failure_reason")) if status is RefundStatus.FAILED else None
    if status is RefundStatus.FAILED and failure is None:
        failure = str(refund.get("status"))
    return RefundUpdate(
        status=status,
        provider_refund_id=id_of(refund.get("id")),
        refund_id=_text(_metadata(refund).get("gateway_refund_id")),
        amount=amount,
        currency=currency,
        failure_reason=failure,
    )


def _refund_event(
    event_id: str, event_type: str, refund: Mapping[str, Any], fallback_session: str | None
) -> ProviderEvent:
    update = _refund_update(refund)
    session_id = _text(_metadata(refund).get("gateway_session_id")) or fallback_session
    return ProviderEvent(
        provider="stripe",
        event_id=event_id,
        event_type=event_type,
        reference=None,
        session_id=session_id,
        status=None,
        payment_id=id_of(refund.get("payment_intent")),
        refund=update,
        amount=update.amount if update else None,
        currency=update.currency if update else None,
    )


def events_from_payload(payload: Mapping[str, Any]) -> list[ProviderEvent]:
    """Map a verified Stripe event onto gateway events.

    Most events give one; ``charge.refunded`` gives one per refund the charge lists (each with
    ``event_id`` ``"<event id>/<refund id>"``, stable over redeliveries), or a single event that
    moves nothing when the charge lists none.
    """
    event_id, event_type, obj, occurred = _envelope(payload)
    kind = obj.get("object")
    events: list[ProviderEvent]
    if kind == "charge" and event_type == "charge.refunded":
        refunds = obj.get("refunds")
        items = refunds.get("data") if isinstance(refunds, Mapping) else None
        session = _text(_metadata(obj).get("gateway_session_id"))
        events = [
            _refund_event(f"{event_id}/{id_of(item.get('id')) or index}", event_type, item, session)
            for index, item in enumerate(items or [])
            if isinstance(item, Mapping)
        ]
        if not events:
            events = [_refund_event(event_id, event_type, {}, session)]
    elif kind == "refund":
        events = [_refund_event(event_id, event_type, obj, None)]
    elif kind == "payment_intent":
        events = [_intent_event(payload, event_id, event_type, obj)]
    elif kind == "checkout.session":
        events = [_session_event(payload, event_id, event_type, obj)]
    else:
        events = [
            ProviderEvent(
                provider="stripe",
                event_id=event_id,
                event_type=event_type,
                reference=None,
                session_id=_text(_metadata(obj).get("gateway_session_id")),
                status=None,
            )
        ]
    return [_at(event, occurred) for event in events]


def _at(event: ProviderEvent, occurred: datetime | None) -> ProviderEvent:
    return event if occurred is None else replace(event, occurred_at=occurred)


def event_from_payload(payload: Mapping[str, Any]) -> ProviderEvent:
    """The first (for most events the only) gateway event of a verified Stripe event."""
    return events_from_payload(payload)[0]


#: a Unix time of at most 12 ASCII digits: int() alone takes 4,000 digits (and Unicode digits),
#: and a number that large cannot be compared with the clock
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-fA-F]{1,128}")


def _parse_signature_header(value: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures; any malformed part is a verification error."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            continue
        item = item.strip()
        if key == "t":
            if not _TIMESTAMP.fullmatch(item):
                raise WebhookVerificationError("stripe", "malformed timestamp")
            timestamp = int(item)
        elif key == "v1" and item:
            if not _HEX.fullmatch(item):
                raise WebhookVerificationError("stripe", "malformed v1 signature")
            signatures.append(item)
    if timestamp is None:
        raise WebhookVerificationError("stripe", "signature header lacks a timestamp")
    if not signatures:
        raise WebhookVerificationError("stripe", "signature header lacks a v1 signature")
    return timestamp, signatures
