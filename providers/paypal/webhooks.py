"""PayPal webhooks: the verify-webhook-signature request built from a delivery, and the mapping
of a verified event onto the gateway lifecycle.

PayPal signs with a certificate the merchant cannot check offline without PayPal's CA chain,
so the adapter asks PayPal (``POST /v1/notifications/verify-webhook-signature``) with the
transmission headers and the event spliced in byte for byte (:func:`verification_body`).

Event families (:func:`event_from_paypal`):

* ``CHECKOUT.ORDER.*``: the hosted order; ``CHECKOUT.ORDER.APPROVED`` awaits the gateway's
  capture or authorization (``awaits_completion``).
* ``VAULT.SETUP-TOKEN.APPROVED``: the payer approved saving the wallet (setup session); it
  awaits the gateway's ``POST /v3/vault/payment-tokens`` (``awaits_completion``).
* ``PAYMENT.CAPTURE.*`` / ``PAYMENT.AUTHORIZATION.*``: one capture or authorization
  (:data:`~providers.paypal.transformers.PAYMENT_STATUS`); ``capture_id`` is set for captures.
* ``PAYMENT.CAPTURE.REFUNDED`` and ``PAYMENT.REFUND.*``: a refund resource; ``status`` None and
  ``refund`` set (:data:`~providers.paypal.transformers.REFUND_STATUS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.domain.money import add
from gateway.domain.session import RefundStatus, SessionStatus
from providers.base import ProviderEvent, RefundUpdate, WebhookVerificationError
from providers.paypal.transformers import (
    order_payment_status,
    payment_status,
    paypal_money,
    refund_status,
    session_of_customer,
    text,
    vault_of,
)
from providers.wire import header, parse_datetime

__all__ = [
    "APPROVAL_EVENTS",
    "PAYMENT_EVENTS",
    "REFUND_EVENTS",
    "TRANSMISSION_HEADERS",
    "event_from_paypal",
    "verification_body",
    "verified",
]

PROVIDER = "paypal"

#: Webhook header -> field of the verify-webhook-signature request.
TRANSMISSION_HEADERS = {
    "PAYPAL-AUTH-ALGO": "auth_algo",
    "PAYPAL-CERT-URL": "cert_url",
    "PAYPAL-TRANSMISSION-ID": "transmission_id",
    "PAYPAL-TRANSMISSION-SIG": "transmission_sig",
    "PAYPAL-TRANSMISSION-TIME": "transmission_time",
}
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]{1,2048}")

#: events after which no money has moved yet: the gateway completes them
APPROVAL_EVENTS = frozenset({"CHECKOUT.ORDER.APPROVED", "VAULT.SETUP-TOKEN.APPROVED"})
#: webhook event types whose resource is one capture or authorization, by payment kind
PAYMENT_EVENTS: Mapping[str, str] = MappingProxyType(
    {
        "PAYMENT.CAPTURE.COMPLETED": "captures",
        "PAYMENT.CAPTURE.PENDING": "captures",
        "PAYMENT.CAPTURE.DENIED": "captures",
        "PAYMENT.CAPTURE.DECLINED": "captures",
        "PAYMENT.AUTHORIZATION.CREATED": "authorizations",
        "PAYMENT.AUTHORIZATION.VOIDED": "authorizations",
    }
)
#: webhook event types whose resource is a refund (any ``PAYMENT.REFUND.*`` too)
REFUND_EVENTS = frozenset({"PAYMENT.CAPTURE.REFUNDED"})
#: events with a fixed status (CHECKOUT.ORDER.COMPLETED is judged by its payments, the payment
#: events by their resource's status)
_FIXED_STATUS: Mapping[str, SessionStatus] = MappingProxyType(
    {
        "CHECKOUT.ORDER.APPROVED": SessionStatus.PROCESSING,  # approval is not payment
        "VAULT.SETUP-TOKEN.APPROVED": SessionStatus.PROCESSING,
        "CHECKOUT.ORDER.VOIDED": SessionStatus.CANCELLED,
        "CHECKOUT.PAYMENT-APPROVAL.REVERSED": SessionStatus.FAILED,
        "PAYMENT.AUTHORIZATION.VOIDED": SessionStatus.CANCELLED,
    }
)


def verification_body(headers: Mapping[str, str], raw_body: bytes, webhook_id: str | None) -> bytes:
    """The verify-webhook-signature request for one delivery; raises
    WebhookVerificationError (no call needed) for missing or unprintable transmission headers,
    a missing webhook id, or a body that is not a JSON object."""
    fields: dict[str, str] = {}
    for name, field in TRANSMISSION_HEADERS.items():
        value = header(headers, name)
        if not value:
            raise WebhookVerificationError(PROVIDER, f"missing header {name}")
        if not _PRINTABLE_ASCII.fullmatch(value):
            # PayPal sends ids, base64, URLs and times; other bytes cannot be forwarded
            raise WebhookVerificationError(PROVIDER, f"header {name} is not printable ASCII")
        fields[field] = value
    if not webhook_id:
        raise WebhookVerificationError(PROVIDER, "no webhook id configured")
    try:
        event = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        raise WebhookVerificationError(PROVIDER, "body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError(PROVIDER, "body is not a JSON object")
    fields["webhook_id"] = webhook_id
    # The event is spliced in byte for byte: re-serialising could change what was signed.
    return orjson.dumps(fields)[:-1] + b',"webhook_event":' + raw_body.strip() + b"}"


def verified(answer: Mapping[str, Any], raw_body: bytes) -> dict[str, Any]:
    """The event of a delivery PayPal's verification answer vouches for; raises
    WebhookVerificationError for any verdict but SUCCESS."""
    verdict = answer.get("verification_status")
    if verdict != "SUCCESS":
        raise WebhookVerificationError(PROVIDER, f"verification_status {verdict!r}")
    event: dict[str, Any] = orjson.loads(raw_body)
    return event


def _status(event_type: str, resource: Mapping[str, Any]) -> SessionStatus | None:
    fixed = _FIXED_STATUS.get(event_type)
    if fixed is not None:
        return fixed
    if event_type == "CHECKOUT.ORDER.COMPLETED":
        return order_payment_status(resource)
    kind = PAYMENT_EVENTS.get(event_type)
    return payment_status(kind, text(resource.get("status"))) if kind else None


def _event_money(event_type: str, resource: Mapping[str, Any]) -> tuple[Decimal, str] | None:
    """What an event says was paid: the order's amount (summed over its purchase units) for an
    order event, the payment's own amount for a capture or authorization event."""
    if not event_type.startswith("CHECKOUT."):
        return paypal_money(resource.get("amount"))
    units = resource.get("purchase_units")
    amounts = [
        paypal_money(unit.get("amount"))
        for unit in (units if isinstance(units, list) else [])
        if isinstance(unit, Mapping)
    ]
    if not amounts or any(a is None for a in amounts):
        return None
    currencies = {a[1] for a in amounts if a is not None}
    if len(currencies) != 1:
        return None
    try:
        total = add(a[0] for a in amounts if a is not None)
    except ArithmeticError:  # more digits than the money context holds: never a rounded sum
        return None
    return total, currencies.pop()


def _related(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    supplementary = resource.get("supplementary_data")
    related = supplementary.get("related_ids") if isinstance(supplementary, Mapping) else None
    return related if isinstance(related, Mapping) else {}


def _reason(resource: Mapping[str, Any]) -> str | None:
    details = resource.get("status_details")
    return text(details.get("reason")) if isinstance(details, Mapping) else None


#: the path of the capture a refund's ``up`` link names
_CAPTURE_PATH = re.compile(r"/v2/payments/captures/([A-Za-z0-9_-]{1,64})")


def _refunded_capture(resource: Mapping[str, Any]) -> str | None:
    """The capture a refund resource refunds (its ``up`` link), or None. A refund made in
    PayPal's dashboard names neither the gateway's refund nor its session: this is all that
    ties it to a payment."""
    links = resource.get("links")
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, Mapping) or link.get("rel") != "up":
            continue
        href = link.get("href")
        if not isinstance(href, str):
            continue
        found = _CAPTURE_PATH.fullmatch(urlsplit(href).path)
        if found:
            return found.group(1)
    return None


def _event_id(event: Mapping[str, Any]) -> str:
    """The event's id: the deduplication key of every delivery of it."""
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookVerificationError(PROVIDER, "event lacks an id")
    return event_id


def _refund_event(event: Mapping[str, Any], resource: Mapping[str, Any]) -> ProviderEvent:
    """A refund resource as a refund update (``custom_id``: the gateway session id,
    ``invoice_id``: the gateway refund id, both sent with the refund call; ``capture_id``: the
    capture refunded)."""
    state = text(resource.get("status"))
    status = refund_status(state)
    money = paypal_money(resource.get("amount"))
    if money is None and resource.get("amount") is not None:
        # there but unreadable: not "no amount", which the gateway applies unchecked
        status = RefundStatus.PENDING
    failed = status.value == "FAILED"
    return ProviderEvent(
        provider=PROVIDER,
        event_id=_event_id(event),
        event_type=str(event.get("event_type", "")),
        reference=None,
        session_id=text(resource.get("custom_id")),
        status=None,
        capture_id=_refunded_capture(resource),
        occurred_at=parse_datetime(event.get("create_time")),
        extra={"resourceStatus": state or ""},
        refund=RefundUpdate(
            status=status,
            provider_refund_id=text(resource.get("id")),
            refund_id=text(resource.get("invoice_id")),
            amount=money[0] if money else None,
            currency=money[1] if money else None,
            failure_reason=(_reason(resource) or f"refund {state}".lower()) if failed else None,
        ),
    )


def _setup_event(event: Mapping[str, Any], resource: Mapping[str, Any]) -> ProviderEvent:
    """A setup token the payer approved: the gateway now creates the payment token."""
    customer = resource.get("customer")
    customer_id = text(customer.get("id")) if isinstance(customer, Mapping) else None
    return ProviderEvent(
        provider=PROVIDER,
        event_id=_event_id(event),
        event_type=str(event.get("event_type", "")),
        reference=text(resource.get("id")),
        session_id=session_of_customer(customer_id),
        status=SessionStatus.PROCESSING,
        occurred_at=parse_datetime(event.get("create_time")),
        extra={"resourceStatus": text(resource.get("status")) or ""},
        awaits_completion=True,
    )


def event_from_paypal(event: Mapping[str, Any]) -> ProviderEvent:
    """Map one (already verified) PayPal webhook event onto the gateway lifecycle.

    Order events carry the order as ``resource``; capture and authorization events carry the
    payment, which names its order (and a capture its authorization) in
    ``supplementary_data.related_ids``. ``payment_id`` is the authorization of a manual capture
    (the capture's own id is ``capture_id``), else the capture.
    """
    event_type = str(event.get("event_type", ""))
    raw = event.get("resource")
    resource: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if event_type in REFUND_EVENTS or event_type.startswith("PAYMENT.REFUND."):
        return _refund_event(event, resource)
    if event_type.startswith("VAULT.SETUP-TOKEN."):
        return _setup_event(event, resource)
    order_event = event_type.startswith("CHECKOUT.")
    payment_id = capture_id = None
    if order_event:
        order_id = text(resource.get("id"))
        units = resource.get("purchase_units")
        first = units[0] if isinstance(units, list) and units else {}
        session_id = text(first.get("custom_id")) if isinstance(first, Mapping) else None
    else:
        related = _related(resource)
        order_id = text(related.get("order_id"))
        session_id = text(resource.get("custom_id"))
        payment_id = text(resource.get("id"))
        if PAYMENT_EVENTS.get(event_type) == "captures":
            capture_id = payment_id
            payment_id = text(related.get("authorization_id")) or capture_id
    status = _status(event_type, resource)
    reason = None
    if status is SessionStatus.FAILED:
        reason = _reason(resource) or text(event.get("summary")) or event_type
    extra = {"resourceStatus": text(resource.get("status")) or ""}
    amount = resource.get("amount")
    if isinstance(amount, Mapping) and text(amount.get("value")):
        extra["amount"] = str(amount["value"])
        extra["currency"] = str(amount.get("currency_code", ""))
    money = _event_money(event_type, resource)
    vault = vault_of(resource)
    return ProviderEvent(
        provider=PROVIDER,
        event_id=_event_id(event),
        event_type=event_type,
        reference=order_id,
        session_id=session_id,
        status=status,
        occurred_at=parse_datetime(event.get("create_time")),
        failure_reason=reason,
        payment_id=payment_id,
        capture_id=capture_id,
        customer_id=text(vault.get("customer", {}).get("id")),
        payment_method_id=text(vault.get("id")),
        extra=extra,
        amount=money[0] if money else None,
        currency=money[1] if money else None,
        awaits_completion=event_type in APPROVAL_EVENTS,
    )
