"""PayPal wire types and the hosted-session bodies: the Orders v2 ``POST /v2/checkout/orders``
body with decimal-string amounts in PayPal's decimals, the Vault v3 ``POST /v3/vault/setup-tokens``
body of a setup session, and the status tables every PayPal answer and webhook maps through
(:data:`PAYMENT_STATUS`, :data:`REFUND_STATUS`).

Webhook mapping lives in :mod:`providers.paypal.webhooks`, the bodies and answers of the calls
after the checkout in :mod:`providers.paypal.payments`. Pure functions only: the adapter, the
sandbox emulation and the tests share them.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gateway.domain.money import add, exponent, format_major, multiply, scale_of
from gateway.domain.session import RefundStatus, SessionStatus
from providers.wire import amount_places

if TYPE_CHECKING:
    from gateway.domain.models import Address, CheckoutRequest, Customer
    from providers.base import CreateSessionInput

__all__ = [
    "DECLINE_ISSUES",
    "PAYMENT_STATUS",
    "PAYPAL_CURRENCIES",
    "PAYPAL_ZERO_DECIMAL",
    "REFUND_STATUS",
    "REQUEST_ID_MAX",
    "amount_problem",
    "build_order_request",
    "build_setup_token_request",
    "custom_id_of",
    "first_payment",
    "order_payment_status",
    "order_payments",
    "payment_status",
    "paypal_decimals",
    "paypal_locale",
    "paypal_money",
    "paypal_value",
    "purchase_unit",
    "refund_status",
    "session_of_customer",
    "setup_customer_id",
    "text",
    "vault_of",
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
    amounts in those currencies are fine: they are sent without decimals). A setup session
    charges nothing: its zero total is what it must have.
    """
    currency = request.currency
    if currency not in PAYPAL_CURRENCIES:
        return f"PayPal does not accept {currency}"
    if request.sessionType == "setup":
        return None
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


def purchase_unit(session_id: str, request: CheckoutRequest) -> dict[str, Any]:
    """The one purchase unit of an order for ``request``: its amount (with the breakdown and
    items when the request has order lines), ``custom_id`` and ``reference_id`` carrying the
    gateway session id (payment events only echo ``custom_id``) and ``invoice_id`` the order
    reference when it fits PayPal's 127 characters."""
    cur = request.currency
    amount = request.amount
    unit: dict[str, Any] = {
        "reference_id": session_id,
        "custom_id": session_id,
        "amount": _money(amount.total, cur),
    }
    lines = request.lines
    if lines:
        item_total = add(multiply(item.unitPrice, item.quantity) for item in lines)
        unit["amount"]["breakdown"] = {
            "item_total": _money(item_total, cur),
            "shipping": _money(amount.shipping, cur),
            "tax_total": _money(amount.tax, cur),
        }
        unit["items"] = [
            {
                "name": item.name[:_NAME_MAX],
                "quantity": str(item.quantity),
                "unit_amount": _money(item.unitPrice, cur),
                **({"sku": item.sku} if item.sku and len(item.sku) <= _ID_MAX else {}),
            }
            for item in lines
        ]
    if len(request.orderReference) <= _ID_MAX:
        unit["invoice_id"] = request.orderReference
    return unit


def build_order_request(data: CreateSessionInput) -> dict[str, Any]:
    """The ``POST /v2/checkout/orders`` body for a hosted PayPal checkout of ``data``
    (:func:`purchase_unit`, the wallet's experience context and, for a session that saves the
    method, the vault attributes)."""
    request = data.request
    unit = purchase_unit(data.session_id, request)
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


def setup_customer_id(session_id: str) -> str | None:
    """The gateway session id (a UUID) as a Vault ``customer.id`` (22 characters of
    ``[0-9a-zA-Z_-]``, PayPal's limit): setup-token webhooks carry no custom id, so the
    customer the token is vaulted for names the session. None when the id is not a UUID."""
    try:
        raw = uuid.UUID(session_id).bytes
    except ValueError:
        return None
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def session_of_customer(customer_id: str | None) -> str | None:
    """The gateway session id :func:`setup_customer_id` put into ``customer_id``, or None."""
    if not customer_id or len(customer_id) != 22:
        return None
    try:
        return str(uuid.UUID(bytes=base64.urlsafe_b64decode(customer_id + "==")))
    except (ValueError, TypeError):
        return None


def build_setup_token_request(data: CreateSessionInput) -> dict[str, Any]:
    """The ``POST /v3/vault/setup-tokens`` body of a setup session: the PayPal wallet, saved
    for merchant-initiated charges, with the payer's return and cancel URLs."""
    request = data.request
    experience: dict[str, Any] = {
        "return_url": request.return_urls.success,
        "cancel_url": request.return_urls.failure,
        "shipping_preference": "NO_SHIPPING",
        "vault_instruction": "ON_CREATE_PAYMENT_TOKENS",
    }
    locale = paypal_locale(request.locale)
    if locale:
        experience["locale"] = locale
    body: dict[str, Any] = {
        "payment_source": {
            "paypal": {
                "usage_type": "MERCHANT",
                "customer_type": "CONSUMER",
                "permit_multiple_payment_tokens": True,
                "experience_context": experience,
            }
        }
    }
    customer = setup_customer_id(data.session_id)
    if customer is not None:
        body["customer"] = {"id": customer}
    return body


def text(value: Any) -> str | None:
    """``value`` when it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


#: The one table of PayPal payment statuses, for captures and authorizations wherever they
#: appear (an order's ``purchase_units[].payments``, a capture/authorization webhook resource,
#: the answer of a capture, authorize, void or vaulted charge). Success only when the money is
#: taken (capture COMPLETED); an authorization that holds it is AUTHORIZED (captured since:
#: COMPLETED). Every status not listed (PENDING, refunds, anything unknown) is PROCESSING:
#: never success.
PAYMENT_STATUS: Mapping[tuple[str, str], SessionStatus] = MappingProxyType(
    {
        ("captures", "COMPLETED"): SessionStatus.COMPLETED,
        ("captures", "DECLINED"): SessionStatus.FAILED,
        ("captures", "FAILED"): SessionStatus.FAILED,
        ("authorizations", "CREATED"): SessionStatus.AUTHORIZED,
        ("authorizations", "CAPTURED"): SessionStatus.COMPLETED,
        ("authorizations", "PARTIALLY_CAPTURED"): SessionStatus.COMPLETED,
        ("authorizations", "DENIED"): SessionStatus.FAILED,
        ("authorizations", "VOIDED"): SessionStatus.CANCELLED,
        ("authorizations", "EXPIRED"): SessionStatus.CANCELLED,
    }
)
#: PayPal refund status -> the gateway refund's (anything unknown stays PENDING)
REFUND_STATUS: Mapping[str, RefundStatus] = MappingProxyType(
    {
        "COMPLETED": RefundStatus.SUCCEEDED,
        "PENDING": RefundStatus.PENDING,
        "FAILED": RefundStatus.FAILED,
        "CANCELLED": RefundStatus.FAILED,
    }
)
#: a PayPal ``amount.value``: a plain decimal string (the Orders v2 ``money`` pattern)
_VALUE = re.compile(r"[0-9]{1,32}(\.[0-9]{1,6})?")


def payment_status(kind: str, state: str | None) -> SessionStatus:
    """The session status one capture (``kind`` "captures") or authorization justifies."""
    return PAYMENT_STATUS.get((kind, state or ""), SessionStatus.PROCESSING)


def refund_status(state: str | None) -> RefundStatus:
    """The gateway refund status a PayPal refund status justifies (:data:`REFUND_STATUS`)."""
    return REFUND_STATUS.get(state or "", RefundStatus.PENDING)


def order_payments(order: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every ``purchase_units[].payments.<kind>[]`` entry of an order, with its kind."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    units = order.get("purchase_units")
    for unit in units if isinstance(units, list) else []:
        payments = unit.get("payments") if isinstance(unit, Mapping) else None
        if not isinstance(payments, Mapping):
            continue
        for kind in ("captures", "authorizations"):
            entries = payments.get(kind)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, Mapping):
                    found.append((kind, entry))
    return found


def first_payment(order: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The first ``purchase_units[].payments.<kind>[]`` entry of an order, or None."""
    return next((entry for found, entry in order_payments(order) if found == kind), None)


def order_payment_status(order: Mapping[str, Any]) -> SessionStatus:
    """The status a COMPLETED order's payments justify (:data:`PAYMENT_STATUS` per payment):
    captured when any capture took the money, else authorized, else failed when any failed,
    else cancelled when an authorization was voided or expired."""
    statuses = {
        payment_status(kind, text(entry.get("status"))) for kind, entry in order_payments(order)
    }
    for status in (
        SessionStatus.COMPLETED,
        SessionStatus.AUTHORIZED,
        SessionStatus.FAILED,
        SessionStatus.CANCELLED,
    ):
        if status in statuses:
            return status
    return SessionStatus.PROCESSING


def custom_id_of(order: Mapping[str, Any]) -> str | None:
    """``purchase_units[0].custom_id`` of an order (the gateway session id)."""
    units = order.get("purchase_units")
    first = units[0] if isinstance(units, list) and units else None
    return text(first.get("custom_id")) if isinstance(first, Mapping) else None


def paypal_money(amount: Any) -> tuple[Decimal, str] | None:
    """A PayPal ``{"currency_code", "value"}`` as the exact amount and currency; None when
    absent or not a plain decimal string."""
    if not isinstance(amount, Mapping):
        return None
    value, currency = amount.get("value"), amount.get("currency_code")
    if not isinstance(value, str) or not isinstance(currency, str) or not _VALUE.fullmatch(value):
        return None
    return Decimal(value), currency


def vault_of(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    """``payment_source.paypal.attributes.vault`` of a resource (empty when absent), its
    ``customer`` always a mapping."""
    node: Any = resource
    for key in ("payment_source", "paypal", "attributes", "vault"):
        node = node.get(key) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        return {}
    customer = node.get("customer")
    return {**node, "customer": customer if isinstance(customer, Mapping) else {}}
