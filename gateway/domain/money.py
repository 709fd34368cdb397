"""Exact money arithmetic: ``Decimal`` amounts and ISO 4217 minor units.

Floats never reach this module's callers; every amount is a ``Decimal`` parsed exactly from the
request text. Minor-unit exponents come from the official ISO 4217 table (the ``iso4217``
package); providers that deviate from it pass their own exponent.

Every amount the API accepts is below :data:`MAX_AMOUNT` (at most 15 digits before the decimal
point: PayPal's stated maximum ``999999999999999.99``, and far inside Adyen's int64 minor units),
so every sum and product the gateway computes fits :data:`MONEY_CONTEXT`, whose precision is 40
digits and which *traps* inexact results: an operation that would lose a digit raises
``decimal.Inexact`` instead of answering a wrong amount. Do money arithmetic with
:func:`add`, :func:`multiply` or inside ``decimal.localcontext(MONEY_CONTEXT)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from functools import lru_cache

from iso4217 import Currency

__all__ = [
    "MAX_AMOUNT",
    "MAX_INTEGER_DIGITS",
    "MONEY_CONTEXT",
    "add",
    "exponent",
    "format_amount",
    "format_major",
    "from_minor",
    "is_active_currency",
    "multiply",
    "quantum",
    "scale_of",
    "to_minor",
]

#: Digits before the decimal point an amount may have (PayPal's ``999999999999999.99``).
MAX_INTEGER_DIGITS = 15
#: Every amount the API accepts is strictly below this (``10**15`` major units).
MAX_AMOUNT = Decimal(10) ** MAX_INTEGER_DIGITS

#: The one context of money arithmetic. 40 digits hold any sum of the largest order the API
#: accepts (100 lines x 10**6 x 10**15 with 3 decimals needs 27); a result that would lose a
#: non-zero digit raises ``Inexact`` (dropping trailing zeros is exact and allowed).
MONEY_CONTEXT = Context(
    prec=40,
    Emax=999_999,
    Emin=-999_999,
    traps=[DivisionByZero, Inexact, InvalidOperation, Overflow],
)


#: only for :func:`scale_of`: wide enough that normalising never rounds
_UNBOUNDED = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _build_table() -> dict[str, int]:
    table: dict[str, int] = {}
    for member in Currency:
        exp = member.exponent
        if exp is None:
            continue  # precious metals, testing and "no currency" codes carry no minor unit
        table[member.code] = int(exp)
    return table


_EXPONENTS: dict[str, int] = _build_table()


def is_active_currency(code: str) -> bool:
    """True when ``code`` is an active ISO 4217 currency with a defined minor unit."""
    return code in _EXPONENTS


def exponent(code: str) -> int:
    """The ISO 4217 minor-unit exponent of ``code`` (JPY 0, USD 2, KWD 3)."""
    try:
        return _EXPONENTS[code]
    except KeyError:
        raise ValueError(f"unknown currency {code!r}") from None


@lru_cache(maxsize=16)
def quantum(exp: int) -> Decimal:
    """``Decimal('1')`` scaled to ``exp`` decimal places (``0.01`` for 2)."""
    return Decimal(1).scaleb(-exp, MONEY_CONTEXT)


def scale_of(amount: Decimal) -> int:
    """The number of significant decimal places of ``amount`` (``1.50`` has 1, ``2E+1`` has 0).

    Exact for any finite value, however long: normalised in a context wider than any
    coefficient, so nothing is ever rounded away.
    """
    exp = amount.normalize(_UNBOUNDED).as_tuple().exponent
    assert isinstance(exp, int), "scale_of needs a finite amount"
    return max(0, -exp)


def add(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of ``amounts`` (``Decimal(0)`` for none); raises ``Inexact`` rather than
    round."""
    total = Decimal(0)
    for amount in amounts:
        total = MONEY_CONTEXT.add(total, amount)
    return total


def multiply(amount: Decimal, factor: Decimal | int) -> Decimal:
    """``amount * factor`` exactly; raises ``Inexact`` rather than round."""
    return MONEY_CONTEXT.multiply(amount, Decimal(factor))


def to_minor(amount: Decimal, exp: int) -> int:
    """Convert a major-unit amount to an integer of minor units; refuses to round."""
    if scale_of(amount) > exp:
        raise ValueError(f"{format(amount, 'f')} has more than {exp} decimal places")
    with localcontext(MONEY_CONTEXT):
        return int(amount.scaleb(exp))


def from_minor(value: int, exp: int) -> Decimal:
    """An integer of minor units as the exact major-unit amount (``14076``, 2 -> ``140.76``).

    Built from its digits, so no context precision can round it.
    """
    return Decimal(f"{int(value)}E-{int(exp)}")


def format_major(amount: Decimal, exp: int) -> str:
    """A plain decimal string with exactly ``exp`` places, never an exponent ("140.76",
    "100.00" for ``1E+2``); refuses to round."""
    own = amount.as_tuple().exponent
    # normalising only strips trailing zeros (raises the exponent): an amount stored with at
    # most ``exp`` places needs no normalising to pass the check (the common case, per answer)
    if not (isinstance(own, int) and own >= -exp) and scale_of(amount) > exp:
        raise ValueError(f"{format(amount, 'f')} has more than {exp} decimal places")
    if amount.is_zero():
        amount = amount.copy_abs()  # never "-0.00"
    return format(amount.quantize(quantum(exp), context=MONEY_CONTEXT), "f")


def format_amount(amount: Decimal, currency: str) -> str:
    """``amount`` as the API renders it: a plain decimal string with the ISO 4217 exponent of
    ``currency`` ("100.00" USD, "100" JPY, "1.500" KWD)."""
    return format_major(amount, exponent(currency))
