"""Adyen wire types and conversions: the ``POST /v71/sessions`` body, amounts in Adyen's own
minor units, metadata within Adyen's limits, and standard-notification HMAC signatures.

Pure functions only: no I/O, so the sandbox emulation and the tests use the same conversions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.domain.money import exponent, from_minor, to_minor
from providers.wire import amount_places

if TYPE_CHECKING:
    from gateway.domain.models import Address, CheckoutRequest
    from providers.base import CreateSessionInput

__all__ = [
    "ADYEN_EXPONENT_OVERRIDES",
    "ADYEN_MAX_MINOR",
    "ADYEN_PAYMENT_METHODS",
    "CAPTURE_METHOD_KEY",
    "IDEMPOTENCY_KEY_MAX",
    "IDEMPOTENCY_REFUSED",
    "METADATA_KEY_MAX",
    "METADATA_MAX_PAIRS",
    "METADATA_VALUE_MAX",
    "RECURRING_MODEL",
    "SESSION_ID_KEY",
    "adyen_exponent",
    "amount_problem",
    "build_metadata",
    "build_session_request",
    "from_adyen_minor",
    "gateway_metadata",
    "hmac_signature",
    "line_items",
    "shopper_locale",
    "shopper_reference",
    "signing_string",
    "to_adyen_minor",
    "verify_hmac",
]

#: Where Adyen's decimals table differs from ISO 4217 (docs.adyen.com currency codes).
ADYEN_EXPONENT_OVERRIDES: dict[str, int] = {"CLP": 2, "CVE": 0, "ISK": 2}

#: ``amount.value`` is an int64 of minor units (``specs/adyen_sessions.json``). Amounts the API
#: accepts (below 10**15 major units, at most 3 decimals) never come near it.
ADYEN_MAX_MINOR = 2**63 - 1

#: Gateway payment method -> Adyen payment method type (``allowedPaymentMethods``).
ADYEN_PAYMENT_METHODS: dict[str, str] = {
    "card": "scheme",
    "ideal": "ideal",
    "klarna": "klarna",
    "sepa_debit": "sepadirectdebit",
    "apple_pay": "applepay",
    "google_pay": "googlepay",
}

IDEMPOTENCY_KEY_MAX = 64
#: Adyen's errorCode for a reused Idempotency-Key: in progress, or other parameters
IDEMPOTENCY_REFUSED = "704"
METADATA_MAX_PAIRS = 20
METADATA_KEY_MAX = 20
METADATA_VALUE_MAX = 80
#: metadata keys the adapter reads back from notifications (never taken from the merchant's
#: ``additionalInformation``: a merchant value must not pose as the session or its mode)
SESSION_ID_KEY = "gatewaySessionId"
CAPTURE_METHOD_KEY = "captureMethod"
SESSION_TYPE_KEY = "sessionType"
#: the ``recurringProcessingModel`` of every token the gateway saves for customer-absent
#: charges (first_in_series and setup) and of the charges themselves: Adyen wants the model a
#: token was created with on the payments made with it
RECURRING_MODEL = "Subscription"

#: Fields of a NotificationRequestItem signed by its ``hmacSignature``, in signing order.
_SIGNED_FIELDS = (
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
    "amount.value",
    "amount.currency",
    "eventCode",
    "success",
)


def adyen_exponent(currency: str) -> int:
    """The number of decimals Adyen uses for ``currency`` (ISO 4217 unless overridden)."""
    return ADYEN_EXPONENT_OVERRIDES.get(currency, exponent(currency))


def to_adyen_minor(amount: Decimal, currency: str) -> int:
    """A major-unit amount in Adyen's minor units (1000 CLP -> 100000); refuses to round."""
    return to_minor(amount, adyen_exponent(currency))


def from_adyen_minor(value: int, currency: str) -> Decimal:
    """Adyen minor units back to an exact major-unit ``Decimal``."""
    return from_minor(value, adyen_exponent(currency))


def amount_problem(request: CheckoutRequest) -> str | None:
    """Why the request's amounts cannot be expressed in Adyen's decimals, or None.

    Only currencies where Adyen uses *fewer* decimals than ISO 4217 (CVE) can fail: an
    amount with a fraction there would have to be rounded, which the gateway never does. The
    int64 bound of ``amount.value`` is checked too, though no amount the API accepts reaches it.
    """
    places = adyen_exponent(request.currency)
    if amount_places(request) > places:
        return f"Adyen accepts {request.currency} amounts with at most {places} decimal places"
    if to_minor(request.amount.total, places) > ADYEN_MAX_MINOR:
        return f"Adyen accepts {request.currency} amounts up to {ADYEN_MAX_MINOR} minor units"
    return None


def shopper_locale(locale: str | None) -> str | None:
    """The gateway locale (``en_AU``) as Adyen's language tag (``en-AU``)."""
    return locale.replace("_", "-") if locale else None


def gateway_metadata(session_id: str, merchant_id: str, request: CheckoutRequest) -> dict[str, str]:
    """Payment metadata within Adyen's limits (20 pairs, keys <= 20, values <= 80 chars).

    The gateway's identifiers come first and are never truncated (a clipped identifier would
    point at something else): one that does not fit is left out. ``captureMethod`` (manual
    only) and ``sessionType`` (setup only) follow: notifications echo them, so the adapter knows
    an AUTHORISATION holds the money rather than takes it. The merchant's
    ``additionalInformation`` fills the remaining pairs in order; keys that are too long or
    that clash with the gateway's are skipped, values longer than 80 characters are clipped.
    """
    metadata: dict[str, str] = {}
    identifiers = (
        (SESSION_ID_KEY, session_id),
        ("orderReference", request.orderReference),
        ("merchantId", merchant_id),
    )
    for key, value in identifiers:
        if len(value) <= METADATA_VALUE_MAX:
            metadata[key] = value
    if request.captureMethod == "manual":
        metadata[CAPTURE_METHOD_KEY] = "manual"
    if request.sessionType == "setup":
        metadata[SESSION_TYPE_KEY] = "setup"
    reserved = {key for key, _ in identifiers} | {CAPTURE_METHOD_KEY, SESSION_TYPE_KEY}
    for key, value in (request.additionalInformation or {}).items():
        if len(metadata) >= METADATA_MAX_PAIRS:
            break
        if len(key) > METADATA_KEY_MAX or key in reserved:
            continue
        metadata[key] = value[:METADATA_VALUE_MAX]
    return metadata


def build_metadata(data: CreateSessionInput) -> dict[str, str]:
    """:func:`gateway_metadata` of a hosted checkout session."""
    return gateway_metadata(data.session_id, data.merchant_id, data.request)


def shopper_reference(request: CheckoutRequest, session_id: str) -> str:
    """The ``shopperReference`` a saved method is kept under: the merchant's own customer
    reference, or one derived from the session (never personal data)."""
    return request.customerReference or f"gw-{session_id}"


def _line_item(item_id: str, description: str, quantity: int, net: int, tax: int) -> dict[str, Any]:
    return {
        "id": item_id,
        "description": description,
        "quantity": quantity,
        "amountExcludingTax": net,
        "taxAmount": tax,
        "amountIncludingTax": net + tax,
    }


def line_items(request: CheckoutRequest) -> list[dict[str, Any]]:
    """Order lines whose ``amountIncludingTax * quantity`` add up to the session amount.

    The gateway's order carries one tax amount for the whole order, so items are sent net of
    tax and shipping and tax travel as lines of their own.
    """
    cur = request.currency
    lines: list[dict[str, Any]] = []
    for index, item in enumerate(request.lines, start=1):
        line = _line_item(
            item.sku or f"item-{index}",
            item.name,
            item.quantity,
            to_adyen_minor(item.unitPrice, cur),
            0,
        )
        if item.sku:
            line["sku"] = item.sku
        lines.append(line)
    if request.amount.shipping:
        lines.append(
            _line_item("shipping", "Shipping", 1, to_adyen_minor(request.amount.shipping, cur), 0)
        )
    if request.amount.tax:
        lines.append(_line_item("tax", "Tax", 1, 0, to_adyen_minor(request.amount.tax, cur)))
    return lines


def _address(address: Address) -> dict[str, str] | None:
    """An Adyen address, or None when Adyen's required city/postal code are unknown."""
    if not address.city or not address.postalCode:
        return None
    street = address.line1 if not address.line2 else f"{address.line1}, {address.line2}"
    result = {
        "street": street,
        "houseNumberOrName": "",
        "city": address.city,
        "postalCode": address.postalCode,
        "country": address.country,
    }
    if address.state:
        result["stateOrProvince"] = address.state
    return result


def _expires_at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def build_session_request(data: CreateSessionInput, merchant_account: str) -> dict[str, Any]:
    """The ``POST /v71/sessions`` body for a hosted checkout of ``data``.

    The shopper returns to ``returnUrl`` whatever the outcome; Adyen appends ``sessionId`` and
    ``sessionResult`` to it. It is the gateway's return page (``data.return_url``), which sends
    the shopper on to the merchant's success or failure URL by the session's status; without
    one, the merchant's success URL.
    """
    request = data.request
    body: dict[str, Any] = {
        "merchantAccount": merchant_account,
        "mode": "hosted",
        "amount": {
            "value": to_adyen_minor(request.amount.total, request.currency),
            "currency": request.currency,
        },
        "reference": request.orderReference,
        "returnUrl": data.return_url or request.return_urls.success,
        "expiresAt": _expires_at(data.expires_at),
        "channel": "Web",
        "shopperInteraction": "Ecommerce",
        "allowedPaymentMethods": [ADYEN_PAYMENT_METHODS[request.paymentMethod]],
        "metadata": build_metadata(data),
    }
    lines = line_items(request)
    if lines:  # a setup session may have none
        body["lineItems"] = lines
    if request.saves_payment_method:
        # a token kept under shopperReference: for customer-absent charges (Subscription:
        # first_in_series, and setup, a zero-value authorisation that only saves the method)
        # or for the shopper's next visits (CardOnFile, with the shopper's consent)
        mandate = request.sessionType in ("first_in_series", "setup")
        body["shopperReference"] = shopper_reference(request, data.session_id)
        body["recurringProcessingModel"] = RECURRING_MODEL if mandate else "CardOnFile"
        body["storePaymentMethodMode"] = "enabled" if mandate else "askForConsent"
    if request.captureMethod == "manual":
        # captureDelayHours schedules an *automatic* capture; manual capture is the
        # AdditionalDataCommon flag.
        body["additionalData"] = {"manualCapture": "true"}
    country = request.billing_country
    if country:
        body["countryCode"] = country
    locale = shopper_locale(request.locale)
    if locale:
        body["shopperLocale"] = locale
    customer = request.customer
    if customer is not None:
        if customer.email:
            body["shopperEmail"] = str(customer.email)
        if customer.firstName and customer.lastName:
            body["shopperName"] = {
                "firstName": customer.firstName[:80],
                "lastName": customer.lastName[:80],
            }
        if customer.phone:
            body["telephoneNumber"] = customer.phone
        for field, address in (
            ("billingAddress", customer.billingAddress),
            ("deliveryAddress", customer.shippingAddress),
        ):
            converted = _address(address) if address is not None else None
            if converted is not None:
                body[field] = converted
    return body


def _field(item: Mapping[str, Any], dotted: str) -> str:
    value: Any = item
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def signing_string(item: Mapping[str, Any]) -> str:
    """The ':'-joined string an item's ``hmacSignature`` covers (missing fields are empty)."""
    return ":".join(_field(item, name) for name in _SIGNED_FIELDS)


def hmac_signature(item: Mapping[str, Any], hex_key: str) -> str:
    """Base64 HMAC-SHA256 of :func:`signing_string` with the hex-decoded key."""
    key = binascii.a2b_hex(hex_key)
    digest = hmac.new(key, signing_string(item).encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_hmac(item: Mapping[str, Any], hex_key: str) -> bool:
    """True when the item carries a valid ``additionalData.hmacSignature`` (constant time)."""
    additional = item.get("additionalData")
    given = additional.get("hmacSignature") if isinstance(additional, Mapping) else None
    if not isinstance(given, str) or not given:
        return False
    expected = hmac_signature(item, hex_key)
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))
