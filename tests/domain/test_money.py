"""Money is exact and bounded: one trapping context, exact scales, plain renderings."""

from __future__ import annotations

from decimal import Decimal, Inexact

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.money import (
    MAX_AMOUNT,
    add,
    format_amount,
    format_major,
    multiply,
    scale_of,
    to_minor,
)


def test_scale_of_is_exact_beyond_the_default_28_digits() -> None:
    # the default context's normalize() rounded this to 0.1 (one place)
    assert scale_of(Decimal("0.10000000000000000000000000000001")) == 32
    assert scale_of(Decimal("1.50")) == 1
    assert scale_of(Decimal("2E+1")) == 0
    assert scale_of(Decimal("0E-7")) == 0


def test_arithmetic_raises_rather_than_rounds() -> None:
    with pytest.raises(Inexact):
        add([Decimal("1E-40"), Decimal("1E+14")])
    with pytest.raises(Inexact):
        multiply(Decimal("1234567890123456789012.345678901"), 123456789012345678901)
    largest_order = multiply(MAX_AMOUNT - Decimal("0.001"), 1_000_000)
    assert add([largest_order] * 100) == Decimal("99999999999999999900000.000")


def test_to_minor_refuses_places_it_would_have_to_drop() -> None:
    assert to_minor(Decimal("1E+2"), 2) == 10_000
    assert to_minor(Decimal("999999999999999.99"), 2) == 99_999_999_999_999_999
    with pytest.raises(ValueError, match="decimal places"):
        to_minor(Decimal("0.10000000000000000000000000000001"), 2)


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        ("1E+2", "USD", "100.00"),
        ("1E+2", "JPY", "100"),
        ("1.5", "KWD", "1.500"),
        ("0", "EUR", "0.00"),
        ("999999999999999.99", "USD", "999999999999999.99"),
        ("1.000", "USD", "1.00"),
    ],
)
def test_amounts_render_as_plain_strings_with_the_currency_exponent(
    amount: str, currency: str, text: str
) -> None:
    assert format_amount(Decimal(amount), currency) == text


def test_rendering_never_rounds() -> None:
    with pytest.raises(ValueError, match="decimal places"):
        format_major(Decimal("1.005"), 2)


@settings(max_examples=200, deadline=None)
@given(
    st.decimals(min_value=0, max_value=MAX_AMOUNT - 1, places=2, allow_nan=False),
)
def test_rendering_round_trips_exactly(amount: Decimal) -> None:
    text = format_amount(amount, "USD")
    assert text.replace(".", "").isdigit()
    assert Decimal(text) == amount
    assert len(text.partition(".")[2]) == 2
