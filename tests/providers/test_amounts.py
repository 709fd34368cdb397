"""Amounts on the wire: zero-, two- and three-decimal currencies and each provider's exceptions
(Adyen CLP/CVE/ISK, PayPal HUF/JPY/TWD). Money is Decimal end to end; nothing is ever rounded."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.money import exponent
from providers.adyen.transformers import (
    adyen_exponent,
    build_session_request,
    from_adyen_minor,
    to_adyen_minor,
)
from providers.adyen.transformers import (
    amount_problem as adyen_amount_problem,
)
from providers.paypal.transformers import (
    PAYPAL_CURRENCIES,
    build_order_request,
    paypal_value,
)
from providers.paypal.transformers import (
    amount_problem as paypal_amount_problem,
)
from tests.providers.hosted_inputs import checkout_input, order, seed_request


@pytest.mark.parametrize(
    ("currency", "amount", "minor"),
    [
        ("JPY", "1000", 1000),  # zero decimals
        ("USD", "140.76", 14076),
        ("AUD", "0.05", 5),
        ("KWD", "1.234", 1234),  # three decimals
        ("BHD", "0.5", 500),
        ("CLP", "1000", 100000),  # ISO 0, Adyen 2: scaled up
        ("ISK", "1500", 150000),  # ISO 0, Adyen 2: scaled up
        ("CVE", "250", 250),  # ISO 2, Adyen 0
        ("CVE", "250.00", 250),
    ],
)
def test_adyen_minor_units(currency: str, amount: str, minor: int) -> None:
    assert to_adyen_minor(Decimal(amount), currency) == minor
    assert from_adyen_minor(minor, currency) == Decimal(amount)


def test_adyen_exponent_overrides_only_where_adyen_differs() -> None:
    assert (adyen_exponent("CLP"), exponent("CLP")) == (2, 0)
    assert (adyen_exponent("ISK"), exponent("ISK")) == (2, 0)
    assert (adyen_exponent("CVE"), exponent("CVE")) == (0, 2)
    assert adyen_exponent("JPY") == exponent("JPY") == 0
    assert adyen_exponent("KWD") == exponent("KWD") == 3


def test_adyen_refuses_to_round_a_cve_fraction() -> None:
    with pytest.raises(ValueError, match="decimal places"):
        to_adyen_minor(Decimal("250.50"), "CVE")
    request = order("CVE", "250.50")
    assert (
        adyen_amount_problem(request) == "Adyen accepts CVE amounts with at most 0 decimal places"
    )
    assert adyen_amount_problem(order("CVE", "250")) is None


@pytest.mark.parametrize(
    ("currency", "amount", "wire"),
    [
        ("JPY", "1000", "1000"),
        ("HUF", "1000", "1000"),  # ISO 2, PayPal 0
        ("TWD", "1000.00", "1000"),
        ("USD", "140.76", "140.76"),
        ("USD", "119", "119.00"),
        ("AUD", "9.9", "9.90"),
    ],
)
def test_paypal_decimal_strings(currency: str, amount: str, wire: str) -> None:
    assert paypal_value(Decimal(amount), currency) == wire


@pytest.mark.parametrize("currency", ["HUF", "TWD"])
def test_paypal_refuses_fractions_in_huf_and_twd(currency: str) -> None:
    with pytest.raises(ValueError, match="decimal places"):
        paypal_value(Decimal("1000.50"), currency)
    problem = paypal_amount_problem(order(currency, "1000.50", paymentMethod="paypal"))
    assert problem == f"PayPal accepts {currency} amounts with at most 0 decimal places"
    assert paypal_amount_problem(order(currency, "1000", paymentMethod="paypal")) is None


@pytest.mark.parametrize("currency", ["KWD", "BHD", "CLP", "ISK"])
def test_paypal_does_not_take_currencies_outside_its_list(currency: str) -> None:
    assert currency not in PAYPAL_CURRENCIES
    request = order(currency, "12", paymentMethod="paypal")
    assert paypal_amount_problem(request) == f"PayPal does not accept {currency}"


def test_paypal_refuses_a_zero_total() -> None:
    request = order("USD", "0", paymentMethod="paypal")
    assert paypal_amount_problem(request) == "PayPal needs an amount greater than zero"


def test_seed_amounts_on_the_wire() -> None:
    data = checkout_input(seed_request())
    adyen = build_session_request(data, "SandboxMerchantECOM")
    assert adyen["amount"] == {"value": 14076, "currency": "AUD"}
    assert [line["amountIncludingTax"] for line in adyen["lineItems"]] == [11900, 995, 1181]
    paypal = build_order_request(data)["purchase_units"][0]["amount"]
    assert paypal == {
        "currency_code": "AUD",
        "value": "140.76",
        "breakdown": {
            "item_total": {"currency_code": "AUD", "value": "119.00"},
            "shipping": {"currency_code": "AUD", "value": "9.95"},
            "tax_total": {"currency_code": "AUD", "value": "11.81"},
        },
    }


def _adyen_lines_total(body: dict[str, object]) -> int:
    lines = body["lineItems"]
    assert isinstance(lines, list)
    for line in lines:
        assert line["amountIncludingTax"] == line["amountExcludingTax"] + line["taxAmount"]
    return sum(line["amountIncludingTax"] * line["quantity"] for line in lines)


_CURRENCIES = ["JPY", "USD", "AUD", "KWD", "BHD", "CLP", "ISK", "CVE", "HUF", "TWD", "EUR"]


@settings(max_examples=150, deadline=None)
@given(
    currency=st.sampled_from(_CURRENCIES),
    units=st.lists(st.integers(min_value=0, max_value=10**7), min_size=3, max_size=3),
    quantity=st.integers(min_value=1, max_value=50),
)
def test_wire_amounts_always_add_up(currency: str, units: list[int], quantity: int) -> None:
    """Whatever the amounts, Adyen's lines and PayPal's breakdown equal the total exactly."""
    exp = exponent(currency)
    unit, shipping, tax = (Decimal(value).scaleb(-exp) for value in units)
    request = order(currency, str(unit), quantity, str(shipping), str(tax))
    data = checkout_input(request)
    if adyen_amount_problem(request) is None:
        body = build_session_request(data, "M")
        value = body["amount"]["value"]
        assert isinstance(value, int)
        assert value == to_adyen_minor(request.amount.total, currency)
        assert _adyen_lines_total(body) == value
    else:
        assert currency == "CVE"
        assert any(u % 100 for u in units)
    paypal_request = request.model_copy(update={"paymentMethod": "paypal"})
    if paypal_amount_problem(paypal_request) is None:
        amount = build_order_request(checkout_input(paypal_request))["purchase_units"][0]["amount"]
        parts = amount["breakdown"]
        added = sum((Decimal(parts[name]["value"]) for name in parts), Decimal(0))
        assert isinstance(amount["value"], str)
        assert Decimal(amount["value"]) == added == request.amount.total
    else:
        assert (
            currency not in PAYPAL_CURRENCIES
            or request.amount.total == 0
            or (currency in ("HUF", "TWD") and any(u % 100 for u in units))
        )
