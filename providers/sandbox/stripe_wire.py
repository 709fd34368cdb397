"""Stripe wire details for the sandbox: form decoding, parameter checks, ``checkout.session``.

Deliberately independent of the adapter's encoder (:mod:`providers.stripe.transformers`), so the
adapter's requests are checked by a second reading of Stripe's rules, not by its own.
"""

from __future__ import annotations

import re
import secrets
import string
from typing import Any
from urllib.parse import parse_qsl

from gateway.domain.money import is_active_currency
from providers.sandbox.state import SandboxSession
from providers.stripe.transformers import STRIPE_LOCALES

__all__ = [
    "StripeError",
    "create_object",
    "decode_form",
    "payment_intent_object",
    "session_object",
    "token",
    "validate_params",
]

_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")

#: The top-level create parameters of the pinned API version (anything else is unknown).
_PARAM_NAMES = """adaptive_pricing after_expiration allow_promotion_codes
    allowed_payment_method_types automatic_tax billing_address_collection branding_settings
    cancel_url client_reference_id consent_collection currency custom_fields custom_text
    customer customer_account customer_creation customer_email customer_update discounts
    excluded_payment_method_types expand expires_at integration_identifier invoice_creation
    line_items locale managed_payments metadata mode name_collection optional_items
    origin_context payment_intent_data payment_method_collection payment_method_configuration
    payment_method_data payment_method_options permissions phone_number_collection
    redirect_on_completion return_url saved_payment_method_options setup_intent_data
    shipping_address_collection shipping_options submit_type subscription_data success_url
    tax_id_collection ui_mode wallet_options"""
_KNOWN_PARAMS = frozenset(_PARAM_NAMES.split())


class StripeError(Exception):
    """An answer in Stripe's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type_, "message": message}
        if code:
            self.body["code"] = code
        if param:
            self.body["param"] = param
        #: further error fields (a decline's ``decline_code``, ``charge``, ``payment_intent``)
        self.body.update(extra or {})


def token(prefix: str, length: int = 24) -> str:
    """A random Stripe-like identifier (`cs_test_...`, `evt_...`)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def decode_form(body: str) -> dict[str, Any]:
    """Bracketed form keys into nested dicts; all-digit keys in order become lists."""
    tree: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        match = _KEY.match(key)
        if match is None:
            raise StripeError(400, f"Invalid parameter name: {key}", code="parameter_invalid")
        node = tree
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        last = parts[-1] if parts[-1] else str(len(node))
        node[last] = value
    result: dict[str, Any] = _lists(tree)
    return result


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _lists(v) for k, v in node.items()}
    if out and all(k.isdigit() for k in out):
        order = sorted(int(k) for k in out)
        if order == list(range(len(order))):
            return [out[str(i)] for i in order]
    return out


def _int(value: Any, param: str, low: int = 0) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value) or int(value) < low:
        raise StripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        )
    return int(value)


def _require(mapping: dict[str, Any], key: str, param: str) -> Any:
    if key not in mapping or mapping[key] in ("", None):
        raise StripeError(
            400, f"Missing required param: {param}.", code="parameter_missing", param=param
        )
    return mapping[key]


def _amounts(params: dict[str, Any]) -> tuple[str, int, int]:
    """Validate line items and shipping: (currency, subtotal, shipping)."""
    items = params.get("line_items")
    if not isinstance(items, list) or not items:
        raise StripeError(
            400, "Missing required param: line_items.", code="parameter_missing", param="line_items"
        )
    currencies: set[str] = set()
    subtotal = 0
    for i, item in enumerate(items):
        where = f"line_items[{i}]"
        if not isinstance(item, dict):
            raise StripeError(400, "Invalid object", code="parameter_invalid", param=where)
        if "price" in item:
            raise StripeError(
                400,
                f"No such price: '{item['price']}'",
                code="resource_missing",
                param=f"{where}[price]",
            )
        data = _require(item, "price_data", f"{where}[price_data]")
        if not isinstance(data, dict):
            raise StripeError(400, "Invalid object", param=f"{where}[price_data]")
        currency = _require(data, "currency", f"{where}[price_data][currency]")
        product = _require(data, "product_data", f"{where}[price_data][product_data]")
        _require(
            product if isinstance(product, dict) else {},
            "name",
            f"{where}[price_data][product_data][name]",
        )
        unit = _int(
            _require(data, "unit_amount", f"{where}[price_data][unit_amount]"),
            f"{where}[price_data][unit_amount]",
        )
        quantity = _int(_require(item, "quantity", f"{where}[quantity]"), f"{where}[quantity]", 1)
        currencies.add(str(currency))
        subtotal += unit * quantity
    shipping = 0
    for i, option in enumerate(params.get("shipping_options") or []):
        rate = option.get("shipping_rate_data") if isinstance(option, dict) else None
        fixed = rate.get("fixed_amount") if isinstance(rate, dict) else None
        if not isinstance(fixed, dict):
            raise StripeError(
                400,
                "Only shipping_rate_data with fixed_amount is emulated",
                param=f"shipping_options[{i}]",
            )
        if i == 0:
            shipping = _int(fixed.get("amount"), f"shipping_options[{i}][fixed_amount][amount]")
        currencies.add(str(fixed.get("currency")))
    if len(currencies) != 1:
        raise StripeError(
            400,
            "All prices must use the same currency.",
            code="parameter_invalid",
            param="line_items",
        )
    currency = currencies.pop()
    if not re.fullmatch(r"[a-z]{3}", currency) or not is_active_currency(currency.upper()):
        raise StripeError(400, f"Invalid currency: {currency}.", param="currency")
    return currency, subtotal, shipping


def validate_params(params: dict[str, Any], now: int) -> None:
    unknown = sorted(set(params) - _KNOWN_PARAMS)
    if unknown:
        raise StripeError(
            400,
            f"Received unknown parameter: {unknown[0]}",
            code="parameter_unknown",
            param=unknown[0],
        )
    mode = params.get("mode", "payment")
    if mode not in ("payment", "setup"):
        raise StripeError(400, "The sandbox emulates mode=payment and mode=setup.", param="mode")
    if mode == "setup":
        for name in ("line_items", "payment_intent_data", "shipping_options"):
            if name in params:
                raise StripeError(400, f"You cannot pass `{name}` in `setup` mode.", param=name)
        _require(params, "currency", "currency")
    elif "setup_intent_data" in params:
        raise StripeError(
            400, "You can only pass `setup_intent_data` in `setup` mode.", param="setup_intent_data"
        )
    if params.get("ui_mode", "hosted_page") != "hosted_page":
        raise StripeError(400, "The sandbox emulates ui_mode=hosted_page only.", param="ui_mode")
    _require(params, "success_url", "success_url")
    locale = params.get("locale")
    if locale is not None and locale not in STRIPE_LOCALES:
        raise StripeError(400, f"Invalid locale: {locale}", param="locale")
    if "expires_at" in params:
        expires_at = _int(params["expires_at"], "expires_at")
        if not 1800 <= expires_at - now <= 86_400:
            raise StripeError(
                400,
                "The `expires_at` timestamp must be between 30 minutes and "
                "24 hours from Checkout Session creation.",
                param="expires_at",
            )
    reference = params.get("client_reference_id")
    if isinstance(reference, str) and len(reference) > 200:
        raise StripeError(400, "client_reference_id is too long", param="client_reference_id")
    for key, value in (params.get("metadata") or {}).items():
        if len(key) > 40 or not isinstance(value, str) or len(value) > 500:
            raise StripeError(400, "Invalid metadata", param=f"metadata[{key}]")


def session_object(session: SandboxSession) -> dict[str, Any]:
    """The ``checkout.session`` object as it is now."""
    obj: dict[str, Any] = dict(session.extra["object"])
    unpaid = "no_payment_required" if obj.get("mode") == "setup" else "unpaid"
    if session.status == "open":
        obj["status"], obj["payment_status"] = "open", unpaid
    elif session.status == "paid" and obj.get("mode") == "setup":
        obj["status"], obj["payment_status"] = "complete", "no_payment_required"
        obj["setup_intent"] = session.extra.setdefault("setup_intent", token("seti_"))
        obj["customer"] = session.extra.setdefault("customer", token("cus_"))
    elif session.status == "paid":
        intent_data = (session.raw_request or {}).get("payment_intent_data") or {}
        # an authorization for a manual capture is not money in the account yet
        manual = intent_data.get("capture_method") == "manual"
        obj["status"], obj["payment_status"] = "complete", "unpaid" if manual else "paid"
        obj["payment_intent"] = session.extra.setdefault("payment_intent", token("pi_"))
        if (session.raw_request or {}).get("customer_creation") == "always":
            obj["customer"] = session.extra.setdefault("customer", token("cus_"))
    elif session.status == "declined":
        obj["status"], obj["payment_status"] = "complete", unpaid
        obj["payment_intent"] = session.extra.setdefault("payment_intent", token("pi_"))
    else:  # cancelled or expired: Stripe has no "cancelled", the session is expired
        obj["status"], obj["payment_status"], obj["url"] = "expired", unpaid, None
    return obj


def payment_intent_object(session: SandboxSession) -> dict[str, Any]:
    """The ``payment_intent`` of a paid or declined session (a saved method when asked for)."""
    params = session.raw_request or {}
    intent_data = params.get("payment_intent_data") or {}
    usage = intent_data.get("setup_future_usage")
    paid = session.status == "paid"
    return {
        "id": session.extra["payment_intent"],
        "object": "payment_intent",
        "amount": session.amount,
        "currency": session.currency,
        "status": "succeeded" if paid else "requires_payment_method",
        "customer": session.extra.get("customer"),
        "payment_method": session.extra.setdefault("payment_method", token("pm_"))
        if paid
        else None,
        "setup_future_usage": usage,
        "metadata": intent_data.get("metadata") or {},
        "livemode": False,
    }


def create_object(session_id: str, params: dict[str, Any], url: str, now: int) -> dict[str, Any]:
    setup = params.get("mode") == "setup"
    if setup:
        currency, subtotal, shipping = str(params["currency"]), 0, 0
        if not re.fullmatch(r"[a-z]{3}", currency) or not is_active_currency(currency.upper()):
            raise StripeError(400, f"Invalid currency: {currency}.", param="currency")
    else:
        currency, subtotal, shipping = _amounts(params)
    allowed = params.get("allowed_payment_method_types") or ["card"]
    option = (params.get("shipping_options") or [None])[0]
    rate = token("shr_") if option else None
    return {
        "id": session_id,
        "object": "checkout.session",
        "adaptive_pricing": {"enabled": False},
        "after_expiration": None,
        "allow_promotion_codes": None,
        "allowed_payment_method_types": allowed,
        "amount_subtotal": None if setup else subtotal,
        "amount_total": None if setup else subtotal + shipping,
        "automatic_tax": {"enabled": False, "liability": None, "status": None, "provider": None},
        "billing_address_collection": None,
        "cancel_url": params.get("cancel_url"),
        "client_reference_id": params.get("client_reference_id"),
        "client_secret": None,
        "collected_information": None,
        "consent": None,
        "consent_collection": None,
        "created": now,
        "currency": currency,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": None,
        "customer_creation": "if_required",
        "customer_details": None,
        "customer_email": params.get("customer_email"),
        "discounts": [],
        "excluded_payment_method_types": [],
        "expires_at": int(params.get("expires_at") or now + 86_400),
        "invoice": None,
        "invoice_creation": {"enabled": False, "invoice_data": {}},
        "livemode": False,
        "locale": params.get("locale"),
        "metadata": params.get("metadata") or {},
        "mode": "setup" if setup else "payment",
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": "if_required",
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": allowed,
        "payment_status": "no_payment_required" if setup else "unpaid",
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": {
            "amount_subtotal": shipping,
            "amount_tax": 0,
            "amount_total": shipping,
            "shipping_rate": rate,
        }
        if rate
        else None,
        "shipping_options": [{"shipping_amount": shipping, "shipping_rate": rate}] if rate else [],
        "status": "open",
        "submit_type": None,
        "subscription": None,
        "success_url": params.get("success_url"),
        "total_details": {"amount_discount": 0, "amount_shipping": shipping, "amount_tax": 0},
        "ui_mode": "hosted_page",
        "url": url,
        "wallet_options": None,
    }
