"""Stripe wire format: Checkout Session create parameters, form encoding, amounts, locales.

Everything here is pure (no I/O), so the conversions can be tested exactly. The API version is
pinned to the one ``tests/specs/stripe_checkout_sessions.json`` describes (``2026-09-30.endive``):
in it ``payment_method_types`` is gone from create, so the payment method is expressed through
``allowed_payment_method_types``, and the hosted UI mode is called ``hosted_page``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import quote_plus

from gateway.domain.money import MONEY_CONTEXT, format_major, from_minor, scale_of, to_minor
from gateway.domain.money import exponent as iso_exponent
from providers.base import CreateSessionInput

__all__ = [
    "IDEMPOTENCY_KEY_MAX",
    "MAX_EXPIRY",
    "MIN_EXPIRY",
    "STRIPE_API_VERSION",
    "STRIPE_LOCALES",
    "STRIPE_MAX_MINOR",
    "STRIPE_PAYMENT_METHODS",
    "amount_problem",
    "build_create_params",
    "clamp_expiry",
    "encode_form",
    "from_stripe_minor",
    "stripe_exponent",
    "stripe_locale",
    "to_stripe_minor",
]

STRIPE_API_VERSION = "2026-09-30.endive"
IDEMPOTENCY_KEY_MAX = 255

#: Stripe accepts ``expires_at`` 30 min .. 24 h after creation; the margins absorb clock skew
#: between us and Stripe and the request's time in flight.
MIN_EXPIRY = timedelta(minutes=30)
MAX_EXPIRY = timedelta(hours=24)
_SKEW = timedelta(minutes=2)

#: Gateway payment method -> ``allowed_payment_method_types``. Apple Pay and Google Pay are
#: wallets of the ``card`` method at Stripe (shown on the hosted page when available).
STRIPE_PAYMENT_METHODS: dict[str, str] = {
    "card": "card",
    "apple_pay": "card",
    "google_pay": "card",
    "klarna": "klarna",
    "ideal": "ideal",
    "sepa_debit": "sepa_debit",
}

#: Currencies a method is limited to at Stripe; methods not listed take any currency.
METHOD_CURRENCIES: dict[str, frozenset[str]] = {
    "ideal": frozenset({"EUR"}),
    "sepa_debit": frozenset({"EUR"}),
    "klarna": frozenset(
        {"AUD", "CAD", "CHF", "CZK", "DKK", "EUR", "GBP", "NOK", "NZD", "PLN", "RON", "SEK", "USD"}
    ),
}

#: Methods that can only be captured immediately.
AUTOMATIC_CAPTURE_ONLY = frozenset({"ideal", "sepa_debit"})

#: Where Stripe's decimal table differs from ISO 4217 (docs.stripe.com/currencies): ISK is two
#: decimal in the API (amounts multiples of 100), MGA is zero-decimal.
_EXPONENT_OVERRIDES = {"ISK": 2, "MGA": 0}
#: Three-decimal currencies: Stripe requires the last minor digit to be 0.
_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})

#: The request ``locale`` enum of the pinned spec.
_LOCALE_ENUM = (
    "auto bg cs da de el en en-GB es es-419 et fi fil fr fr-CA hr hu id it ja ko lt lv ms mt nb "
    "nl pl pt pt-BR ro ru sk sl sv th tr vi zh zh-HK zh-TW"
)
STRIPE_LOCALES = frozenset(_LOCALE_ENUM.split())
_LATIN_AMERICA_TEXT = "AR BO CL CO CR CU DO EC GT HN MX NI PA PE PR PY SV UY VE"
_LATIN_AMERICA = frozenset(_LATIN_AMERICA_TEXT.split())
_LANGUAGE_ALIASES = {"no": "nb", "nn": "nb", "tl": "fil"}


def stripe_exponent(currency: str) -> int:
    """Stripe's minor-unit exponent of ``currency`` (ISO 4217 with Stripe's exceptions)."""
    code = currency.upper()
    return _EXPONENT_OVERRIDES.get(code, iso_exponent(code))


def from_stripe_minor(value: Any, currency: Any) -> tuple[Decimal, str] | None:
    """Stripe's ``amount``/``currency`` pair (integer minor units, lower-case code) as the exact
    major-unit amount and upper-case code; None when either is missing or not understood (an
    amount below zero included: no Stripe object this gateway reads has one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not isinstance(currency, str):
        return None
    if value < 0:
        return None
    try:
        return from_minor(value, stripe_exponent(currency)), currency.upper()
    except ValueError:
        return None


def to_stripe_minor(amount: Decimal, currency: str) -> int:
    """A major-unit amount as Stripe's integer minor units; never rounds."""
    return to_minor(amount, stripe_exponent(currency))


#: "The amount value supports up to eight digits (e.g., a value of 99999999 for a USD charge of
#: $999,999.99)" (``specs/stripe_payment_intents.json``, ``amount``): the session's total, and so
#: every line of it.
STRIPE_MAX_MINOR = 99_999_999


def amount_problem(currency: str, amounts: list[Decimal]) -> str | None:
    """Why these amounts cannot be sent to Stripe exactly, or None (the largest must be the
    total: every other amount is a part of it)."""
    places = stripe_exponent(currency)
    if any(scale_of(value) > places for value in amounts):
        return f"Stripe accepts {currency} amounts with at most {places} decimal places"
    if to_minor(max(amounts), places) > STRIPE_MAX_MINOR:
        largest = format_major(Decimal(STRIPE_MAX_MINOR).scaleb(-places, MONEY_CONTEXT), places)
        return f"Stripe accepts {currency} amounts up to {largest} ({STRIPE_MAX_MINOR} minor units)"
    if currency.upper() in _THREE_DECIMAL and any(
        to_minor(value, places) % 10 for value in amounts
    ):
        return f"Stripe requires {currency} amounts in multiples of 0.010"
    return None


def stripe_locale(locale: str | None) -> str:
    """A gateway locale (``en_AU``, ``pt-BR``) as Stripe's locale enum; ``auto`` if unknown."""
    if not locale:
        return "auto"
    language, _, region = locale.replace("_", "-").partition("-")
    language = _LANGUAGE_ALIASES.get(language.lower(), language.lower())
    region = region.upper()
    for candidate in (f"{language}-{region}" if region else "", language):
        if candidate in STRIPE_LOCALES:
            if language == "es" and region in _LATIN_AMERICA:
                return "es-419"
            if language == "zh" and region in {"HK", "MO"}:
                return "zh-HK"
            return candidate
    return "auto"


def clamp_expiry(expires_at: datetime, now: datetime) -> datetime:
    """``expires_at`` moved into Stripe's window, whole seconds, UTC."""
    low = now + MIN_EXPIRY + _SKEW
    high = now + MAX_EXPIRY - _SKEW
    clamped = min(max(expires_at, low), high)
    return clamped.astimezone(UTC).replace(microsecond=0)


def _line_item(name: str, unit_amount: int, quantity: int, currency: str) -> dict[str, Any]:
    return {
        "price_data": {
            "currency": currency,
            "unit_amount": unit_amount,
            "product_data": {"name": name[:5000]},
        },
        "quantity": quantity,
    }


#: Stripe's metadata limits: 50 keys, keys up to 40 and values up to 500 characters; the
#: gateway's own keys come first, room for one more is kept for ``gateway_saved_method``.
_METADATA_KEYS, _METADATA_KEY_LEN, _METADATA_VALUE_LEN = 50, 40, 500
_RESERVED = frozenset(
    {"gateway_session_id", "order_reference", "merchant_id", "gateway_saved_method"}
)


def _merchant_metadata(info: Mapping[str, str] | None, used: int) -> dict[str, str]:
    """The merchant's ``additionalInformation`` as Stripe metadata, within Stripe's limits:
    keys that are too long or would shadow the gateway's own are left out, values clipped."""
    out: dict[str, str] = {}
    room = _METADATA_KEYS - used - 1
    for key, value in (info or {}).items():
        if len(out) >= room:
            break
        if len(key) > _METADATA_KEY_LEN or key in _RESERVED:
            continue
        out[key] = value[:_METADATA_VALUE_LEN]
    return out


def build_create_params(data: CreateSessionInput, now: datetime) -> dict[str, Any]:
    """The ``POST /v1/checkout/sessions`` parameters (nested; see :func:`encode_form`).

    Raises ``ValueError`` when the amounts cannot be expressed exactly (check
    :func:`amount_problem` first) or when Stripe's total would differ from ``amount.total``.
    """
    request = data.request
    currency = request.currency.lower()

    def minor(amount: Decimal) -> int:
        return to_stripe_minor(amount, request.currency)

    items = [
        _line_item(item.name, minor(item.unitPrice), item.quantity, currency)
        for item in request.lines
    ]
    tax = minor(request.amount.tax)
    if tax:
        items.append(_line_item("Tax", tax, 1, currency))
    shipping = minor(request.amount.shipping)
    metadata = {
        "gateway_session_id": data.session_id,
        "order_reference": request.orderReference,
        "merchant_id": data.merchant_id,
    }
    metadata.update(_merchant_metadata(request.additionalInformation, len(metadata)))
    if request.sessionType == "setup":
        return _setup_params(data, metadata, now)
    params: dict[str, Any] = {
        "mode": "payment",
        "ui_mode": "hosted_page",
        "line_items": items,
        "client_reference_id": request.orderReference,
        "metadata": metadata,
        "payment_intent_data": {"metadata": dict(metadata)},
        "success_url": request.return_urls.success,
        "cancel_url": request.return_urls.failure,
        "expires_at": int(clamp_expiry(data.expires_at, now).timestamp()),
        "locale": stripe_locale(request.locale),
        "allowed_payment_method_types": [STRIPE_PAYMENT_METHODS[request.paymentMethod]],
    }
    if shipping or request.shipping is not None:
        label = (request.shipping.method or request.shipping.type) if request.shipping else None
        params["shipping_options"] = [
            {
                "shipping_rate_data": {
                    "display_name": (label or "Shipping")[:100],
                    "type": "fixed_amount",
                    "fixed_amount": {"amount": shipping, "currency": currency},
                }
            }
        ]
    if request.captureMethod == "manual":
        params["payment_intent_data"]["capture_method"] = "manual"
    if request.saves_payment_method:
        # first_in_series: a mandate for customer-absent charges; one_time: saved for later
        # customer-present use. A Stripe customer holds the saved method.
        usage = "off_session" if request.sessionType == "first_in_series" else "on_session"
        params["payment_intent_data"]["setup_future_usage"] = usage
        params["customer_creation"] = "always"
        metadata["gateway_saved_method"] = usage
        params["payment_intent_data"]["metadata"]["gateway_saved_method"] = usage
    if request.customer is not None and request.customer.email:
        params["customer_email"] = str(request.customer.email)
    total = sum(i["price_data"]["unit_amount"] * i["quantity"] for i in items) + shipping
    if total != minor(request.amount.total):
        raise ValueError("Stripe line items would not add up to amount.total")
    return params


def _setup_params(
    data: CreateSessionInput, metadata: dict[str, str], now: datetime
) -> dict[str, Any]:
    """``mode=setup``: the hosted page saves a method for customer-absent use and charges
    nothing (no line items; ``currency`` names the currency of the later charges)."""
    request = data.request
    if request.amount.total != 0:
        raise ValueError("a Stripe setup session charges nothing: amount.total must be 0")
    metadata["gateway_saved_method"] = "off_session"
    params: dict[str, Any] = {
        "mode": "setup",
        "ui_mode": "hosted_page",
        "currency": request.currency.lower(),
        "client_reference_id": request.orderReference,
        "metadata": metadata,
        "setup_intent_data": {"metadata": dict(metadata)},
        "customer_creation": "always",
        "success_url": request.return_urls.success,
        "cancel_url": request.return_urls.failure,
        "expires_at": int(clamp_expiry(data.expires_at, now).timestamp()),
        "locale": stripe_locale(request.locale),
        "allowed_payment_method_types": [STRIPE_PAYMENT_METHODS[request.paymentMethod]],
    }
    if request.customer is not None and request.customer.email:
        params["customer_email"] = str(request.customer.email)
    return params


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten(f"{prefix}[{key}]" if prefix else str(key), item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _flatten(f"{prefix}[{index}]", item)
    elif isinstance(value, bool):
        yield prefix, "true" if value else "false"
    elif isinstance(value, int | str):
        yield prefix, str(value)
    elif value is None:
        return
    else:  # floats and Decimals never reach Stripe: amounts are integer minor units
        raise TypeError(f"cannot form-encode {type(value).__name__} at {prefix}")


_FORM_SAFE = re.compile(r"[A-Za-z0-9_.\-~]*")


@lru_cache(maxsize=1024)
def _quote_key(key: str) -> str:
    return quote_plus(key)


def _quote_value(value: str) -> str:
    return value if _FORM_SAFE.fullmatch(value) else quote_plus(value)


def encode_form(params: Mapping[str, Any]) -> str:
    """Stripe's form encoding: nested keys in brackets, arrays indexed, booleans lowercase.

    The same as ``urllib.parse.urlencode`` of the flattened pairs; keys (a small, repeating set)
    are quoted once and values that need no quoting are passed through.
    """
    return "&".join(
        f"{_quote_key(key)}={_quote_value(value)}" for key, value in _flatten("", params)
    )
