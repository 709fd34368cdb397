"""Rules compiled once into what a decision needs: closures, frozen sets and a plan cache.

Nothing here parses or validates at decision time. Each rule's top-level tests on the four
*indexed* fields (currency, country, payment method, capture method) become frozen sets; the
rest becomes one closure (its *residual*). For each combination of the indexed fields a
:class:`Plan` is built on first use and cached: the rules that can still match it, in priority
order, and the providers whose static limits admit it, with the reasons of those that do not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gateway.routing.conditions import AmountRange, Condition, CountRange, InfoTest
from gateway.routing.decision import Exclusion
from gateway.routing.eligibility import CompiledProvider, compile_providers
from gateway.routing.features import Features
from gateway.routing.rules import LatencyScoring, Learning, LoadedRules, RulesFile
from providers.base import Capabilities

__all__ = [
    "INDEXED",
    "CompiledRule",
    "CompiledRules",
    "Conjunct",
    "Plan",
    "Predicate",
    "compile_condition",
    "compile_rules",
    "conjuncts",
]

Predicate = Callable[[Features], bool]
#: one test of a conjunction: (kind, payload); kinds are Condition keys plus "info".
Conjunct = tuple[str, Any]
INDEXED = ("currency", "country", "payment_method", "capture_method")
_SETS = ("currency", "country", "payment_method", "capture_method", "merchant", "locale")
_PLAN_CACHE_LIMIT = 4096


def conjuncts(cond: Condition) -> list[Conjunct]:
    """The tests that must all hold, with nested ``all`` flattened in."""
    out: list[Conjunct] = []
    for name in _SETS:
        value = getattr(cond, name)
        if value is not None:
            out.append((name, frozenset(value)))
    for name in ("amount", "items", "quantity"):
        value = getattr(cond, name)
        if value is not None:
            out.append((name, value))
    for test in cond.additional_information or ():
        out.append(("info", test))
    for child in cond.all_ or ():
        out.extend(conjuncts(child))
    if cond.any_ is not None:
        out.append(("any", cond.any_))
    if cond.not_ is not None:
        out.append(("not", cond.not_))
    return out


def _bounded(get: Callable[[Features], Any], bounds: AmountRange | CountRange) -> Predicate:
    gt, gte, lt, lte = bounds.gt, bounds.gte, bounds.lt, bounds.lte

    def check(f: Features) -> bool:
        v = get(f)
        return (
            (gt is None or v > gt)
            and (gte is None or v >= gte)
            and (lt is None or v < lt)
            and (lte is None or v <= lte)
        )

    return check


def _info(test: InfoTest) -> Predicate:
    key, values = test.key, (frozenset(test.values) if test.values is not None else None)
    if values is None:
        return lambda f: key in f.info
    return lambda f: f.info.get(key) in values


def _locale(values: frozenset[str]) -> Predicate:
    full = frozenset(v for v in values if len(v) > 2)
    languages = frozenset(v for v in values if len(v) == 2)
    return lambda f: f.locale is not None and (f.locale in full or f.locale[:2] in languages)


def compile_conjunct(kind: str, payload: Any) -> Predicate:
    """One test as a closure over :class:`Features`."""
    if kind == "currency":
        return lambda f: f.currency in payload
    if kind == "country":
        return lambda f: f.country in payload
    if kind == "payment_method":
        return lambda f: f.payment_method in payload
    if kind == "capture_method":
        return lambda f: f.capture_method in payload
    if kind == "merchant":
        return lambda f: f.merchant in payload
    if kind == "locale":
        return _locale(payload)
    if kind == "amount":
        return _bounded(lambda f: f.amount, payload)
    if kind == "items":
        return _bounded(lambda f: f.item_count, payload)
    if kind == "quantity":
        return _bounded(lambda f: f.quantity, payload)
    if kind == "info":
        return _info(payload)
    if kind == "any":
        branches = tuple(compile_condition(c) for c in payload)
        return lambda f: any(b(f) for b in branches)
    if kind == "not":
        inner = compile_condition(payload)
        return lambda f: not inner(f)
    raise ValueError(f"unknown condition {kind!r}")


def _conjoin(preds: Sequence[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda f: a(f) and b(f)
    if len(preds) == 3:
        a, b, c = preds
        return lambda f: a(f) and b(f) and c(f)
    frozen = tuple(preds)

    def every(f: Features) -> bool:
        for p in frozen:  # noqa: SIM110 - a plain loop is faster than all() over a generator
            if not p(f):
                return False
        return True

    return every


def compile_condition(cond: Condition) -> Predicate:
    """A whole condition as one closure."""
    return _conjoin([compile_conjunct(k, v) for k, v in conjuncts(cond)])


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to run: index sets, residual closure and flattened actions."""

    id: str
    priority: int
    order: int
    #: per INDEXED field, the values the request must have (None: any)
    requires: tuple[frozenset[str] | None, ...]
    residual: Predicate | None
    deltas: tuple[tuple[str, float], ...]
    exclude: tuple[str, ...]
    pin: str | None
    #: (provider, cumulative upper bound in basis points), in file order
    split: tuple[tuple[str, int], ...] | None

    @property
    def places(self) -> bool:
        """True for a pin or a split: the rule decides who goes first."""
        return self.pin is not None or self.split is not None

    def admits(self, key: tuple[str | None, ...]) -> bool:
        """Whether the indexed part of the condition holds for ``key``."""
        for allowed, value in zip(self.requires, key, strict=True):
            if allowed is not None and value not in allowed:
                return False
        return True


def _compile_rule(rule: Any, order: int) -> CompiledRule:
    requires: dict[str, frozenset[str]] = {}
    rest: list[Predicate] = []
    for kind, payload in conjuncts(rule.when) if rule.when is not None else []:
        if kind in INDEXED:
            requires[kind] = requires[kind] & payload if kind in requires else payload
        else:
            rest.append(compile_conjunct(kind, payload))
    act = rule.then
    deltas = [(p, float(v)) for p, v in (act.boost or {}).items()]
    deltas += [(p, -float(v)) for p, v in (act.penalize or {}).items()]
    split = None
    if act.split is not None:
        total, cuts = 0, []
        for provider, percent in act.split.items():
            total += percent * 100
            cuts.append((provider, total))
        split = tuple(cuts)
    return CompiledRule(
        id=rule.id,
        priority=rule.priority,
        order=order,
        requires=tuple(requires.get(name) for name in INDEXED),
        residual=_conjoin(rest) if rest else None,
        deltas=tuple(deltas),
        exclude=tuple(act.exclude or ()),
        pin=act.pin,
        split=split,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """What is left to decide for one combination of the indexed fields."""

    rules: tuple[CompiledRule, ...]
    providers: tuple[CompiledProvider, ...]
    excluded: tuple[Exclusion, ...]


class CompiledRules:
    """A rule set ready for :func:`gateway.routing.engine.decide`; immutable once built."""

    def __init__(
        self, loaded: LoadedRules, capabilities: Mapping[str, Capabilities] | None
    ) -> None:
        model: RulesFile = loaded.rules
        self.model = model
        self.version = model.version
        self.content_hash = loaded.content_hash
        #: what every decision names: the file's version and the start of its content hash
        self.rules_version = f"{model.version}@{loaded.content_hash[:8]}"
        self.source = loaded.source
        self.providers, self.unrouted = compile_providers(model, capabilities)
        self.provider_names = frozenset(
            p.name for p in self.providers if p.enabled and p.has_adapter
        )
        enabled = [r for r in model.rules if r.enabled]
        ordered = sorted(enumerate(enabled), key=lambda item: (-item[1].priority, item[0]))
        self.rules = tuple(_compile_rule(rule, index) for index, rule in ordered)
        w = model.scoring.weights
        raw = (w.preference, w.success_rate, w.latency, w.cost)
        scale = 100.0 / sum(raw)
        #: points of each component at a perfect raw value; they add up to 100
        self.weights = tuple(x * scale for x in raw)
        self.exploration = model.scoring.exploration
        self.learning: Learning = model.scoring.learning
        self.latency: LatencyScoring = model.scoring.latency
        self.cost_max_fraction: Decimal = model.scoring.cost.max_percent / 100
        self._plans: dict[tuple[str | None, ...], Plan] = {}

    def plan(self, f: Features) -> Plan:
        """The cached :class:`Plan` for the indexed fields of ``f``."""
        key = (f.currency, f.country, f.payment_method, f.capture_method)
        found = self._plans.get(key)
        if found is None:
            if len(self._plans) >= _PLAN_CACHE_LIMIT:
                self._plans.clear()
            found = self._plans[key] = self._build_plan(key)
        return found

    def _build_plan(self, key: tuple[str | None, ...]) -> Plan:
        rules = tuple(r for r in self.rules if r.admits(key))
        eligible: list[CompiledProvider] = []
        excluded = list(self.unrouted)
        for provider in self.providers:
            reason = provider.static_exclusion(*key)
            if reason is None:
                eligible.append(provider)
            else:
                excluded.append(Exclusion(provider.name, reason))
        return Plan(rules, tuple(eligible), tuple(excluded))


def compile_rules(
    loaded: LoadedRules, capabilities: Mapping[str, Capabilities] | None = None
) -> CompiledRules:
    """Compile validated rules against the adapters' capabilities.

    ``capabilities`` maps each loaded adapter to what it declares; a configured provider with no
    adapter is excluded with that reason. ``None`` (the offline tools) assumes every configured
    provider has an adapter that takes anything.
    """
    return CompiledRules(loaded, capabilities)
