"""Adyen Checkout v71 calls after the checkout: request bodies and answer parsing.

- ``POST /payments`` charges a stored method with the customer absent (``shopperInteraction``
  ContAuth, ``recurringProcessingModel`` Subscription, the token as
  ``paymentMethod.storedPaymentMethodId``); it answers at once with a ``resultCode``.
- ``POST /payments/{pspReference}/captures``, ``/cancels`` and ``/refunds`` are modifications:
  Adyen answers 201 ``status: received`` and reports the outcome by notification (CAPTURE,
  CAPTURE_FAILED, CANCELLATION, REFUND, REFUND_FAILED: :mod:`providers.adyen.webhooks`).

Pure functions only: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.domain.session import RefundStatus, SessionStatus
from providers.adyen.transformers import (
    RECURRING_MODEL,
    from_adyen_minor,
    gateway_metadata,
    line_items,
    to_adyen_minor,
)
from providers.answers import vouched
from providers.base import PaymentOutcome, RefundOutcome

if TYPE_CHECKING:
    from providers.base import ChargeInput, PaymentReference, RefundInput

__all__ = [
    "NO_REDIRECT_URL",
    "REFERENCE_MAX",
    "STORED_METHOD_TYPES",
    "answered_amount",
    "cancel_body",
    "capture_body",
    "charge_body",
    "charge_outcome",
    "modification_outcome",
    "refund_body",
    "refund_outcome",
    "refund_reference",
]

PROVIDER = "adyen"

#: ``returnUrl`` is required by ``/payments`` even when no shopper is there to return: Adyen only
#: redirects when the payment needs the shopper (3-D Secure), which a customer-absent charge
#: treats as a decline. The reserved ``.invalid`` domain can never reach anyone.
NO_REDIRECT_URL = "https://customer-absent.invalid/adyen"

#: ``reference`` of payments and modifications: at most 80 characters
REFERENCE_MAX = 80

#: gateway payment method -> ``paymentMethod.type`` of a stored-token payment. Wallet tokens
#: are card tokens at Adyen; the spec's SEPA variant requires the IBAN and owner again, iDEAL
#: and Klarna have no customer-absent charge: those are not offered for next_in_series.
STORED_METHOD_TYPES: dict[str, str] = {
    "card": "scheme",
    "apple_pay": "scheme",
    "google_pay": "scheme",
}

#: resultCodes of ``/payments`` that need the shopper (who is absent): a decline
_NEEDS_SHOPPER = frozenset(
    {"RedirectShopper", "ChallengeShopper", "IdentifyShopper", "PresentToShopper"}
)
#: resultCodes that end the payment unpaid
_FAILED = frozenset({"Refused", "Error"})


def _amount(value: Decimal, currency: str) -> dict[str, Any]:
    return {"value": to_adyen_minor(value, currency), "currency": currency}


def charge_body(data: ChargeInput, merchant_account: str) -> dict[str, Any]:
    """The ``POST /payments`` body of a customer-absent charge of ``data``'s stored method.

    ``reference`` is the gateway session id (``merchantReference`` of its notifications), and
    the metadata carries it too, with ``captureMethod`` for a manual capture.
    """
    request = data.request
    body: dict[str, Any] = {
        "merchantAccount": merchant_account,
        "amount": _amount(request.amount.total, request.currency),
        "reference": data.session_id,
        "merchantOrderReference": request.orderReference,
        "paymentMethod": {
            "type": STORED_METHOD_TYPES[request.paymentMethod],
            "storedPaymentMethodId": data.payment_method_id,
        },
        "shopperInteraction": "ContAuth",
        "recurringProcessingModel": RECURRING_MODEL,
        "returnUrl": NO_REDIRECT_URL,
        "metadata": gateway_metadata(data.session_id, data.merchant_id, request),
    }
    if data.customer_id:
        body["shopperReference"] = data.customer_id
    lines = line_items(request)
    if lines:
        body["lineItems"] = lines
    if request.captureMethod == "manual":
        body["additionalData"] = {"manualCapture": "true"}
    return body


def _text(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def answered_amount(answered: Any) -> tuple[Decimal, str] | None:
    """An Adyen ``{"value", "currency"}`` as the exact amount and currency; None when it is not
    an integer of minor units at or above zero in a currency with a known exponent."""
    if not isinstance(answered, Mapping):
        return None
    value, unit = answered.get("value"), answered.get("currency")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    if not isinstance(unit, str):
        return None
    try:
        return from_adyen_minor(value, unit), unit
    except ValueError:  # a currency without a known exponent
        return None


def charge_outcome(
    payload: Mapping[str, Any], *, manual: bool, currency: str, amount: Decimal | None = None
) -> PaymentOutcome:
    """The ``/payments`` answer as an outcome.

    Authorised -> COMPLETED (AUTHORIZED with manual capture); Refused/Error -> FAILED with
    ``refusalReason``; a resultCode that needs the shopper -> FAILED (the shopper is absent);
    Cancelled -> CANCELLED; anything else (Pending, Received, ...) -> PROCESSING: the
    AUTHORISATION notification decides. An answer whose ``amount`` cannot be read (or is not
    ``amount``, when given) is PROCESSING too (:func:`providers.answers.vouched`); another
    currency is reported as it is, for the gateway to reconcile.
    """
    code = _text(payload, "resultCode") or ""
    psp = _text(payload, "pspReference")
    money = answered_amount(payload.get("amount"))
    unreadable = payload.get("amount") is not None and money is None
    failure: str | None = None
    if code == "Authorised":
        status = SessionStatus.AUTHORIZED if manual else SessionStatus.COMPLETED
    elif code in _FAILED:
        status = SessionStatus.FAILED
        failure = _text(payload, "refusalReason") or code
    elif code in _NEEDS_SHOPPER:
        status, failure = SessionStatus.FAILED, "authentication_required"
    elif code == "Cancelled":
        status = SessionStatus.CANCELLED
    else:
        status = SessionStatus.PROCESSING
    outcome = PaymentOutcome(
        provider=PROVIDER,
        status=status,
        payment_id=psp,
        amount=money[0] if money else None,
        currency=money[1] if money else currency,
        failure_reason=failure,
        raw_status=code or None,
    )
    return vouched(outcome, amount=amount, unreadable=unreadable)


def _reference(payment: PaymentReference) -> dict[str, str]:
    """The gateway session id as the modification's ``reference`` (its notification's
    ``merchantReference``), when the gateway gave it and it fits."""
    session_id = payment.session_id
    if session_id and len(session_id) <= REFERENCE_MAX:
        return {"reference": session_id}
    return {}


def capture_body(
    payment: PaymentReference, amount: Decimal, merchant_account: str
) -> dict[str, Any]:
    """``POST /payments/{psp}/captures``: ``amount`` (less than authorized: a partial capture)."""
    return {
        "merchantAccount": merchant_account,
        "amount": _amount(amount, payment.currency),
        **_reference(payment),
    }


def cancel_body(payment: PaymentReference, merchant_account: str) -> dict[str, Any]:
    """``POST /payments/{psp}/cancels``."""
    return {"merchantAccount": merchant_account, **_reference(payment)}


def refund_reference(session_id: str, refund_id: str) -> str:
    """The refund's ``reference``: ``<session id>:<refund id>``, so its notification names
    both; the bare refund id when both do not fit in 80 characters."""
    both = f"{session_id}:{refund_id}"
    return both if len(both) <= REFERENCE_MAX else refund_id


#: the gateway's refund reasons -> Adyen's ``merchantRefundReason``
_REFUND_REASONS = {
    "requested_by_customer": "CUSTOMER REQUEST",
    "duplicate": "DUPLICATE",
    "fraudulent": "FRAUD",
}


def refund_body(data: RefundInput, merchant_account: str) -> dict[str, Any]:
    """``POST /payments/{psp}/refunds`` of ``data.amount``, of the capture when it has its own
    pspReference."""
    body: dict[str, Any] = {
        "merchantAccount": merchant_account,
        "amount": _amount(data.amount, data.currency),
        "reference": refund_reference(data.session_id, data.refund_id),
    }
    capture = data.payment.capture_id
    if capture and capture != data.payment.payment_id:
        body["capturePspReference"] = capture
    if data.reason:
        body["merchantRefundReason"] = _REFUND_REASONS.get(data.reason, "OTHER")
    return body


def modification_outcome(
    payload: Mapping[str, Any], payment: PaymentReference, amount: Decimal | None
) -> PaymentOutcome:
    """A capture or cancel answer (``status: received``): PROCESSING; the CAPTURE or
    CANCELLATION notification completes it. ``capture_id`` is the capture's pspReference."""
    psp = _text(payload, "pspReference")
    return PaymentOutcome(
        provider=PROVIDER,
        status=SessionStatus.PROCESSING,
        payment_id=payment.payment_id,
        capture_id=psp if amount is not None else None,
        amount=amount,
        currency=payment.currency,
        raw_status=_text(payload, "status"),
    )


def refund_outcome(payload: Mapping[str, Any]) -> RefundOutcome:
    """A refund answer (``status: received``): PENDING until the REFUND notification."""
    return RefundOutcome(
        provider=PROVIDER,
        status=RefundStatus.PENDING,
        provider_refund_id=_text(payload, "pspReference"),
        raw_status=_text(payload, "status"),
    )
