"""Stripe emulation after the checkout: PaymentIntents (customer-absent charge, capture,
cancel), SetupIntents of setup sessions, Refunds, and the events they cause.

The handlers here take decoded form parameters and answer Stripe objects, raising
:class:`StripeError` (Stripe's error shape) otherwise; :mod:`providers.sandbox.stripe_api` wraps
them with authentication, idempotency and the HTTP answer. Everything a PaymentIntent or refund
event needs is kept in a :class:`StripeLedger` on the sandbox state.

Rules emulated (Stripe's, as the spec files describe them): a customer-absent charge needs a
saved PaymentMethod (of the customer named); with ``declineOffSession`` set it is declined
(402 ``card_error`` with the failed PaymentIntent); capture only from ``requires_capture`` and
at most ``amount_capturable``; cancel only before success; refunds only of a succeeded
PaymentIntent and at most what is not yet refunded. Refunds answer ``pending`` and succeed a
moment later (``refund.updated`` and ``charge.refunded`` events).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from providers.sandbox.state import SandboxSession, SandboxState
from providers.sandbox.stripe_wire import StripeError, token

__all__ = [
    "StripeLedger",
    "cancel_intent",
    "capture_intent",
    "charge_object",
    "create_intent",
    "create_refund",
    "intent_of",
    "ledger",
    "record_hosted_payment",
    "setup_intent_of",
]

PROVIDER = "stripe"
#: what a card the sandbox declines says (``declineOffSession``)
DECLINE_CODE = "generic_decline"
_MAX_MINOR = 99_999_999
_CANCELABLE = frozenset(
    {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"}
)

#: ``send(event_type, obj)``: sign ``obj`` as it is now and deliver the event after the answer,
#: in order (given by stripe_api)
EventSender = Callable[[str, dict[str, Any]], None]


@dataclass
class StripeLedger:
    """The emulated account's PaymentIntents, SetupIntents, refunds and saved methods."""

    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    setup_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: saved PaymentMethod -> the customer it is attached to
    methods: dict[str, str | None] = field(default_factory=dict)


def ledger(state: SandboxState) -> StripeLedger:
    """The Stripe ledger of ``state`` (made on first use)."""
    found = state.extensions.get(PROVIDER)
    if not isinstance(found, StripeLedger):
        found = state.extensions[PROVIDER] = StripeLedger()
    return found


def _skew(state: SandboxState) -> int:
    return state.fault(PROVIDER).charge_skew


def _intent(
    *,
    amount: int,
    currency: str,
    status: str,
    capture_method: str,
    customer: str | None,
    payment_method: str | None,
    metadata: dict[str, Any],
    taken: int,
) -> dict[str, Any]:
    """A ``payment_intent`` object; ``taken`` is what the payment holds or took."""
    return {
        "id": token("pi_"),
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": taken if status == "requires_capture" else 0,
        "amount_received": taken if status == "succeeded" else 0,
        "capture_method": capture_method,
        "confirmation_method": "automatic",
        "created": int(time.time()),
        "currency": currency,
        "customer": customer,
        "last_payment_error": None,
        "latest_charge": token("ch_") if status in ("requires_capture", "succeeded") else None,
        "livemode": False,
        "metadata": metadata,
        "payment_method": payment_method,
        "payment_method_types": ["card"],
        "status": status,
        "cancellation_reason": None,
    }


def record_hosted_payment(state: SandboxState, session: SandboxSession) -> list[str]:
    """A hosted session was paid (or saved): record its PaymentIntent or SetupIntent and the
    saved method; returns the PaymentIntent events to send after the session's own."""
    book = ledger(state)
    params = session.raw_request or {}
    saves = params.get("customer_creation") == "always"
    customer = session.extra.setdefault("customer", token("cus_")) if saves else None
    method = session.extra.setdefault("payment_method", token("pm_"))
    if saves:
        book.methods[method] = customer
    if params.get("mode") == "setup":
        setup_id = session.extra.setdefault("setup_intent", token("seti_"))
        book.setup_intents[setup_id] = {
            "id": setup_id,
            "object": "setup_intent",
            "customer": customer,
            "payment_method": method,
            "status": "succeeded",
            "usage": "off_session",
            "metadata": dict((params.get("setup_intent_data") or {}).get("metadata") or {}),
            "livemode": False,
        }
        return []
    intent_data = params.get("payment_intent_data") or {}
    manual = intent_data.get("capture_method") == "manual"
    assert isinstance(session.amount, int)
    intent = _intent(
        amount=session.amount,
        currency=session.currency,
        status="requires_capture" if manual else "succeeded",
        capture_method="manual" if manual else "automatic",
        customer=customer,
        payment_method=method,
        metadata=dict(intent_data.get("metadata") or {}),
        taken=session.amount,
    )
    intent["id"] = session.extra.setdefault("payment_intent", intent["id"])
    intent["setup_future_usage"] = intent_data.get("setup_future_usage")
    book.intents[intent["id"]] = intent
    # an automatic payment is settled by checkout.session.completed; an authorization is
    # reported by the PaymentIntent (the session stays "unpaid")
    return ["payment_intent.amount_capturable_updated"] if manual else []


def intent_of(state: SandboxState, intent_id: str) -> dict[str, Any]:
    """A PaymentIntent of the ledger; 404 ``resource_missing`` otherwise."""
    intent = ledger(state).intents.get(intent_id)
    if intent is None:
        raise StripeError(
            404,
            f"No such payment_intent: '{intent_id}'",
            code="resource_missing",
            param="intent",
        )
    return intent


def setup_intent_of(state: SandboxState, setup_id: str) -> dict[str, Any]:
    """A SetupIntent of the ledger; 404 ``resource_missing`` otherwise."""
    found = ledger(state).setup_intents.get(setup_id)
    if found is None:
        raise StripeError(
            404,
            f"No such setupintent: '{setup_id}'",
            code="resource_missing",
            param="intent",
        )
    return found


def _int(params: dict[str, Any], name: str, *, low: int = 1) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d+", value) or int(value) < low:
        raise StripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
        )
    if int(value) > _MAX_MINOR:
        raise StripeError(
            400, "Amount must be no more than 99999999", code="amount_too_large", param=name
        )
    return int(value)


def _missing(name: str) -> StripeError:
    return StripeError(
        400, f"Missing required param: {name}.", code="parameter_missing", param=name
    )


def _unexpected_state(intent: dict[str, Any], action: str) -> StripeError:
    return StripeError(
        400,
        f"This PaymentIntent could not be {action} because it has a status of {intent['status']}.",
        code="payment_intent_unexpected_state",
    )


def create_intent(state: SandboxState, params: dict[str, Any], send: EventSender) -> dict[str, Any]:
    """``POST /v1/payment_intents`` with ``confirm=true, off_session=true``."""
    amount = _int(params, "amount")
    if amount is None:
        raise _missing("amount")
    currency = params.get("currency")
    if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
        raise StripeError(400, f"Invalid currency: {currency}.", param="currency")
    if params.get("confirm") != "true" or params.get("off_session") not in ("true", "recurring"):
        raise StripeError(400, "The sandbox emulates confirm=true, off_session=true only.")
    method = params.get("payment_method")
    if not isinstance(method, str) or not method:
        raise _missing("payment_method")
    book = ledger(state)
    if method not in book.methods:
        raise StripeError(
            400,
            f"No such PaymentMethod: '{method}'",
            code="resource_missing",
            param="payment_method",
        )
    owner, customer = book.methods[method], params.get("customer")
    if owner is not None and customer != owner:
        raise StripeError(
            400,
            "The provided PaymentMethod was previously attached to a different Customer.",
            param="payment_method",
        )
    manual = params.get("capture_method") == "manual"
    metadata = dict(params.get("metadata") or {})
    declined = state.fault(PROVIDER).decline_off_session
    intent = _intent(
        amount=amount,
        currency=currency,
        status="requires_payment_method"
        if declined
        else ("requires_capture" if manual else "succeeded"),
        capture_method="manual" if manual else "automatic",
        customer=customer if isinstance(customer, str) else None,
        payment_method=None if declined else method,
        metadata=metadata,
        taken=amount + _skew(state),
    )
    book.intents[intent["id"]] = intent
    if declined:
        charge = token("ch_")
        error = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": DECLINE_CODE,
            "message": "Your card was declined.",
            "charge": charge,
        }
        intent["last_payment_error"] = dict(error)
        send("payment_intent.payment_failed", intent)
        raise StripeError(
            402,
            "Your card was declined.",
            type_="card_error",
            code="card_declined",
            extra={"decline_code": DECLINE_CODE, "charge": charge, "payment_intent": intent},
        )
    send(
        "payment_intent.amount_capturable_updated" if manual else "payment_intent.succeeded",
        intent,
    )
    return intent


def capture_intent(
    state: SandboxState, intent_id: str, params: dict[str, Any], send: EventSender
) -> dict[str, Any]:
    """``POST /v1/payment_intents/{id}/capture``; partial with ``amount_to_capture``."""
    intent = intent_of(state, intent_id)
    if intent["status"] != "requires_capture":
        raise _unexpected_state(intent, "captured")
    capturable = int(intent["amount_capturable"])
    wanted = _int(params, "amount_to_capture")
    amount = capturable if wanted is None else wanted
    if amount > capturable:
        raise StripeError(
            400,
            f"The amount_to_capture ({amount}) is greater than the amount capturable "
            f"({capturable}).",
            code="amount_too_large",
            param="amount_to_capture",
        )
    intent.update(status="succeeded", amount_capturable=0, amount_received=amount)
    send("payment_intent.succeeded", intent)
    return intent


def cancel_intent(
    state: SandboxState, intent_id: str, params: dict[str, Any], send: EventSender
) -> dict[str, Any]:
    """``POST /v1/payment_intents/{id}/cancel``: releases an authorization."""
    intent = intent_of(state, intent_id)
    if intent["status"] not in _CANCELABLE:
        raise _unexpected_state(intent, "canceled")
    reason = params.get("cancellation_reason")
    intent.update(status="canceled", amount_capturable=0, cancellation_reason=reason)
    send("payment_intent.canceled", intent)
    return intent


def charge_object(intent: dict[str, Any], refunds: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``charge`` of a succeeded PaymentIntent, listing its refunds."""
    refunded = sum(int(r["amount"]) for r in refunds if r["status"] != "failed")
    return {
        "id": intent["latest_charge"],
        "object": "charge",
        "amount": intent["amount"],
        "amount_captured": intent["amount_received"],
        "amount_refunded": refunded,
        "captured": True,
        "currency": intent["currency"],
        "livemode": False,
        "metadata": dict(intent["metadata"]),
        "payment_intent": intent["id"],
        "refunded": refunded >= int(intent["amount_received"]),
        "status": "succeeded",
        "refunds": {
            "object": "list",
            "data": refunds,
            "has_more": False,
            "url": f"/v1/charges/{intent['latest_charge']}/refunds",
        },
    }


def create_refund(
    state: SandboxState, params: dict[str, Any], send_later: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """``POST /v1/refunds`` of a PaymentIntent: ``pending`` now, ``succeeded`` by webhook."""
    intent_id = params.get("payment_intent")
    if not isinstance(intent_id, str) or not intent_id:
        raise _missing("payment_intent")
    intent = intent_of(state, intent_id)
    if intent["status"] != "succeeded":
        raise StripeError(
            400,
            f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
            code="charge_not_refundable",
        )
    received = int(intent["amount_received"])
    refunded = sum(
        int(r["amount"]) for r in refunds_of(state, intent_id) if r["status"] != "failed"
    )
    if refunded >= received:
        raise StripeError(
            400,
            f"Charge {intent['latest_charge']} has already been refunded.",
            code="charge_already_refunded",
        )
    wanted = _int(params, "amount")
    amount = received - refunded if wanted is None else wanted
    if amount > received - refunded:
        raise StripeError(
            400,
            f"Refund amount ({amount}) is greater than unrefunded amount on charge "
            f"({received - refunded})",
            param="amount",
        )
    refund = {
        "id": token("re_"),
        "object": "refund",
        "amount": amount,
        "charge": intent["latest_charge"],
        "created": int(time.time()),
        "currency": intent["currency"],
        "metadata": dict(params.get("metadata") or {}),
        "payment_intent": intent_id,
        "reason": params.get("reason"),
        "status": "pending",
    }
    ledger(state).refunds[refund["id"]] = refund
    send_later(refund)
    return dict(refund)


def refunds_of(state: SandboxState, intent_id: str) -> list[dict[str, Any]]:
    """Every refund of a PaymentIntent, oldest first."""
    return [dict(r) for r in ledger(state).refunds.values() if r["payment_intent"] == intent_id]
