"""PayPal's calls after the payer's approval: request bodies and answer parsing, pure of HTTP.

* Completing an approval (:class:`providers.base.ApprovalCompleter`): the order's capture or
  authorization (``POST /v2/checkout/orders/{id}/capture`` | ``/authorize``:
  :func:`completion_event`, :func:`declined_event`) and, for a setup session, the payment token
  made from the approved setup token (``POST /v3/vault/payment-tokens``:
  :func:`payment_token_request`, :func:`vault_event`).
* Charging a saved wallet with the payer absent: an order paid by its ``vault_id``
  (``POST /v2/checkout/orders``: :func:`vault_order_request`, :func:`charge_outcome`), which
  PayPal captures or authorizes at once.
* Capturing and voiding an authorization (``POST /v2/payments/authorizations/{id}/capture`` |
  ``/void``: :func:`capture_request`, :func:`capture_outcome`, :func:`void_outcome`) and
  refunding a capture (``POST /v2/payments/captures/{id}/refund``: :func:`refund_request`,
  :func:`refund_outcome`).

Every status maps through the tables of :mod:`providers.paypal.transformers`; the 422 issues
that mean a decline (an outcome, not an error) are the tables here.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gateway.domain.session import RefundStatus, SessionStatus
from providers.answers import vouched, vouched_refund
from providers.base import AUTHORIZE, CAPTURE, PaymentOutcome, ProviderEvent, RefundOutcome
from providers.paypal.transformers import (
    custom_id_of,
    first_payment,
    payment_status,
    paypal_money,
    paypal_value,
    purchase_unit,
    refund_status,
    text,
    vault_of,
)
from providers.wire import parse_datetime

if TYPE_CHECKING:
    from providers.base import ChargeInput, RefundInput

__all__ = [
    "CAPTURE_DECLINES",
    "REFUND_DECLINES",
    "VOID_DONE",
    "capture_outcome",
    "capture_refused",
    "capture_request",
    "charge_intent",
    "charge_outcome",
    "completion_event",
    "declined_event",
    "payment_token_request",
    "refund_outcome",
    "refund_refused",
    "refund_request",
    "vault_event",
    "vault_order_request",
    "void_outcome",
]

PROVIDER = "paypal"

#: 422 issues of an authorization capture that end the payment, with the status they leave:
#: the payer's money cannot be had (FAILED: the authorization stays, the merchant may retry
#: or void), or the authorization is gone (CANCELLED)
CAPTURE_DECLINES: Mapping[str, SessionStatus] = MappingProxyType(
    {
        "PAYER_CANNOT_PAY": SessionStatus.FAILED,
        "TRANSACTION_REFUSED": SessionStatus.FAILED,
        "AUTHORIZATION_DENIED": SessionStatus.FAILED,
        "PAYER_ACCOUNT_LOCKED_OR_CLOSED": SessionStatus.FAILED,
        "AUTHORIZATION_EXPIRED": SessionStatus.CANCELLED,
        "AUTHORIZATION_VOIDED": SessionStatus.CANCELLED,
    }
)
#: 422 issues of a void that say the authorization is voided already (the call is naturally
#: idempotent: PayPal's void takes no PayPal-Request-Id, a repeat answers this)
VOID_DONE = frozenset({"PREVIOUSLY_VOIDED"})
#: 422 issues of a refund that are PayPal's decision about this capture, not a fault of the
#: request: the refund FAILED (with the issue as its reason)
REFUND_DECLINES = frozenset(
    {
        "REFUND_FAILED_INSUFFICIENT_FUNDS",
        "REFUND_NOT_PERMITTED_DUE_TO_CHARGEBACK",
        "TRANSACTION_DISPUTED",
        "REFUND_TIME_LIMIT_EXCEEDED",
        "REFUND_IS_RESTRICTED",
        "REFUND_NOT_ALLOWED",
        "PAYEE_ACCOUNT_LOCKED_OR_CLOSED",
        "PAYEE_ACCOUNT_RESTRICTED",
    }
)
#: ``invoice_id``/``custom_id`` limit of the payments API
_ID_MAX = 127


def _extra(payment: Mapping[str, Any], state: str | None) -> dict[str, str]:
    extra = {"resourceStatus": state or ""}
    amount = payment.get("amount")
    if isinstance(amount, Mapping) and text(amount.get("value")):
        extra["amount"] = str(amount["value"])
        extra["currency"] = str(amount.get("currency_code", ""))
    return extra


def _failure(payment: Mapping[str, Any], kind: str, state: str | None) -> str:
    details = payment.get("status_details")
    detail = text(details.get("reason")) if isinstance(details, Mapping) else None
    return detail or f"{kind[:-1]} {state}".lower()


# completing an approval ----------------------------------------------------------------------


def completion_event(
    order: Mapping[str, Any], *, intent: str, request_id: str, reference: str | None = None
) -> ProviderEvent | None:
    """The outcome of capturing (or authorizing) ``order``, from the order PayPal answers.

    Judged by ``purchase_units[0].payments.captures[0]`` (``authorizations[0]`` for the
    ``authorize`` intent) through :data:`~providers.paypal.transformers.PAYMENT_STATUS`: a
    capture COMPLETED is COMPLETED (``capture_id`` set), an authorization CREATED is
    AUTHORIZED (``payment_id``: the authorization, to capture or void later). None when the
    order carries no such payment, or is not the order ``reference`` asked about (nothing is
    settled: the webhooks of the asked order will).
    """
    kind = "captures" if intent == CAPTURE else "authorizations"
    payment = first_payment(order, kind)
    answered = text(order.get("id"))
    if payment is None or (reference is not None and answered not in (None, reference)):
        return None
    state = text(payment.get("status"))
    status = payment_status(kind, state)
    payment_id = text(payment.get("id"))
    money = paypal_money(payment.get("amount"))
    vault = vault_of(order) or vault_of(payment)
    return ProviderEvent(
        provider=PROVIDER,
        event_id=payment_id or request_id,
        event_type=f"ORDER.{intent.upper()}",
        reference=answered or reference,
        session_id=custom_id_of(order),
        status=status,
        occurred_at=parse_datetime(payment.get("create_time")),
        failure_reason=_failure(payment, kind, state) if status is SessionStatus.FAILED else None,
        payment_id=payment_id,
        capture_id=payment_id if kind == "captures" else None,
        customer_id=text(vault.get("customer", {}).get("id")),
        payment_method_id=text(vault.get("id")),
        extra=_extra(payment, state),
        amount=money[0] if money else None,
        currency=money[1] if money else None,
    )


def declined_event(order_id: str, *, intent: str, issue: str, request_id: str) -> ProviderEvent:
    """A capture/authorize call PayPal refused with one of
    :data:`~providers.paypal.transformers.DECLINE_ISSUES`."""
    return ProviderEvent(
        provider=PROVIDER,
        event_id=request_id,
        event_type=f"ORDER.{intent.upper()}",
        reference=order_id,
        session_id=None,
        status=SessionStatus.FAILED,
        failure_reason=issue,
        extra={"issue": issue},
    )


def payment_token_request(setup_token_id: str) -> dict[str, Any]:
    """The ``POST /v3/vault/payment-tokens`` body that vaults the wallet of an approved setup
    token (``type`` SETUP_TOKEN: PayPal's current API; see the report on the spec's enum)."""
    return {"payment_source": {"token": {"id": setup_token_id, "type": "SETUP_TOKEN"}}}


def vault_event(token: Mapping[str, Any], *, setup_token_id: str) -> ProviderEvent | None:
    """The outcome of a payment-token creation: COMPLETED with the token
    (``payment_method_id``) and its vault customer; None when the answer names no token."""
    token_id = text(token.get("id"))
    if token_id is None:
        return None
    customer = token.get("customer")
    customer_id = text(customer.get("id")) if isinstance(customer, Mapping) else None
    return ProviderEvent(
        provider=PROVIDER,
        event_id=token_id,
        event_type="VAULT.PAYMENT-TOKEN.CREATE",
        reference=setup_token_id,
        session_id=None,
        status=SessionStatus.COMPLETED,
        customer_id=customer_id,
        payment_method_id=token_id,
        extra={"resourceStatus": text(token.get("status")) or ""},
    )


# charging a saved wallet --------------------------------------------------------------------


def vault_order_request(data: ChargeInput) -> dict[str, Any]:
    """The ``POST /v2/checkout/orders`` body that charges the vaulted wallet of ``data`` with
    the payer absent: PayPal captures (or, for a manual capture, authorizes) it at once."""
    request = data.request
    return {
        "intent": "AUTHORIZE" if request.captureMethod == "manual" else "CAPTURE",
        "purchase_units": [purchase_unit(data.session_id, request)],
        "payment_source": {"paypal": {"vault_id": data.payment_method_id}},
    }


def charge_outcome(
    order: Mapping[str, Any],
    *,
    intent: str,
    currency: str | None = None,
    amount: Decimal | None = None,
) -> PaymentOutcome:
    """The outcome of a vaulted charge from the order PayPal answers: captures[0] COMPLETED ->
    COMPLETED (``payment_id`` and ``capture_id`` the capture), DECLINED/FAILED -> FAILED,
    PENDING -> PROCESSING; an authorization CREATED -> AUTHORIZED (``payment_id`` the
    authorization). An order without the payment is PROCESSING (its webhooks decide), and so
    is a payment whose amount is not ``amount`` in ``currency`` or cannot be read
    (:func:`providers.answers.vouched`)."""
    kind = "captures" if intent == CAPTURE else "authorizations"
    payment = first_payment(order, kind)
    order_id = text(order.get("id"))
    if payment is None:
        return PaymentOutcome(
            provider=PROVIDER,
            status=SessionStatus.PROCESSING,
            raw_status=text(order.get("status")),
            reference=order_id,
        )
    state = text(payment.get("status"))
    status = payment_status(kind, state)
    payment_id = text(payment.get("id"))
    money = paypal_money(payment.get("amount"))
    outcome = PaymentOutcome(
        provider=PROVIDER,
        status=status,
        payment_id=payment_id,
        capture_id=payment_id if kind == "captures" else None,
        amount=money[0] if money else None,
        currency=money[1] if money else None,
        failure_reason=_failure(payment, kind, state) if status is SessionStatus.FAILED else None,
        raw_status=state,
        reference=order_id,
    )
    unreadable = payment.get("amount") is not None and money is None
    return vouched(outcome, currency=currency, amount=amount, unreadable=unreadable)


def charge_intent(data: ChargeInput) -> str:
    """The completion intent a vaulted charge of ``data`` has."""
    return AUTHORIZE if data.request.captureMethod == "manual" else CAPTURE


# capture, void, refund ---------------------------------------------------------------------


def capture_request(amount: Decimal, currency: str, *, final: bool = True) -> dict[str, Any]:
    """The ``POST /v2/payments/authorizations/{id}/capture`` body: ``amount`` (less than the
    authorization for a partial capture) and ``final_capture`` (the rest is released)."""
    return {
        "amount": {"currency_code": currency, "value": paypal_value(amount, currency)},
        "final_capture": final,
    }


def capture_outcome(
    capture: Mapping[str, Any],
    *,
    authorization_id: str,
    currency: str | None = None,
    amount: Decimal | None = None,
) -> PaymentOutcome:
    """A capture answer: COMPLETED with ``capture_id`` the capture, PENDING -> PROCESSING,
    DECLINED/FAILED -> FAILED (:data:`~providers.paypal.transformers.PAYMENT_STATUS`); a
    capture of another currency, or COMPLETED for another amount than ``amount``, or with an
    amount that cannot be read, is PROCESSING (:func:`providers.answers.vouched`)."""
    state = text(capture.get("status"))
    status = payment_status("captures", state)
    money = paypal_money(capture.get("amount"))
    outcome = PaymentOutcome(
        provider=PROVIDER,
        status=status,
        payment_id=authorization_id,
        capture_id=text(capture.get("id")),
        amount=money[0] if money else None,
        currency=money[1] if money else None,
        failure_reason=_failure(capture, "captures", state)
        if status is SessionStatus.FAILED
        else None,
        raw_status=state,
    )
    captured = status is SessionStatus.COMPLETED
    return vouched(
        outcome,
        currency=currency,
        amount=amount if captured else None,
        unreadable=(capture.get("amount") is not None and money is None)
        or (captured and outcome.capture_id is None),
    )


def capture_refused(issue: str, *, authorization_id: str) -> PaymentOutcome | None:
    """A capture PayPal refused with a :data:`CAPTURE_DECLINES` issue as an outcome; None for
    any other issue (a refusal of the request, raised)."""
    status = CAPTURE_DECLINES.get(issue)
    if status is None:
        return None
    return PaymentOutcome(
        provider=PROVIDER,
        status=status,
        payment_id=authorization_id,
        failure_reason=issue,
        raw_status=issue,
    )


def void_outcome(
    authorization: Mapping[str, Any] | None, *, authorization_id: str
) -> PaymentOutcome:
    """A void answer (the authorization, or nothing with ``Prefer: return=minimal``'s 204):
    CANCELLED. A repeated void (:data:`VOID_DONE`) is answered the same. An authorization
    answered in a status that is not voided (CAPTURED, CREATED, ...), or another authorization,
    was not voided by the call: PROCESSING, never CANCELLED."""
    state = text(authorization.get("status")) if authorization else None
    answered = text(authorization.get("id")) if authorization else None
    voided = state is None or payment_status("authorizations", state) is SessionStatus.CANCELLED
    if answered not in (None, authorization_id):
        voided = False
    return PaymentOutcome(
        provider=PROVIDER,
        status=SessionStatus.CANCELLED if voided else SessionStatus.PROCESSING,
        payment_id=authorization_id,
        raw_status=state or "VOIDED",
    )


def refund_request(data: RefundInput) -> dict[str, Any]:
    """The ``POST /v2/payments/captures/{id}/refund`` body: the amount, ``invoice_id`` the
    gateway refund id and ``custom_id`` the gateway session id (PayPal echoes both in the
    refund's webhooks), and the merchant's reason as the note to the payer."""
    body: dict[str, Any] = {
        "amount": {
            "currency_code": data.currency,
            "value": paypal_value(data.amount, data.currency),
        },
        "invoice_id": data.refund_id[:_ID_MAX],
        "custom_id": data.session_id[:_ID_MAX],
    }
    if data.reason:
        body["note_to_payer"] = data.reason.replace("_", " ")[:255]
    return body


def refund_outcome(
    refund: Mapping[str, Any], *, amount: Decimal | None = None, currency: str | None = None
) -> RefundOutcome:
    """A refund answer: COMPLETED -> SUCCEEDED, PENDING -> PENDING, FAILED/CANCELLED -> FAILED
    (:data:`~providers.paypal.transformers.REFUND_STATUS`); PENDING when its ``amount`` is not
    ``amount`` in ``currency`` or cannot be read (:func:`providers.answers.vouched_refund`).
    The minimal answer (``Prefer: return=minimal``) has no amount and is taken at its word."""
    state = text(refund.get("status"))
    status = refund_status(state)
    reason = None
    if status is RefundStatus.FAILED:
        details = refund.get("status_details")
        detail = text(details.get("reason")) if isinstance(details, Mapping) else None
        reason = detail or f"refund {state}".lower()
    outcome = RefundOutcome(
        provider=PROVIDER,
        status=status,
        provider_refund_id=text(refund.get("id")),
        failure_reason=reason,
        raw_status=state,
    )
    if amount is None or currency is None:
        return outcome
    answered = paypal_money(refund.get("amount"))
    unreadable = refund.get("amount") is not None and answered is None
    return vouched_refund(
        outcome, answered=answered, amount=amount, currency=currency, unreadable=unreadable
    )


def refund_refused(issue: str) -> RefundOutcome | None:
    """A refund PayPal refused with a :data:`REFUND_DECLINES` issue as a FAILED outcome; None
    for any other issue."""
    if issue not in REFUND_DECLINES:
        return None
    return RefundOutcome(
        provider=PROVIDER, status=RefundStatus.FAILED, failure_reason=issue, raw_status=issue
    )
