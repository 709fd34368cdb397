"""PayPal's request rules as the emulated API enforces them, with PayPal's error shape.

:class:`PayPalError` carries one error; :meth:`PayPalError.response` renders it the way PayPal
does (``{name, message, debug_id, details: [{field, value, location, issue, description}],
links}``). :func:`check_order` applies the Orders v2 amount rules (decimals, breakdown and item
totals) and :func:`check_verify_request` the verify-webhook-signature schema.
"""

from __future__ import annotations

import re
import secrets
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from aiohttp import web

from providers.paypal.transformers import PAYPAL_CURRENCIES, paypal_decimals

__all__ = [
    "PayPalError",
    "check_money",
    "check_order",
    "check_order_units",
    "check_verify_request",
    "error_body",
]

_NAMES = {
    400: (
        "INVALID_REQUEST",
        "Request is not well-formed, syntactically incorrect, or violates schema.",
    ),
    401: (
        "AUTHENTICATION_FAILURE",
        "Authentication failed due to missing authorization header, or invalid authentication "
        "credentials.",
    ),
    422: (
        "UNPROCESSABLE_ENTITY",
        "The requested action could not be performed, semantically incorrect, or failed "
        "business validation.",
    ),
    429: ("RATE_LIMIT_REACHED", "Too many requests. Blocked due to rate limiting."),
    500: ("INTERNAL_SERVER_ERROR", "An internal server error occurred."),
    503: ("SERVICE_UNAVAILABLE", "Service Unavailable."),
}
_VALUE = re.compile(r"^((-?[0-9]+)|(-?([0-9]+)?[.][0-9]+))$")
_QUANTITY = re.compile(r"^[1-9][0-9]{0,9}$")
_ALNUM = re.compile(r"^[a-zA-Z0-9]+$")
_TRANSMISSION = re.compile(r"^(?!\d+$)\w+\S+")


def error_body(
    status: int, message: str = "", details: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """PayPal's error document for ``status`` (``message`` overrides the standard text)."""
    name, standard = _NAMES.get(status, ("INTERNAL_SERVER_ERROR", "An internal server error."))
    body: dict[str, Any] = {
        "name": name,
        "message": message or standard,
        "debug_id": secrets.token_hex(7),
    }
    if details:
        body["details"] = details
    issue = details[0]["issue"] if details else name
    body["links"] = [
        {
            "href": f"https://developer.paypal.com/api/rest/reference/orders/v2/errors/#{issue}",
            "rel": "information_link",
            "method": "GET",
        }
    ]
    return body


class PayPalError(Exception):
    """One PayPal error: HTTP status, ``issue`` code, JSON-pointer ``field`` and description."""

    def __init__(self, status: int, issue: str, field: str, description: str) -> None:
        super().__init__(f"{issue} at {field}: {description}")
        self.status = status
        self.issue = issue
        self.field = field
        self.description = description

    def body(self) -> bytes:
        """The error document as PayPal sends it."""
        detail = {
            "field": self.field,
            "location": "body",
            "issue": self.issue,
            "description": self.description,
        }
        return orjson.dumps(error_body(self.status, details=[detail]))

    def response(self) -> web.Response:
        """The error as PayPal answers it."""
        return web.Response(status=self.status, body=self.body(), content_type="application/json")


def check_money(node: Any, field: str, currency: str | None = None) -> tuple[str, Decimal]:
    """A money object's (currency, value) per PayPal's amount rules; raises PayPalError."""
    return _money(node, field, currency)


def _money(node: Any, field: str, currency: str | None = None) -> tuple[str, Decimal]:
    """A money object's (currency, amount), checked for syntax, currency and decimals."""
    if not isinstance(node, dict):
        raise PayPalError(400, "MISSING_REQUIRED_PARAMETER", field, "A money object is required.")
    code, value = node.get("currency_code"), node.get("value")
    if not isinstance(code, str) or not isinstance(value, str):
        raise PayPalError(
            400, "MISSING_REQUIRED_PARAMETER", field, "currency_code and value are required."
        )
    if not _VALUE.match(value) or len(value) > 32:
        raise PayPalError(400, "INVALID_PARAMETER_SYNTAX", f"{field}/value", "Invalid amount.")
    if code not in PAYPAL_CURRENCIES:
        raise PayPalError(
            422, "INVALID_CURRENCY_CODE", f"{field}/currency_code", "Currency not supported."
        )
    if currency is not None and code != currency:
        raise PayPalError(
            422, "MULTI_CURRENCY_ORDER", f"{field}/currency_code", "Currencies must match."
        )
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise PayPalError(400, "INVALID_PARAMETER_SYNTAX", f"{field}/value", "Invalid.") from None
    places = paypal_decimals(code)
    if "." in value and len(value.split(".", 1)[1]) > places:
        raise PayPalError(
            422,
            "DECIMAL_PRECISION",
            f"{field}/value",
            f"{code} supports {places} decimal places.",
        )
    if amount < 0:
        raise PayPalError(422, "CANNOT_BE_NEGATIVE", f"{field}/value", "Must be >= 0.")
    return code, amount


def _check_unit(unit: Any, index: int) -> None:
    where = f"/purchase_units/{index}"
    if not isinstance(unit, dict):
        raise PayPalError(400, "INVALID_PARAMETER_SYNTAX", where, "Must be an object.")
    currency, total = _money(unit.get("amount"), f"{where}/amount")
    if total <= 0:
        raise PayPalError(
            422, "CANNOT_BE_ZERO_OR_NEGATIVE", f"{where}/amount/value", "Must be greater than 0."
        )
    breakdown = unit["amount"].get("breakdown") or {}
    parts = {
        name: _money(breakdown[name], f"{where}/amount/breakdown/{name}", currency)[1]
        for name in breakdown
    }
    items = unit.get("items") or []
    if items and "item_total" not in parts:
        raise PayPalError(
            422, "ITEM_TOTAL_REQUIRED", f"{where}/amount/breakdown/item_total", "Required."
        )
    item_sum, tax_sum, any_tax = Decimal(0), Decimal(0), False
    for number, item in enumerate(items):
        at = f"{where}/items/{number}"
        if not isinstance(item, dict) or not item.get("name"):
            raise PayPalError(400, "MISSING_REQUIRED_PARAMETER", f"{at}/name", "Required.")
        quantity = item.get("quantity")
        if not isinstance(quantity, str) or not _QUANTITY.match(quantity):
            raise PayPalError(400, "INVALID_PARAMETER_SYNTAX", f"{at}/quantity", "Invalid.")
        item_sum += _money(item.get("unit_amount"), f"{at}/unit_amount", currency)[1] * int(
            quantity
        )
        if "tax" in item:
            any_tax = True
            tax_sum += _money(item["tax"], f"{at}/tax", currency)[1] * int(quantity)
    if items and parts["item_total"] != item_sum:
        raise PayPalError(
            422,
            "ITEM_TOTAL_MISMATCH",
            f"{where}/amount/breakdown/item_total",
            "Should equal sum of (unit_amount * quantity) across all items.",
        )
    if any_tax and parts.get("tax_total") != tax_sum:
        raise PayPalError(
            422,
            "TAX_TOTAL_MISMATCH",
            f"{where}/amount/breakdown/tax_total",
            "Should equal sum of (tax * quantity) across all items.",
        )
    if parts:
        added = sum(
            (parts.get(name, Decimal(0)) for name in ("item_total", "tax_total", "shipping")),
            Decimal(0),
        )
        added += parts.get("handling", Decimal(0)) + parts.get("insurance", Decimal(0))
        added -= parts.get("shipping_discount", Decimal(0)) + parts.get("discount", Decimal(0))
        if added != total:
            raise PayPalError(
                422,
                "AMOUNT_MISMATCH",
                f"{where}/amount/value",
                "Should equal item_total + tax_total + shipping + handling + insurance - "
                "shipping_discount - discount.",
            )


def check_order_units(body: dict[str, Any]) -> None:
    """Validate an order's intent and purchase units (amounts, breakdown, items); raises
    PayPalError. An order paid by a vault id needs nothing more."""
    intent = body.get("intent")
    if intent is None:
        raise PayPalError(400, "MISSING_REQUIRED_PARAMETER", "/intent", "Required.")
    if intent not in ("CAPTURE", "AUTHORIZE"):
        raise PayPalError(400, "INVALID_PARAMETER_VALUE", "/intent", "CAPTURE or AUTHORIZE.")
    units = body.get("purchase_units")
    if not isinstance(units, list):
        raise PayPalError(400, "MISSING_REQUIRED_PARAMETER", "/purchase_units", "Required.")
    if not units:
        raise PayPalError(400, "INVALID_ARRAY_MIN_ITEMS", "/purchase_units", "At least 1.")
    if len(units) > 10:
        raise PayPalError(400, "INVALID_ARRAY_MAX_ITEMS", "/purchase_units", "At most 10.")
    for index, unit in enumerate(units):
        _check_unit(unit, index)


def check_order(body: dict[str, Any]) -> tuple[str, str]:
    """Validate an order request; returns its (return_url, cancel_url) or raises PayPalError.

    The sandbox needs somewhere to send the payer back, so a return URL (in
    ``payment_source.paypal.experience_context`` or ``application_context``) is required here.
    """
    check_order_units(body)
    source = body.get("payment_source") or {}
    context = (source.get("paypal") or {}).get("experience_context") or body.get(
        "application_context"
    )
    context = context if isinstance(context, dict) else {}
    return_url, cancel_url = context.get("return_url"), context.get("cancel_url")
    if not isinstance(return_url, str) or not return_url:
        raise PayPalError(
            400,
            "MISSING_REQUIRED_PARAMETER",
            "/payment_source/paypal/experience_context/return_url",
            "The sandbox needs a return_url to send the payer back to.",
        )
    return return_url, cancel_url if isinstance(cancel_url, str) and cancel_url else return_url


def check_verify_request(body: Any) -> None:
    """Check a verify-webhook-signature request against its schema; raises PayPalError."""
    if not isinstance(body, dict):
        raise PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Body must be an object.")
    rules: dict[str, tuple[int, re.Pattern[str] | None]] = {
        "auth_algo": (100, _ALNUM),
        "cert_url": (500, None),
        "transmission_id": (50, _TRANSMISSION),
        "transmission_sig": (500, _TRANSMISSION),
        "transmission_time": (100, None),
        "webhook_id": (50, _ALNUM),
    }
    for name, (limit, pattern) in rules.items():
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise PayPalError(400, "MISSING_REQUIRED_PARAMETER", f"/{name}", "Required.")
        if len(value) > limit:
            raise PayPalError(400, "INVALID_STRING_LENGTH", f"/{name}", f"At most {limit}.")
        if pattern is not None and not pattern.match(value):
            raise PayPalError(400, "INVALID_PARAMETER_SYNTAX", f"/{name}", "Invalid format.")
    if not isinstance(body.get("webhook_event"), dict):
        raise PayPalError(400, "MISSING_REQUIRED_PARAMETER", "/webhook_event", "Required.")
