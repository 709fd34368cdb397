"""The ``when`` part of a rule: conditions on the request, combined with all / any / not.

A condition is a mapping; each key is one test and *all* keys of one mapping must hold::

    when:
      currency: [EUR]                 # request currency in the list
      country: NL                     # billing country (falls back to the shipping country)
      any:
        - payment_method: ideal
        - amount: {gte: 500}

Tests: ``currency``, ``country``, ``payment_method``, ``capture_method``, ``merchant``,
``locale`` (``nl`` matches every Dutch locale, ``nl_BE`` only that one), ``amount`` and
``items`` / ``quantity`` ranges (``gt``, ``gte``, ``lt``, ``lte``), ``additional_information``
(``{key: K}`` present, ``{key: K, values: [..]}`` present with one of the values), and the
combinators ``all`` (list), ``any`` (list) and ``not`` (one condition).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

import iso3166
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gateway.domain.models import PAYMENT_METHODS
from gateway.domain.money import is_active_currency

__all__ = [
    "AmountRange",
    "Condition",
    "CountRange",
    "Countries",
    "Currencies",
    "CurrencyCode",
    "FrozenModel",
    "InfoTest",
    "ProviderName",
    "as_text",
    "check_country",
    "one_or_many",
]


class FrozenModel(BaseModel):
    """Base of every rules model: immutable, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


def one_or_many(value: Any) -> Any:
    """Accept ``X`` wherever ``[X]`` is meant."""
    return [value] if isinstance(value, str | int | Decimal) else value


def as_text(value: Any) -> Any:
    """Numbers where text is meant (``version: 2024.1``, ``merchant: 12345``) become text,
    spelled as written (decimals are read exactly, so ``1.10`` stays ``1.10``)."""
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        return [as_text(v) for v in value]
    return value


def _currency(value: str) -> str:
    if not is_active_currency(value):
        raise ValueError(f"{value!r} is not an active ISO 4217 currency code")
    return value


def check_country(value: str) -> str:
    """An ISO 3166-1 alpha-2 country code, or ValueError."""
    if value not in iso3166.countries_by_alpha2:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value


def _method(value: str) -> str:
    if value not in PAYMENT_METHODS:
        raise ValueError(f"{value!r} is not a payment method ({', '.join(PAYMENT_METHODS)})")
    return value


def _locale(value: str) -> str:
    normal = value.replace("-", "_")
    language, _, region = normal.partition("_")
    if not (len(language) == 2 and language.isalpha() and language.islower()):
        raise ValueError(f"{value!r} is not a locale such as 'nl' or 'nl_NL'")
    if region and not (len(region) == 2 and region.isalpha() and region.isupper()):
        raise ValueError(f"{value!r} is not a locale such as 'nl' or 'nl_NL'")
    return normal


CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$"), AfterValidator(_currency)]
Country = Annotated[str, AfterValidator(check_country)]
Method = Annotated[str, AfterValidator(_method)]
Locale = Annotated[str, AfterValidator(_locale)]
ProviderName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
_ONE_OR_MANY = BeforeValidator(one_or_many)
_NON_EMPTY = Field(min_length=1)
Currencies = Annotated[tuple[CurrencyCode, ...], _ONE_OR_MANY, _NON_EMPTY]
Countries = Annotated[tuple[Country, ...], _ONE_OR_MANY, _NON_EMPTY]
Methods = Annotated[tuple[Method, ...], _ONE_OR_MANY, _NON_EMPTY]
CaptureMethods = Annotated[tuple[Literal["automatic", "manual"], ...], _ONE_OR_MANY, _NON_EMPTY]
Merchants = Annotated[
    tuple[Annotated[str, Field(min_length=1)], ...],
    BeforeValidator(as_text),
    _ONE_OR_MANY,
    _NON_EMPTY,
]
Locales = Annotated[tuple[Locale, ...], _ONE_OR_MANY, _NON_EMPTY]


def _check_bounds(gt: object, gte: object, lt: object, lte: object) -> None:
    if gt is None and gte is None and lt is None and lte is None:
        raise ValueError("a range needs at least one of gt, gte, lt, lte")
    if gt is not None and gte is not None:
        raise ValueError("use gt or gte, not both")
    if lt is not None and lte is not None:
        raise ValueError("use lt or lte, not both")


class AmountRange(FrozenModel):
    """Bounds on ``amount.total`` in major units of the request currency (exact decimals)."""

    gt: Decimal | None = None
    gte: Decimal | None = None
    lt: Decimal | None = None
    lte: Decimal | None = None

    @model_validator(mode="after")
    def _bounded(self) -> AmountRange:
        _check_bounds(self.gt, self.gte, self.lt, self.lte)
        for bound in (self.gt, self.gte, self.lt, self.lte):
            if bound is not None and not bound.is_finite():
                raise ValueError("bounds must be finite numbers")
        return self


class CountRange(FrozenModel):
    """Bounds on a count (order lines or units)."""

    gt: int | None = None
    gte: int | None = None
    lt: int | None = None
    lte: int | None = None

    @model_validator(mode="after")
    def _bounded(self) -> CountRange:
        _check_bounds(self.gt, self.gte, self.lt, self.lte)
        return self


class InfoTest(FrozenModel):
    """``additionalInformation[key]`` is present (and, with ``values``, one of them)."""

    key: Annotated[str, Field(min_length=1, max_length=64)]
    values: Annotated[tuple[str, ...], BeforeValidator(one_or_many), Field(min_length=1)] | None = (
        None
    )


class Condition(FrozenModel):
    """A conjunction of tests; see the module docstring for each key."""

    currency: Currencies | None = None
    country: Countries | None = None
    payment_method: Methods | None = None
    capture_method: CaptureMethods | None = None
    merchant: Merchants | None = None
    locale: Locales | None = None
    amount: AmountRange | None = None
    items: CountRange | None = None
    quantity: CountRange | None = None
    additional_information: (
        Annotated[
            tuple[InfoTest, ...], BeforeValidator(lambda v: [v] if isinstance(v, dict) else v)
        ]
        | None
    ) = None
    all_: tuple[Condition, ...] | None = Field(None, alias="all", min_length=1)
    any_: tuple[Condition, ...] | None = Field(None, alias="any", min_length=1)
    not_: Condition | None = Field(None, alias="not")

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("an empty condition; leave `when` out to match every request")
        return self


Condition.model_rebuild()
