"""Stripe wire format of the calls after the checkout: PaymentIntents (customer-absent charge,
capture, cancel) and Refunds; request parameters and the reading of Stripe's answers.

Pure (no I/O). Amounts are integer minor units in Stripe's own exponent table
(:func:`providers.stripe.transformers.to_stripe_minor`). A card decline of a customer-absent
charge is Stripe's ``402`` with ``error.type`` ``card_error`` and the failed PaymentIntent in
``error.payment_intent``: :func:`decline_outcome` makes it a ``FAILED`` outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from gateway.domain.session import RefundStatus, SessionStatus
from providers.base import ChargeInput, PaymentOutcome, RefundInput, RefundOutcome
from providers.stripe.transformers import STRIPE_PAYMENT_METHODS, from_stripe_minor, to_stripe_minor
from providers.stripe.webhooks import REFUND_STATUS, decline_reason, id_of

__all__ = [
    "INTENT_STATUS",
    "REFUND_REASONS",
    "capture_params",
    "charge_params",
    "decline_outcome",
    "intent_outcome",
    "refund_outcome",
    "refund_params",
]

PROVIDER = "stripe"

#: PaymentIntent status -> gateway status. ``requires_payment_method`` after a confirm is a
#: decline; ``requires_action`` cannot be met with the customer absent; anything else not
#: listed is undecided (PROCESSING), never success.
INTENT_STATUS: dict[str, SessionStatus] = {
    "requires_capture": SessionStatus.AUTHORIZED,
    "succeeded": SessionStatus.COMPLETED,
    "processing": SessionStatus.PROCESSING,
    "canceled": SessionStatus.CANCELLED,
    "requires_payment_method": SessionStatus.FAILED,
    "requires_action": SessionStatus.FAILED,
}

#: the refund ``reason`` values Stripe takes; any other gateway reason goes into metadata only
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})


def charge_params(data: ChargeInput) -> dict[str, Any]:
    """``POST /v1/payment_intents``: confirm the saved method now, customer absent."""
    request = data.request
    metadata = {
        "gateway_session_id": data.session_id,
        "order_reference": request.orderReference,
        "merchant_id": data.merchant_id,
    }
    params: dict[str, Any] = {
        "amount": to_stripe_minor(request.amount.total, request.currency),
        "currency": request.currency.lower(),
        "confirm": True,
        "off_session": True,
        "payment_method": data.payment_method_id,
        "payment_method_types": [STRIPE_PAYMENT_METHODS[request.paymentMethod]],
        "capture_method": "manual" if request.captureMethod == "manual" else "automatic",
        "metadata": metadata,
    }
    if data.customer_id:
        params["customer"] = data.customer_id
    return params


def capture_params(amount: Decimal, currency: str) -> dict[str, Any]:
    """``POST /v1/payment_intents/{id}/capture`` for ``amount`` (partial when less)."""
    return {"amount_to_capture": to_stripe_minor(amount, currency)}


def refund_params(data: RefundInput) -> dict[str, Any]:
    """``POST /v1/refunds`` of the PaymentIntent, naming the gateway's refund and session."""
    payment = data.payment.payment_id or data.payment.session_reference
    metadata = {"gateway_refund_id": data.refund_id, "gateway_session_id": data.session_id}
    params: dict[str, Any] = {
        "payment_intent": payment,
        "amount": to_stripe_minor(data.amount, data.currency),
        "metadata": metadata,
    }
    if data.reason in REFUND_REASONS:
        params["reason"] = data.reason
    elif data.reason:
        metadata["gateway_reason"] = data.reason[:500]
    return params


def _money(value: Any, currency: Any) -> tuple[Decimal | None, str | None]:
    money = from_stripe_minor(value, currency)
    return (money[0], money[1]) if money else (None, None)


def intent_outcome(intent: Mapping[str, Any]) -> PaymentOutcome:
    """A PaymentIntent answer as a :class:`PaymentOutcome`.

    ``amount`` is what the status means: received (COMPLETED), capturable (AUTHORIZED), else
    the PaymentIntent's amount.
    """
    raw = intent.get("status")
    status = INTENT_STATUS.get(raw, SessionStatus.PROCESSING) if isinstance(raw, str) else None
    if status is None:
        status = SessionStatus.PROCESSING
    if status is SessionStatus.COMPLETED:
        field_name = "amount_received"
    elif status is SessionStatus.AUTHORIZED:
        field_name = "amount_capturable"
    else:
        field_name = "amount"
    amount, currency = _money(intent.get(field_name), intent.get("currency"))
    failure = None
    if status is SessionStatus.FAILED:
        failure = decline_reason(intent.get("last_payment_error")) or (
            "authentication_required" if raw == "requires_action" else "payment_failed"
        )
    return PaymentOutcome(
        provider=PROVIDER,
        status=status,
        payment_id=id_of(intent.get("id")),
        amount=amount,
        currency=currency,
        failure_reason=failure,
        raw_status=raw if isinstance(raw, str) else None,
    )


def decline_outcome(error: Mapping[str, Any]) -> PaymentOutcome | None:
    """A ``402`` ``card_error`` body's ``error`` as a FAILED outcome (PROCESSING when its
    PaymentIntent says the money was taken or held); None if it is not one."""
    if error.get("type") != "card_error":
        return None
    intent = error.get("payment_intent")
    intent = intent if isinstance(intent, Mapping) else {}
    amount, currency = _money(intent.get("amount"), intent.get("currency"))
    raw = intent.get("status")
    # a decline whose PaymentIntent says it took (or holds, or is taking) the money contradicts
    # itself: undecided, never FAILED
    took = INTENT_STATUS.get(raw) if isinstance(raw, str) else None
    contradicted = took in (
        SessionStatus.COMPLETED,
        SessionStatus.AUTHORIZED,
        SessionStatus.PROCESSING,
    )
    return PaymentOutcome(
        provider=PROVIDER,
        status=SessionStatus.PROCESSING if contradicted else SessionStatus.FAILED,
        payment_id=id_of(intent.get("id")),
        amount=amount,
        currency=currency,
        failure_reason=None if contradicted else decline_reason(error) or "card_declined",
        raw_status=raw if isinstance(raw, str) else None,
    )


def refund_outcome(refund: Mapping[str, Any]) -> RefundOutcome:
    """A Refund answer as a :class:`RefundOutcome` (an unknown status is PENDING)."""
    raw = refund.get("status")
    status = REFUND_STATUS.get(raw, RefundStatus.PENDING) if isinstance(raw, str) else None
    if status is None:
        status = RefundStatus.PENDING
    failure = None
    if status is RefundStatus.FAILED:
        reason = refund.get("failure_reason")
        failure = reason if isinstance(reason, str) and reason else str(raw)
    return RefundOutcome(
        provider=PROVIDER,
        status=status,
        provider_refund_id=id_of(refund.get("id")),
        failure_reason=failure,
        raw_status=raw if isinstance(raw, str) else None,
    )
