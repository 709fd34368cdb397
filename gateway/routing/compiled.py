"""Rules compiled once into what a decision needs: frozen sets, a plan cache, generated code.

Nothing here parses or validates at decision time. Each rule's top-level tests on the four
*indexed* fields (currency, country, payment method, capture method) become frozen sets; the
rest stay as its ``tests``. For each combination of the indexed fields a :class:`Plan` is built
on first use and cached: the rules that can still match it (in priority order) with their tests
compiled into generated functions (:mod:`gateway.routing.plan`), and the providers whose
static limits admit it, with the reasons of those that do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.routing.conditions import Condition
from gateway.routing.decision import Exclusion
from gateway.routing.eligibility import CompiledProvider, compile_providers
from gateway.routing.features import Features
from gateway.routing.plan import Plan
from gateway.routing.rules import LatencyScoring, Learning, LoadedRules, RulesFile
from gateway.routing.stats import Forgetting
from providers.base import Capabilities

__all__ = [
    "INDEXED",
    "CompiledRule",
    "CompiledRules",
    "Conjunct",
    "compile_rules",
    "conjuncts",
]

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


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to run: index sets, residual closure and flattened actions."""

    id: str
    priority: int
    order: int
    #: per INDEXED field, the values the request must have (None: any)
    requires: tuple[frozenset[str] | None, ...]
    #: the other top-level tests, all of which must hold (see :mod:`gateway.routing.plan`)
    tests: tuple[Conjunct, ...]
    deltas: tuple[tuple[str, float], ...]
    exclude: tuple[str, ...]
    pin: str | None
    #: (provider, cumulative upper bound in basis points), in file order
    split: tuple[tuple[str, int], ...] | None

    #: True for a pin or a split: the rule decides who goes first
    places: bool

    def admits(self, key: tuple[str | None, ...]) -> bool:
        """Whether the indexed part of the condition holds for ``key``."""
        for allowed, value in zip(self.requires, key, strict=True):
            if allowed is not None and value not in allowed:
                return False
        return True


def _compile_rule(rule: Any, order: int) -> CompiledRule:
    requires: dict[str, frozenset[str]] = {}
    rest: list[Conjunct] = []
    for kind, payload in conjuncts(rule.when) if rule.when is not None else []:
        if kind in INDEXED:
            requires[kind] = requires[kind] & payload if kind in requires else payload
        else:
            rest.append((kind, payload))
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
        tests=tuple(rest),
        deltas=tuple(deltas),
        exclude=tuple(act.exclude or ()),
        pin=act.pin,
        split=split,
        places=act.pin is not None or act.split is not None,
    )


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
        explore = model.scoring.exploration
        #: bounds on the share of orders explored (equal bounds: a fixed share)
        self.exploration_floor = explore.floor
        self.exploration_ceiling = explore.ceiling
        self.learning: Learning = model.scoring.learning
        self.adaptive = self.learning.model == "adaptive"
        #: how the stats store forgets (None: time only)
        self.forgetting = Forgetting.of(self.learning)
        learn_ = self.learning
        #: how much evidence an estimate holds, for the explanation
        self.window_text = (
            f"last ~{learn_.window_outcomes:g} outcomes, half-life {learn_.half_life_seconds:g} s"
            if self.adaptive
            else f"half-life {learn_.half_life_seconds:g} s"
        )
        self.latency: LatencyScoring = model.scoring.latency
        learn, lat = self.learning, self.latency
        #: identifies the parameters the stats estimates depend on (a snapshot memo key)
        self.stats_key = (
            learn.creation_prior.mean,
            learn.creation_prior.strength,
            learn.payment_prior.mean,
            learn.payment_prior.strength,
            learn.min_segment_samples,
            learn.model,
            lat.good_ms,
            lat.bad_ms,
            lat.prior_weight,
        )
        self.inverse_cost_max = 1.0 / float(model.scoring.cost.max_percent / 100)
        self._plans: dict[tuple[str | None, ...], Plan] = {}

    def plan(self, f: Features) -> Plan:
        """The cached :class:`Plan` for the indexed fields of ``f``."""
        key = (f.currency, f.country, f.payment_method, f.capture_method, f.session_type)
        found = self._plans.get(key)
        if found is None:
            if len(self._plans) >= _PLAN_CACHE_LIMIT:
                self._plans.clear()
            found = self._plans[key] = self._build_plan(key)
        return found

    def _build_plan(self, key: tuple[str | None, ...]) -> Plan:
        rules = tuple(r for r in self.rules if r.admits(key[: len(INDEXED)]))
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
