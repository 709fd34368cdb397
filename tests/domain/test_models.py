"""Request parsing: exact decimals, every problem listed with its path, currency exponents."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.domain.models import TOTAL_MISMATCH, RequestProblems, parse_checkout_request

SEED_TEXT = (Path(__file__).resolve().parents[1] / "fixtures/seed_request.json").read_text()


def problems_of(raw: str | bytes, **kw: Any) -> list[str]:
    with pytest.raises(RequestProblems) as info:
        parse_checkout_request(raw.encode() if isinstance(raw, str) else raw, **kw)
    return info.value.problems


def variant(**changes: Any) -> str:
    body = json.loads(SEED_TEXT)
    body.update(changes)
    return json.dumps(body)


def test_seed_parses_to_exact_decimals() -> None:
    request = parse_checkout_request(SEED_TEXT.encode())
    assert request.amount.total == Decimal("140.76")
    assert request.amount.shipping == Decimal("9.95")
    assert request.amount.tax == Decimal("11.81")
    assert isinstance(request.orderItems[0].unitPrice, Decimal)
    assert request.billing_country == "AU"


def test_numbers_beyond_float_precision_stay_exact() -> None:
    # 17 significant digits, the largest amount accepted: a float would make it 1e15
    raw = variant(
        amount={"total": 0, "shipping": 0, "tax": 0},
        orderItems=[{"name": "x", "quantity": 1, "unitPrice": 0}],
    )
    raw = raw.replace('"total": 0', '"total": 999999999999999.99').replace(
        '"unitPrice": 0', '"unitPrice": 999999999999999.99'
    )
    request = parse_checkout_request(raw.encode())
    assert request.amount.total == Decimal("999999999999999.99")
    assert str(request.amount.total) == "999999999999999.99"


def test_total_mismatch_uses_the_seed_message() -> None:
    raw = variant(amount={"total": 140.77, "shipping": 9.95, "tax": 11.81})
    assert problems_of(raw) == [TOTAL_MISMATCH]


@pytest.mark.parametrize(
    ("currency", "total", "ok"),
    [
        ("JPY", "159", True),
        ("JPY", "159.5", False),
        ("USD", "1.5", True),
        ("USD", "1.505", False),
        ("KWD", "1.505", True),
        ("KWD", "1.5055", False),
    ],
)
def test_decimal_places_follow_the_currency_exponent(currency: str, total: str, ok: bool) -> None:
    raw = (
        variant(
            currency=currency,
            amount={"total": 0},
            orderItems=[{"name": "x", "quantity": 1, "unitPrice": 0}],
        )
        .replace('"total": 0', f'"total": {total}')
        .replace('"unitPrice": 0', f'"unitPrice": {total}')
    )
    if ok:
        assert parse_checkout_request(raw.encode()).amount.total == Decimal(total)
    else:
        found = problems_of(raw)
        assert "amount.total: must have no more than" in found[0]
        assert "orderItems.0.unitPrice: must have no more than" in found[1]


def test_every_problem_is_listed_with_its_path() -> None:
    body = json.loads(SEED_TEXT)
    body["currency"] = "ABC"
    body["orderItems"][0]["quantity"] = 0
    body["customer"]["email"] = "not-an-email"
    body["customer"]["phone"] = "0412345678"
    body["customer"]["billingAddress"]["country"] = "ZZ"
    body["redirectUrls"]["success"] = "http://merchant.example.com/ok"
    body["surprise"] = True
    del body["orderReference"]
    found = problems_of(json.dumps(body))
    paths = {p.split(":")[0] for p in found}
    assert paths == {
        "currency",
        "orderItems.0.quantity",
        "customer.email",
        "customer.phone",
        "customer.billingAddress.country",
        "redirectUrls.success",
        "surprise",
        "orderReference",
    }
    assert "surprise: unknown field" in found


def test_field_errors_do_not_hide_the_amount_checks() -> None:
    # a bad email and a bad phone next to a wrong total: all three are listed
    body = json.loads(SEED_TEXT)
    body["customer"]["email"] = "not-an-email"
    body["customer"]["phone"] = "0412345678"
    found = problems_of(json.dumps(body).replace('"total": 140.76', '"total": 140.77'))
    assert {p.split(":")[0] for p in found[:2]} == {"customer.email", "customer.phone"}
    assert found[2:] == [TOTAL_MISMATCH]


def test_decimal_places_are_checked_next_to_field_errors() -> None:
    body = json.loads(SEED_TEXT)
    body["orderReference"] = ""
    body["orderItems"].append({"name": "", "quantity": 1, "unitPrice": 1.001})
    raw = json.dumps(body).replace('"total": 140.76', '"total": 141.765')
    assert problems_of(raw) == [
        "orderReference: String should have at least 1 character",
        "orderItems.1.name: String should have at least 1 character",
        "amount.total: must have no more than 2 decimal places for AUD",
        "orderItems.1.unitPrice: must have no more than 2 decimal places for AUD",
    ]


def test_the_total_is_not_compared_without_every_part() -> None:
    # an invalid quantity or amount is reported once, by its own path, never as a mismatch
    body = json.loads(SEED_TEXT)
    body["orderItems"][0]["quantity"] = 0
    body["amount"]["tax"] = -1
    found = problems_of(json.dumps(body))
    assert [p.split(":")[0] for p in found] == ["amount.tax", "orderItems.0.quantity"]
    assert TOTAL_MISMATCH not in found
    body = json.loads(SEED_TEXT)
    body["currency"] = "ABC"  # no exponent to check places against: no money checks at all
    body["amount"]["total"] = 1
    assert [p.split(":")[0] for p in problems_of(json.dumps(body))] == ["currency"]


@pytest.mark.parametrize(
    "raw",
    ["", "{", "[]", '"text"', '{"amount": NaN}', b"\xff\xfe", "[" * 100_000, '{"a":' * 50_000],
)
def test_malformed_bodies_are_problems_not_crashes(raw: str | bytes) -> None:
    assert problems_of(raw)


def test_amounts_reject_negatives_booleans_and_strings_of_junk() -> None:
    body = json.loads(SEED_TEXT)
    body["amount"] = {"total": True, "shipping": -1, "tax": "abc"}
    paths = {p.split(":")[0] for p in problems_of(json.dumps(body))}
    assert paths == {"amount.total", "amount.shipping", "amount.tax"}


def test_http_redirects_only_for_localhost_in_sandbox() -> None:
    raw = variant(redirectUrls={"success": "http://localhost:3000/ok", "failure": "https://x.io/f"})
    assert problems_of(raw)
    assert parse_checkout_request(raw.encode(), allow_http_localhost=True)
    other = variant(redirectUrls={"success": "http://evil.io/ok", "failure": "https://x.io/f"})
    assert problems_of(other, allow_http_localhost=True)


def test_limits_on_items_expiry_and_additional_information() -> None:
    assert problems_of(variant(orderItems=[]))[0].startswith("orderItems")
    assert problems_of(variant(expiresIn=299))[0].startswith("expiresIn")
    assert problems_of(variant(expiresIn=86401))[0].startswith("expiresIn")
    too_many = {f"k{i}": "v" for i in range(51)}
    assert problems_of(variant(additionalInformation=too_many))[0].startswith(
        "additionalInformation"
    )
    assert problems_of(variant(captureMethod="later"))[0].startswith("captureMethod")
    assert problems_of(variant(locale="english"))[0].startswith("locale")


@pytest.mark.parametrize(
    "email",
    ["jane.smith@example.com", "a+tag@sub.example.co.uk", "o'neil@example.org", "jöhn@exämple.de"],
)
def test_valid_emails_are_accepted(email: str) -> None:
    body = json.loads(SEED_TEXT)
    body["customer"]["email"] = email
    assert parse_checkout_request(json.dumps(body).encode()).customer is not None


@pytest.mark.parametrize(
    "email",
    [
        "plain",
        "a@b",
        "a@@b.com",
        ".a@b.com",
        "a..b@c.com",
        "a@-b.com",
        "a@b.c",
        "a b@c.com",
        "a@b.com.",
        "@b.com",
        "x" * 65 + "@b.com",
        "jöhn@@exämple.de",
    ],
)
def test_invalid_emails_are_refused(email: str) -> None:
    body = json.loads(SEED_TEXT)
    body["customer"]["email"] = email
    found = problems_of(json.dumps(body))
    assert len(found) == 1
    assert found[0].startswith("customer.email: value is not a valid email address")


@pytest.mark.parametrize(
    "url",
    ["https://x.io/ok\n", "https://x .io/", "https:///path", "ftp://x.io/", "//x.io/", "https://"],
)
def test_malformed_redirect_urls_are_refused(url: str) -> None:
    raw = variant(redirectUrls={"success": url, "failure": "https://x.io/f"})
    assert problems_of(raw)[0].startswith("redirectUrls.success: must be an absolute https URL")


def _single_line(total: str, unit: str, currency: str = "USD") -> str:
    raw = variant(
        currency=currency,
        amount={"total": 0},
        orderItems=[{"name": "x", "quantity": 1, "unitPrice": 0}],
    )
    return raw.replace('"total": 0', f'"total": {total}').replace(
        '"unitPrice": 0', f'"unitPrice": {unit}'
    )


def test_amounts_at_or_above_the_api_bound_are_refused_by_name() -> None:
    bound = "must be less than 1000000000000000 (at most 15 digits before the decimal point)"
    assert problems_of(_single_line("1e20", "1e20")) == [
        f"amount.total: {bound}",
        f"orderItems.0.unitPrice: {bound}",
    ]
    # the case: 10^28 + 1 against 10^28 passed the 28-digit default context
    found = problems_of(_single_line("1e28", "10000000000000000000000000001"))
    assert found == [f"amount.total: {bound}", f"orderItems.0.unitPrice: {bound}"]
    assert problems_of(_single_line("1000000000000000", "1000000000000000"))
    largest = "999999999999999.99"
    assert parse_checkout_request(_single_line(largest, largest).encode()).amount.total == (
        Decimal(largest)
    )


def test_places_are_counted_exactly_past_28_digits() -> None:
    tiny = "0.10000000000000000000000000000001"
    found = problems_of(_single_line(tiny, tiny))
    assert found == [
        "amount.total: must have no more than 2 decimal places for USD",
        "orderItems.0.unitPrice: must have no more than 2 decimal places for USD",
    ]


def test_additional_information_keys_with_brackets_are_refused() -> None:
    found = problems_of(variant(additionalInformation={"a][b": "x", "fine": "y"}))
    assert found == ["additionalInformation.a][b.[key]: keys must not contain '[' or ']'"]
    assert problems_of(variant(additionalInformation={"a[b": "x"}))
