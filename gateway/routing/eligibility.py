"""Per-provider eligibility: adapter capabilities narrowed by the rules file, and the adapters'
own checks.

Each provider is compiled once into frozen sets and bounds; a refusal always says which side
refused (the adapter cannot, or the routing rules do not allow), so ops can tell a missing
capability from their own configuration. What the capabilities cannot say (per-method
currencies, decimal places, amount bounds) each adapter answers itself through
``eligibility_problem`` (:class:`providers.base.EligibilityCheck`); :func:`adapter_exclusions`
turns those answers into exclusions, so a ranked provider is one whose adapter takes the
request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.domain.money import MONEY_CONTEXT
from gateway.routing.decision import Exclusion
from gateway.routing.rules import RulesFile
from providers.base import Capabilities, EligibilityCheck

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest

__all__ = [
    "AdapterCheck",
    "CompiledProvider",
    "adapter_checks_of",
    "adapter_exclusions",
    "compile_providers",
]

#: an adapter's ``eligibility_problem``: why it cannot take a request, or None
AdapterCheck = Callable[["CheckoutRequest"], "str | None"]
ADAPTER_REFUSES = "adapter cannot take this request: "

log = logging.getLogger("gateway.routing")

_Limits = tuple[Decimal | None, Decimal | None]
_ZERO = Decimal(0)
_OF_RULES = "of the routing rules"


def _frozen(values: tuple[str, ...] | frozenset[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


@dataclass(frozen=True, slots=True)
class CompiledProvider:
    """One provider's fixed facts; see :meth:`static_exclusion` and :meth:`amount_exclusion`."""

    name: str
    enabled: bool
    has_adapter: bool
    preference: float
    rank: int
    cap_methods: frozenset[str] | None = None
    cap_currencies: frozenset[str] | None = None
    cap_countries: frozenset[str] | None = None
    cap_captures: frozenset[str] | None = None
    cap_session_types: frozenset[str] | None = None
    cap_limits: _Limits = (None, None)
    methods: frozenset[str] | None = None
    currencies: frozenset[str] | None = None
    countries: frozenset[str] | None = None
    captures: frozenset[str] | None = None
    limits: _Limits = (None, None)
    limits_per_currency: Mapping[str, _Limits] = field(default_factory=dict)
    fee_percent: Decimal | None = None
    #: ``fee_percent / 100``, exact
    fee_rate: Decimal | None = None
    #: the same fees as floats, only to score the fee's share of an amount (never money)
    fee_rate_f: float = 0.0
    fee_fixed_f: Mapping[str, float] = field(default_factory=dict)
    fee_fixed: Mapping[str, Decimal] = field(default_factory=dict)

    def static_exclusion(
        self,
        currency: str | None,
        country: str | None,
        method: str | None,
        capture: str | None,
        session_type: str | None = "one_time",
    ) -> str | None:
        """Why this provider cannot take a request with these fields, or None."""
        if not self.enabled:
            return "disabled in the routing rules"
        if not self.has_adapter:
            return "no adapter is loaded for this provider"
        checks = (
            ("adapter does not support payment method", self.cap_methods, method),
            ("adapter does not support currency", self.cap_currencies, currency),
            ("adapter does not serve billing country", self.cap_countries, country),
            ("adapter does not support capture method", self.cap_captures, capture),
            ("adapter does not support session type", self.cap_session_types, session_type),
            ("routing rules do not allow payment method", self.methods, method),
            ("routing rules do not allow currency", self.currencies, currency),
            ("routing rules do not allow billing country", self.countries, country),
            ("routing rules do not allow capture method", self.captures, capture),
        )
        for text, allowed, value in checks:
            if allowed is not None and value not in allowed:
                return f"{text} {value if value is not None else '(none given)'}"
        return None

    def amount_exclusion(self, currency: str, amount: Decimal) -> str | None:
        """Why ``amount`` (major units of ``currency``) is out of bounds, or None."""
        low, high = self.cap_limits
        if low is not None and amount < low:
            return f"amount {amount:f} {currency} is below the adapter's minimum {low:f}"
        if high is not None and amount > high:
            return f"amount {amount:f} {currency} is above the adapter's maximum {high:f}"
        low, high = self.limits_per_currency.get(currency, self.limits)
        if low is not None and amount < low:
            return f"amount {amount:f} {currency} is below the minimum {low:f} {_OF_RULES}"
        if high is not None and amount > high:
            return (
                f"amount {amount:f} {currency} is above the maximum {high:f} of the routing rules"
            )
        return None

    def fee(self, currency: str, amount: Decimal) -> Decimal | None:
        """The provider's fee for ``amount`` (exact), or None when no fees are configured."""
        if self.fee_rate is None:
            return None
        return MONEY_CONTEXT.fma(amount, self.fee_rate, self.fee_fixed.get(currency, _ZERO))


def compile_providers(
    model: RulesFile, capabilities: Mapping[str, Capabilities] | None
) -> tuple[tuple[CompiledProvider, ...], tuple[Exclusion, ...]]:
    """Compile every configured provider (sorted by name) and exclude unconfigured adapters."""
    order = {name: index for index, name in enumerate(model.scoring.fallback_order)}
    out: list[CompiledProvider] = []
    for name in sorted(model.providers):
        conf = model.providers[name]
        caps = None if capabilities is None else capabilities.get(name)
        limits: _Limits = (conf.amount.min, conf.amount.max) if conf.amount else (None, None)
        fees = conf.fees
        out.append(
            CompiledProvider(
                name=name,
                enabled=conf.enabled,
                has_adapter=capabilities is None or caps is not None,
                preference=conf.preference,
                rank=order.get(name, len(order)),
                cap_methods=_frozen(caps.payment_methods) if caps else None,
                cap_currencies=_frozen(caps.currencies) if caps else None,
                cap_countries=_frozen(caps.countries) if caps else None,
                cap_captures=_frozen(caps.capture_methods) if caps else None,
                cap_session_types=_frozen(caps.session_types) if caps else None,
                cap_limits=(caps.min_amount, caps.max_amount) if caps else (None, None),
                methods=_frozen(conf.payment_methods),
                currencies=_frozen(conf.currencies),
                countries=_frozen(conf.countries),
                captures=_frozen(conf.capture_methods),
                limits=limits,
                limits_per_currency={
                    c: (lim.min, lim.max) for c, lim in conf.amount_per_currency.items()
                },
                fee_percent=fees.percent if fees is not None else None,
                fee_rate=MONEY_CONTEXT.divide(fees.percent, 100) if fees is not None else None,
                fee_fixed=dict(fees.fixed) if fees is not None else {},
                fee_rate_f=float(fees.percent / 100) if fees is not None else 0.0,
                fee_fixed_f={c: float(v) for c, v in fees.fixed.items()} if fees else {},
            )
        )
    unrouted = tuple(
        Exclusion(name, "not configured in the routing rules")
        for name in sorted(capabilities or {})
        if name not in model.providers
    )
    return tuple(out), unrouted


def adapter_checks_of(adapters: Mapping[str, Any]) -> dict[str, AdapterCheck]:
    """The ``eligibility_problem`` of every adapter (instance or class) that has one; bare
    :class:`Capabilities` have none."""
    return {
        name: adapter.eligibility_problem
        for name, adapter in adapters.items()
        if isinstance(adapter, EligibilityCheck)
    }


def adapter_exclusions(
    checks: Mapping[str, AdapterCheck], request: CheckoutRequest
) -> dict[str, str]:
    """Provider -> why its adapter cannot take ``request``, for the engine to exclude it.

    A check that raises is a bug in that adapter: the provider is excluded, naming the
    exception's type (never its message, which may quote the request).
    """
    out: dict[str, str] = {}
    for name, check in checks.items():
        try:
            problem = check(request)
        except Exception as exc:
            log.error(
                "adapter eligibility check failed",
                extra={"provider": name, "exception_type": type(exc).__name__},
            )
            problem = f"its eligibility check failed ({type(exc).__name__})"
        if problem:
            out[name] = ADAPTER_REFUSES + problem
    return out
