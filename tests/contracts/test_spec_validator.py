"""The spec validator itself: it must accept the specs' own examples and catch real mistakes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from tests.contracts.spec_validator import (
    _normalise,
    find_operation,
    load_spec,
    stripe_form_to_dict,
    validate_body,
    validate_headers,
    validate_request,
)
from tests.contracts.strict_sandbox import StrictSandbox

FORM = "application/x-www-form-urlencoded"
STRIPE_HEADERS = {"Content-Type": FORM, "Authorization": "Bearer sk_test_x"}
JSON_HEADERS = {"Content-Type": "application/json"}
EXAMPLE_NOW = datetime.fromtimestamp(1_790_000_000 - 3600, UTC)


def stripe_example() -> str:
    body: str = load_spec("stripe")["operation"]["request"]["x-example-form-body"]
    return body


def test_form_decoding_nests_lists_and_coerces_by_schema() -> None:
    body = (
        "line_items%5B0%5D%5Bprice_data%5D%5Bunit_amount%5D=1999"
        "&line_items[0][quantity]=2&line_items[1][quantity]=1"
        "&metadata[order_id]=42&allow_promotion_codes=true&expand[]=line_items"
    )
    assert stripe_form_to_dict(body) == {
        "line_items": [{"price_data": {"unit_amount": 1999}, "quantity": 2}, {"quantity": 1}],
        "metadata": {"order_id": "42"},  # metadata values are strings in the schema
        "allow_promotion_codes": True,
        "expand": ["line_items"],
    }


def test_form_decoding_keeps_gapped_indexes_as_object_so_validation_fails() -> None:
    decoded = stripe_form_to_dict("line_items[1][quantity]=1")
    assert decoded == {"line_items": {"1": {"quantity": "1"}}}
    assert any("line_items" in p for p in validate_body("stripe", decoded))


def test_stripe_spec_example_is_valid() -> None:
    assert validate_request("stripe", STRIPE_HEADERS, stripe_example(), now=EXAMPLE_NOW) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("&payment_method_types[0]=card", "'payment_method_types' was unexpected"),
        ("&mode=subscriptions", "mode: 'subscriptions' is not one of"),
        ("&line_items[0][quantity]=one", "line_items[0][quantity]: 'one' is not of type"),
        ("&client_reference_id=" + "x" * 201, "client_reference_id: "),
        ("&locale=en-AU", "locale: 'en-AU' is not one of"),
        ("&line_items[0][price]=price_1", "exactly one of price or price_data"),
        ("&line_items[1][price_data][currency]=usd&line_items[1][quantity]=1", "unit_amount"),
    ],
)
def test_stripe_mistakes_are_reported(extra: str, expected: str) -> None:
    problems = validate_request("stripe", STRIPE_HEADERS, stripe_example() + extra, now=EXAMPLE_NOW)
    assert any(expected in p for p in problems), problems


def test_stripe_expires_at_window_is_enforced() -> None:
    too_late = datetime.fromtimestamp(1_790_000_000 - 25 * 3600, UTC)
    problems = validate_request("stripe", STRIPE_HEADERS, stripe_example(), now=too_late)
    assert problems == ["expires_at: must be 30 minutes to 24 hours after creation"]


def test_stripe_currencies_must_be_lowercase_and_agree() -> None:
    body = stripe_example().replace("currency]=eur", "currency]=EUR")
    problems = validate_request("stripe", STRIPE_HEADERS, body, now=EXAMPLE_NOW)
    assert any("lowercase" in p for p in problems)


@pytest.mark.parametrize(
    ("provider", "header", "limit", "base"),
    [
        ("stripe", "Idempotency-Key", 255, STRIPE_HEADERS),
        ("adyen", "Idempotency-Key", 64, {**JSON_HEADERS, "X-API-Key": "k"}),
        ("paypal", "PayPal-Request-Id", 108, {**JSON_HEADERS, "Authorization": "Bearer t"}),
    ],
)
def test_idempotency_header_length_limits(
    provider: str, header: str, limit: int, base: dict[str, str]
) -> None:
    assert validate_headers(provider, {**base, header: "k" * limit}) == []
    problems = validate_headers(provider, {**base, header.lower(): "k" * (limit + 1)})
    assert problems == [f"header {header}: violates maxLength {limit}"]


def test_headers_content_type_and_auth() -> None:
    assert (
        validate_headers(
            "stripe", {"Content-Type": f"{FORM}; charset=utf-8", "Authorization": "Bearer sk"}
        )
        == []
    )
    problems = validate_headers("stripe", {"Content-Type": "application/json"})
    assert problems == [
        f"header Content-Type: must be {FORM}, got application/json",
        "header Authorization: must be 'Bearer <secret key>' (or Basic)",
    ]
    assert validate_headers("adyen", JSON_HEADERS) == [
        "header X-API-Key: required (or HTTP Basic authentication)"
    ]


def _example(provider: str) -> dict[str, Any]:
    request = load_spec(provider)["operation"]["request"]
    example = (
        request["examples"]["00.success"]
        if provider == "adyen"
        else request["example"]["order_request"]
    )
    value: dict[str, Any] = example["value"]
    return value


def test_adyen_and_paypal_examples_are_valid_and_required_fields_enforced() -> None:
    adyen = _example("adyen")
    assert validate_body("adyen", adyen) == []
    broken = {k: v for k, v in adyen.items() if k != "merchantAccount"}
    assert sorted(validate_body("adyen", {**broken, "unknown": 1})) == [
        "body: 'merchantAccount' is a required property",
        "body: Additional properties are not allowed ('unknown' was unexpected)",
    ]
    paypal = _example("paypal")
    assert validate_body("paypal", paypal) == []
    assert validate_body("paypal", {**paypal, "intent": "SALE"}) == [
        "intent: 'SALE' is not one of ['CAPTURE', 'AUTHORIZE']"
    ]


def test_paypal_read_only_fields_are_refused() -> None:
    paypal = _example("paypal")
    problems = validate_body("paypal", {**paypal, "payer": {"payer_id": "QYR5Z8XDVJNXQ"}})
    assert problems == ["payer.payer_id: is read-only and must not be sent in a request"]


def test_nullable_becomes_a_null_type_but_property_names_are_not_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "nullable": True, "enum": ["x"]},
            "nullable": {"type": "boolean"},
            "required": {"type": "string"},
        },
    }
    assert _normalise(schema) == {
        "type": "object",
        "properties": {
            "a": {"type": ["string", "null"], "enum": ["x", None]},
            "nullable": {"type": "boolean"},
            "required": {"type": "string"},
        },
    }


async def test_strict_sandbox_refuses_a_non_conforming_create_call(
    strict_sandbox: StrictSandbox,
) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            strict_sandbox.url("/sandbox/stripe/v1/checkout/sessions"),
            data="mode=payment&bogus=1",
            headers={**STRIPE_HEADERS, "Idempotency-Key": "k1"},
        )
        payload = await response.json()
    assert response.status == 400
    assert payload["error"]["code"] == "contract_violation"
    assert any("'bogus' was unexpected" in p for p in payload["contractViolations"])
    assert len(strict_sandbox.violations) == 1
    assert strict_sandbox.state.sessions_created["stripe"] == 0


@pytest.mark.parametrize(
    ("provider", "path", "body", "expected"),
    [
        ("stripe", "/v1/checkout/sessions", None, "stripe_checkout_sessions:create"),
        ("stripe", "/v1/payment_intents", None, "stripe_payment_intents:create"),
        ("stripe", "/v1/payment_intents/pi_1/capture", None, "stripe_payment_intents:capture"),
        ("stripe", "/v1/payment_intents/pi_1/cancel", None, "stripe_payment_intents:cancel"),
        ("stripe", "/v1/refunds", None, "stripe_refunds:create"),
        ("stripe", "/v1/payment_intents/pi_1", None, None),
        ("adyen", "/v71/sessions", None, "adyen_sessions:create"),
        ("adyen", "/v71/payments", None, "adyen_payments:payments"),
        ("adyen", "/v71/payments/PSP1/captures", None, "adyen_payments:captures"),
        ("adyen", "/v71/payments/PSP1/refunds", None, "adyen_payments:refunds"),
        ("adyen", "/payments", None, None),
        ("paypal", "/v2/checkout/orders", {}, "paypal_orders_v2:create"),
        (
            "paypal",
            "/v2/checkout/orders",
            {"payment_source": {}},
            "paypal_vault_v3:orders_create_with_vault",
        ),
        (
            "paypal",
            "/v2/payments/authorizations/A1/void",
            None,
            "paypal_payments_v2:authorizations_void",
        ),
        ("paypal", "/v3/vault/setup-tokens", {}, "paypal_vault_v3:setup_tokens_create"),
        ("paypal", "/v2/checkout/orders/O1/capture", {}, None),
    ],
)
def test_find_operation_names_the_spec_operation_of_a_call(
    provider: str, path: str, body: object, expected: str | None
) -> None:
    assert find_operation(provider, "POST", path, body) == expected


def test_an_operation_is_checked_against_its_own_schema() -> None:
    """A refund body is valid for the refund operation and not for the checkout create."""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": "Bearer sk_test_x",
        "Idempotency-Key": "k1",
    }
    body = "payment_intent=pi_1&amount=100&reason=requested_by_customer"
    assert validate_request("stripe", headers, body, operation="stripe_refunds:create") == []
    assert validate_request("stripe", headers, body) != []
    bad = "payment_intent=pi_1&amount=100&reason=because"
    assert validate_request("stripe", headers, bad, operation="stripe_refunds:create") != []


@pytest.mark.parametrize(
    ("token_type", "valid"),
    [("SETUP_TOKEN", True), ("BILLING_AGREEMENT", True), ("SOMETHING_ELSE", False)],
)
def test_the_vault_spec_amendment_adds_setup_tokens_only(token_type: str, valid: bool) -> None:
    """The Vault v3 excerpt predates ``SETUP_TOKEN``: the one amended enum takes it, and still
    refuses anything else (and the unamended create order is untouched)."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer A21AA-token",
        "PayPal-Request-Id": "vault-1",
    }
    body = {"payment_source": {"token": {"id": "5C991763VB2781612", "type": token_type}}}
    problems = validate_request(
        "paypal", headers, body, operation="paypal_vault_v3:payment_tokens_create"
    )
    assert (problems == []) is valid
    missing_key = {k: v for k, v in headers.items() if k != "PayPal-Request-Id"}
    assert "header PayPal-Request-Id: required" in validate_request(
        "paypal", missing_key, body, operation="paypal_vault_v3:payment_tokens_create"
    )
