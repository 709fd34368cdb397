"""Exact money arithmetic: ``Decimal`` amounts and ISO 4217 minor units.

Floats never reach this module's callers; every amount is a ``Decimal`` parsed exactly from the
request text. Minor-unit exponents come from the official ISO 4217 table (the ``iso4217``
package); providers that deviate from it pass their own exponent.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

from iso4217 import Currency

__all__ = [
    "exponent",
    "format_major",
    "from_minor",
    "is_active_currency",
    "quantum",
    "scale_of",
    "to_minor",
]


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
    return Decimal(1).scaleb(-exp)


def scale_of(amount: Decimal) -> int:
    """The number of significant decimal places of ``amount`` (``1.50`` has 1, ``2E+1`` has 0)."""
    normalized = amount.normalize()
    exp = normalized.as_tuple().exponent
    assert isinstance(exp, int)
    return max(0, -exp)


def to_minor(amount: Decimal, exp: int) -> int:
    """Convert a major-unit amount to an integer of minor units; refuses to round."""
    scaled = amount.scaleb(exp)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than {exp} decimal places")
    return int(scaled)


def from_minor(value: int, exp: int) -> Decimal:
    """An integer of minor units as the exact major-unit amount (``14076``, 2 -> ``140.76``).

    Built from its digits, so no context precision can round it.
    """
    return Decimal(f"{int(value)}E-{int(exp)}")


def format_major(amount: Decimal, exp: int) -> str:
    """A decimal string with exactly ``exp`` places, as PayPal-style APIs expect ("140.76")."""
    return str(amount.quantize(quantum(exp)))
