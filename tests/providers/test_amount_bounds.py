"""The largest amount the API accepts, at each provider: on the wire exactly, or refused
before any call with the provider's own bound."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from gateway.domain.money import MAX_AMOUNT
from providers.adyen.adapter import AdyenAdapter
from providers.adyen.transformers import build_session_request
from providers.paypal.adapter import PayPalAdapter
from providers.paypal.transformers import build_order_request
from providers.stripe.adapter import StripeAdapter
from providers.stripe.transformers import STRIPE_MAX_MINOR
from tests.providers.hosted_inputs import checkout_input, order

_PAYPAL_VALUE = re.compile(r"^((-?[0-9]+)|(-?([0-9]+)?[.][0-9]+))$")


@pytest.mark.parametrize(
    ("currency", "largest"),
    [("USD", "999999999999999.99"), ("JPY", "999999999999999"), ("KWD", "999999999999999.999")],
)
def test_the_largest_accepted_amount_reaches_adyen_as_an_int64(currency: str, largest: str) -> None:
    request = order(currency, largest)
    assert request.amount.total < MAX_AMOUNT
    assert AdyenAdapter.eligibility_problem(request) is None
    value = build_session_request(checkout_input(request), "M")["amount"]["value"]
    assert isinstance(value, int)
    assert value < 2**63


@pytest.mark.parametrize(
    ("currency", "largest"), [("USD", "999999999999999.99"), ("JPY", "999999999999999")]
)
def test_the_largest_accepted_amount_reaches_paypal_as_a_valid_value(
    currency: str, largest: str
) -> None:
    request = order(currency, largest, paymentMethod="paypal")
    assert PayPalAdapter.eligibility_problem(request) is None
    value = build_order_request(checkout_input(request))["purchase_units"][0]["amount"]["value"]
    assert value == largest
    assert len(value) <= 32
    assert _PAYPAL_VALUE.fullmatch(value)


@pytest.mark.parametrize(
    ("currency", "fits", "too_big", "shown"),
    [
        ("USD", "999999.99", "1000000.00", "999999.99"),
        ("JPY", "99999999", "100000000", "99999999"),
        ("KWD", "99999.990", "100000.000", "99999.999"),
    ],
)
def test_stripe_takes_eight_digits_of_minor_units(
    currency: str, fits: str, too_big: str, shown: str
) -> None:
    assert StripeAdapter.eligibility_problem(order(currency, fits)) is None
    assert StripeAdapter.eligibility_problem(order(currency, too_big)) == (
        f"Stripe accepts {currency} amounts up to {shown} ({STRIPE_MAX_MINOR} minor units)"
    )
    # the total is what is bounded: many lines below the bound can add up above it
    lines = order(currency, str(Decimal(too_big) / 4), quantity=4)
    assert StripeAdapter.eligibility_problem(lines) is not None
