"""PayPal Orders v2 wire types and conversions: the ``POST /v2/checkout/orders`` body with
decimal-string amounts in PayPal's decimals, webhook events mapped onto the lifecycle, and the
answers of ``POST /v2/checkout/orders/{id}/capture`` and ``/authorize`` mapped the same way.

Pure functions only: the adapter, the sandbox emulation and the tests share them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gateway.domain.money import add, exponent, format_major, multiply, scale_of
from gateway.domain.session import SessionStatus
from providers.base import CAPTURE, ProviderEvent
from providers.wire import amount_places, parse_datetime

if TYPE_CHECKING:
    from gateway.domain.models import Address, CheckoutRequest, Customer
    from providers.base import CreateSessionInput

__all__ = [
    "DECLINE_ISSUES",
    "PAYMENT_STATUS",
    "PAYPAL_CURRENCIES",
    "PAYPAL_ZERO_DECIMAL",
    "REQUEST_ID_MAX",
    "amount_problem",
    "build_order_request",
    "completion_event",
    "declined_event",
    "event_from_paypal",
    "payment_status",
    "paypal_decimals",
    "paypal_locale",
    "paypal_money",
    "paypal_value",
]

#: Currencies PayPal accepts for payments (developer.paypal.com currency codes).
PAYPAL_CURRENCIES = frozenset(
    {
        "AUD", "BRL", "CAD", "CNY", "CZK", "DKK", "EUR", "HKD", "HUF", "ILS", "JPY", "MYR",
        "MXN", "TWD", "NZD", "NOK", "PHP", "PLN", "GBP", "SGD", "SEK", "CHF", "THB", "USD",
    }
)  # fmt: skip
#: PayPal takes no decimals for these (HUF and TWD have 2 in ISO 4217).
PAYPAL_ZERO_DECIMAL = frozenset({"HUF", "JPY", "TWD"})
REQUEST_ID_MAX = 108
#: 422 issues of a capture/authorize call that mean "the payer's money cannot be had": the
#: payment failed (the payer has left PayPal's page; a new checkout is needed).
DECLINE_ISSUES = frozenset(
    {
        "INSTRUMENT_DECLINED",
        "TRANSACTION_REFUSED",
        "PAYER_CANNOT_PAY",
        "PAYEE_BLOCKED_TRANSACTION",
        "MAX_NUMBER_OF_PAYMENT_ATTEMPTS_EXCEEDED",
        "REDIRECT_PAYER_FOR_ALTERNATE_FUNDING",
        "CARD_EXPIRED",
        "COMPLIANCE_VIOLATION",
        "PAYER_ACCOUNT_LOCKED_OR_CLOSED",
        "PAYER_ACCOUNT_RESTRICTED",
        "TRANSACTION_LIMIT_EXCEEDED",
        "TRANSACTION_RECEIVING_LIMIT_EXCEEDED",
    }
)
_NAME_MAX = 127
_ID_MAX = 127


def paypal_decimals(currency: str) -> int:
    """The number of decimals PayPal accepts for ``currency``."""
    return 0 if currency in PAYPAL_ZERO_DECIMAL else exponent(currency)


def paypal_value(amount: Decimal, currency: str) -> str:
    """``amount`` as PayPal's decimal string ("140.76", "1000"); refuses to round."""
    places = paypal_decimals(currency)
    if scale_of(amount) > places:
        raise ValueError(f"{amount} has more than {places} decimal places for PayPal {currency}")
    return format_major(amount, places)


def _money(amount: Decimal, currency: str) -> dict[str, str]:
    return {"currency_code": currency, "value": paypal_value(amount, currency)}


def amount_problem(request: CheckoutRequest) -> str | None:
    """Why PayPal cannot take the request's amounts, or None.

    PayPal refuses currencies outside its list, a zero total, and fractions in HUF/TWD (whole
    amounts in those currencies are fine: they are sent without decimals).
    """
    currency = request.currency
    if currency not in PAYPAL_CURRENCIES:
        return f"PayPal does not accept {currency}"
    if request.amount.total <= 0:
        return "PayPal needs an amount greater than zero"
    places = paypal_decimals(currency)
    if amount_places(request) > places:
        return f"PayPal accepts {currency} amounts with at most {places} decimal places"
    return None


def paypal_locale(locale: str | None) -> str | None:
    """The gateway locale (``en_AU``) as PayPal's BCP 47 tag (``en-AU``)."""
    return locale.replace("_", "-") if locale else None


def _shipping(customer: Customer | None) -> dict[str, Any] | None:
    """The purchase unit's shipping block, when a complete shipping address is known."""
    address: Address | None = customer.shippingAddress if customer else None
    if address is None or not address.city or not address.postalCode:
        return None
    portable = {
        "address_line_1": address.line1,
        "admin_area_2": address.city,
        "postal_code": address.postalCode,
        "country_code": address.country,
    }
    if address.line2:
        portable["address_line_2"] = address.line2
    if address.state:
        portable["admin_area_1"] = address.state
    shipping: dict[str, Any] = {"address": portable}
    if customer is not None and customer.firstName and customer.lastName:
        shipping["name"] = {"full_name": f"{customer.firstName} {customer.lastName}"}
    return shipping


def build_order_request(data: CreateSessionInput) -> dict[str, Any]:
    """The ``POST /v2/checkout/orders`` body for a hosted PayPal checkout of ``data``.

    ``custom_id`` and ``reference_id`` carry the gateway session id (capture events only echo
    ``custom_id``); ``invoice_id`` carries the order reference when it fits PayPal's 127 chars.
    """
    request = data.request
    cur = request.currency
    amount = request.amount
    item_total = add(multiply(item.unitPrice, item.quantity) for item in request.lines)
    unit: dict[str, Any] = {
        "reference_id": data.session_id,
        "custom_id": data.session_id,
        "amount": {
            **_money(amount.total, cur),
            "breakdown": {
                "item_total": _money(item_total, cur),
                "shipping": _money(amount.shipping, cur),
                "tax_total": _money(amount.tax, cur),
            },
        },
        "items": [
            {
                "name": item.name[:_NAME_MAX],
                "quantity": str(item.quantity),
                "unit_amount": _money(item.unitPrice, cur),
                **({"sku": item.sku} if item.sku and len(item.sku) <= _ID_MAX else {}),
            }
            for item in request.lines
        ],
    }
    if len(request.orderReference) <= _ID_MAX:
        unit["invoice_id"] = request.orderReference
    shipping = _shipping(request.customer)
    if shipping is not None:
        unit["shipping"] = shipping
    experience: dict[str, Any] = {
        "return_url": request.return_urls.success,
        "cancel_url": request.return_urls.failure,
        "user_action": "PAY_NOW",
        "shipping_preference": "SET_PROVIDED_ADDRESS" if shipping else "GET_FROM_FILE",
    }
    locale = paypal_locale(request.locale)
    if locale:
        experience["locale"] = locale
    wallet: dict[str, Any] = {"experience_context": experience}
    if request.saves_payment_method:
        # vault the wallet once the payment succeeds: for the customer's next visits
        # (IMMEDIATE) or for merchant-initiated charges of a series (RECURRING_POSTPAID)
        series = request.sessionType == "first_in_series"
        wallet["attributes"] = {
            "vault": {
                "store_in_vault": "ON_SUCCESS",
                "usage_type": "MERCHANT",
                "usage_pattern": "RECURRING_POSTPAID" if series else "IMMEDIATE",
                "customer_type": "CONSUMER",
            }
        }
    customer = request.customer
    if customer is not None:
        if customer.email:
            wallet["email_address"] = str(customer.email)
        if customer.firstName and customer.lastName:
            wallet["name"] = {"given_name": customer.firstName, "surname": customer.lastName}
    return {
        "intent": "AUTHORIZE" if request.captureMethod == "manual" else "CAPTURE",
        "purchase_units": [unit],
        "payment_source": {"paypal": wallet},
    }


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


#: The one table of PayPal payment statuses, for captures and authorizations wherever they
#: appear (an order's ``purchase_units[].payments``, a capture/authorization webhook resource,
#: the answer of the gateway's capture/authorize call). Success only when the money is taken
#: (capture COMPLETED) or reserved (authorization CREATED, or captured since); every status not
#: listed (PENDING, refunds, voids, anything unknown) is PROCESSING: never success.
PAYMENT_STATUS: Mapping[tuple[str, str], SessionStatus] = MappingProxyType(
    {
        ("captures", "COMPLETED"): SessionStatus.COMPLETED,
        ("captures", "DECLINED"): SessionStatus.FAILED,
        ("captures", "FAILED"): SessionStatus.FAILED,
        ("authorizations", "CREATED"): SessionStatus.COMPLETED,
        ("authorizations", "CAPTURED"): SessionStatus.COMPLETED,
        ("authorizations", "PARTIALLY_CAPTURED"): SessionStatus.COMPLETED,
        ("authorizations", "DENIED"): SessionStatus.FAILED,
    }
)
#: webhook event types whose resource is one capture or authorization, by payment kind
_PAYMENT_EVENTS: Mapping[str, str] = MappingProxyType(
    {
        "PAYMENT.CAPTURE.COMPLETED": "captures",
        "PAYMENT.CAPTURE.PENDING": "captures",
        "PAYMENT.CAPTURE.DENIED": "captures",
        "PAYMENT.CAPTURE.DECLINED": "captures",
        "PAYMENT.AUTHORIZATION.CREATED": "authorizations",
    }
)
#: a PayPal ``amount.value``: a plain decimal string (the Orders v2 ``money`` pattern)
_VALUE = re.compile(r"[0-9]{1,32}(\.[0-9]{1,6})?")


def payment_status(kind: str, state: str | None) -> SessionStatus:
    """The session status one capture (``kind`` "captures") or authorization justifies."""
    return PAYMENT_STATUS.get((kind, state or ""), SessionStatus.PROCESSING)


def _payments(order: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every ``purchase_units[].payments.<kind>[]`` entry of an order, with its kind."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    for unit in order.get("purchase_units") or []:
        payments = unit.get("payments") if isinstance(unit, Mapping) else None
        if not isinstance(payments, Mapping):
            continue
        for kind in ("captures", "authorizations"):
            entries = payments.get(kind)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, Mapping):
                    found.append((kind, entry))
    return found


def _order_payment_status(resource: Mapping[str, Any]) -> SessionStatus:
    """The status a COMPLETED order's payments justify (:data:`PAYMENT_STATUS` per payment):
    success when any payment secured the money, else failure when any failed."""
    statuses = {
        payment_status(kind, _str(entry.get("status"))) for kind, entry in _payments(resource)
    }
    for status in (SessionStatus.COMPLETED, SessionStatus.FAILED):
        if status in statuses:
            return status
    return SessionStatus.PROCESSING


def _status(event_type: str, resource: Mapping[str, Any]) -> SessionStatus | None:
    """Lifecycle status of an event; approval is not payment, so it is PROCESSING only."""
    if event_type == "CHECKOUT.ORDER.APPROVED":
        return SessionStatus.PROCESSING
    if event_type == "CHECKOUT.ORDER.COMPLETED":
        return _order_payment_status(resource)
    if event_type in ("CHECKOUT.ORDER.VOIDED", "PAYMENT.AUTHORIZATION.VOIDED"):
        return SessionStatus.CANCELLED
    if event_type == "CHECKOUT.PAYMENT-APPROVAL.REVERSED":
        return SessionStatus.FAILED
    kind = _PAYMENT_EVENTS.get(event_type)
    return payment_status(kind, _str(resource.get("status"))) if kind else None


def paypal_money(amount: Any) -> tuple[Decimal, str] | None:
    """A PayPal ``{"currency_code", "value"}`` as the exact amount and currency; None when
    absent or not a plain decimal string."""
    if not isinstance(amount, Mapping):
        return None
    value, currency = amount.get("value"), amount.get("currency_code")
    if not isinstance(value, str) or not isinstance(currency, str) or not _VALUE.fullmatch(value):
        return None
    return Decimal(value), currency


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


def _vault(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    """``payment_source.paypal.attributes.vault`` of a resource (empty when absent)."""
    node: Any = resource
    for key in ("payment_source", "paypal", "attributes", "vault"):
        node = node.get(key) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        return {}
    customer = node.get("customer")
    return {**node, "customer": customer if isinstance(customer, Mapping) else {}}


def event_from_paypal(event: Mapping[str, Any]) -> ProviderEvent:
    """Map one (already verified) PayPal webhook event onto the gateway lifecycle.

    Order events carry the order as ``resource``; capture and authorization events carry the
    payment, which names its order in ``supplementary_data.related_ids.order_id``.
    """
    event_type = str(event.get("event_type", ""))
    raw = event.get("resource")
    resource: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if event_type.startswith("CHECKOUT."):
        order_id = _str(resource.get("id"))
        units = resource.get("purchase_units")
        first = units[0] if isinstance(units, list) and units else {}
        session_id = _str(first.get("custom_id")) if isinstance(first, Mapping) else None
    else:
        supplementary = resource.get("supplementary_data")
        related = supplementary.get("related_ids") if isinstance(supplementary, Mapping) else None
        order_id = _str(related.get("order_id")) if isinstance(related, Mapping) else None
        session_id = _str(resource.get("custom_id"))
    status = _status(event_type, resource)
    reason = None
    if status is SessionStatus.FAILED:
        details = resource.get("status_details")
        detail = _str(details.get("reason")) if isinstance(details, Mapping) else None
        reason = detail or _str(event.get("summary")) or event_type
    extra = {"resourceStatus": _str(resource.get("status")) or ""}
    amount = resource.get("amount")
    if isinstance(amount, Mapping) and _str(amount.get("value")):
        extra["amount"] = str(amount["value"])
        extra["currency"] = str(amount.get("currency_code", ""))
    money = _event_money(event_type, resource)
    return ProviderEvent(
        provider="paypal",
        event_id=str(event.get("id", "")),
        event_type=event_type,
        reference=order_id,
        session_id=session_id,
        status=status,
        occurred_at=parse_datetime(event.get("create_time")),
        failure_reason=reason,
        payment_id=None if event_type.startswith("CHECKOUT.") else _str(resource.get("id")),
        customer_id=_str(_vault(resource).get("customer", {}).get("id")),
        payment_method_id=_str(_vault(resource).get("id")),
        extra=extra,
        amount=money[0] if money else None,
        currency=money[1] if money else None,
        awaits_completion=event_type == "CHECKOUT.ORDER.APPROVED",
    )


def _first_payment(order: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The first ``purchase_units[].payments.<kind>[]`` entry of an order, or None."""
    return next((entry for found, entry in _payments(order) if found == kind), None)


def _custom_id(order: Mapping[str, Any]) -> str | None:
    units = order.get("purchase_units")
    first = units[0] if isinstance(units, list) and units else None
    return _str(first.get("custom_id")) if isinstance(first, Mapping) else None


def completion_event(
    order: Mapping[str, Any], *, intent: str, request_id: str
) -> ProviderEvent | None:
    """The outcome of capturing (or authorizing) ``order``, from the order PayPal answers.

    Judged by ``purchase_units[0].payments.captures[0]`` (``authorizations[0]`` for the
    ``authorize`` intent); None when the order carries no such payment (nothing is settled).
    An authorization counts as COMPLETED: for a manual-capture session the checkout is done
    once the money is reserved; capturing it later is the merchant's business.
    """
    kind = "captures" if intent == CAPTURE else "authorizations"
    payment = _first_payment(order, kind)
    if payment is None:
        return None
    state = _str(payment.get("status"))
    status = payment_status(kind, state)
    reason = None
    if status is SessionStatus.FAILED:
        details = payment.get("status_details")
        detail = _str(details.get("reason")) if isinstance(details, Mapping) else None
        reason = detail or f"{kind[:-1]} {state}".lower()
    payment_id = _str(payment.get("id"))
    money = paypal_money(payment.get("amount"))
    vault = _vault(order) or _vault(payment)
    extra = {"resourceStatus": state or ""}
    amount = payment.get("amount")
    if isinstance(amount, Mapping) and _str(amount.get("value")):
        extra["amount"] = str(amount["value"])
        extra["currency"] = str(amount.get("currency_code", ""))
    return ProviderEvent(
        provider="paypal",
        event_id=payment_id or request_id,
        event_type=f"ORDER.{intent.upper()}",
        reference=_str(order.get("id")),
        session_id=_custom_id(order),
        status=status,
        occurred_at=parse_datetime(payment.get("create_time")),
        failure_reason=reason,
        payment_id=payment_id,
        customer_id=_str(vault.get("customer", {}).get("id")),
        payment_method_id=_str(vault.get("id")),
        extra=extra,
        amount=money[0] if money else None,
        currency=money[1] if money else None,
    )


def declined_event(order_id: str, *, intent: str, issue: str, request_id: str) -> ProviderEvent:
    """A capture/authorize call PayPal refused with one of :data:`DECLINE_ISSUES`."""
    return ProviderEvent(
        provider="paypal",
        event_id=request_id,
        event_type=f"ORDER.{intent.upper()}",
        reference=order_id,
        session_id=None,
        status=SessionStatus.FAILED,
        failure_reason=issue,
        extra={"issue": issue},
    )
