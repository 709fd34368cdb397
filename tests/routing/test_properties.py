"""Property tests: decisions are deterministic, complete, and never pick an ineligible provider.

The oracle below re-implements matching and eligibility naively over the pydantic models, so
the compiled closures, the plan cache and the index are checked against an independent reading
of the rules.
"""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.routing.compiled import compile_rules
from gateway.routing.conditions import Condition
from gateway.routing.engine import decide
from gateway.routing.features import Features
from gateway.routing.rules import LoadedRules, RulesFile
from gateway.routing.stats import Counters, StatsSnapshot
from providers.base import Capabilities

NAMES = ["stripe", "adyen", "paypal", "mollie"]
CURRENCIES = ["EUR", "USD", "AUD", "GBP"]
COUNTRIES = ["NL", "DE", "AU", "US"]
METHODS = ["card", "paypal", "ideal", "klarna"]

small_sets = lambda values: st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True)  # noqa: E731
amounts = st.integers(min_value=0, max_value=500_000).map(lambda n: Decimal(n).scaleb(-2))


def _range() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {}, optional={"gte": amounts.map(str), "lt": amounts.map(str)}
    ).filter(bool)


atoms = st.one_of(
    small_sets(CURRENCIES).map(lambda v: {"currency": v}),
    small_sets(COUNTRIES).map(lambda v: {"country": v}),
    small_sets(METHODS).map(lambda v: {"payment_method": v}),
    st.sampled_from(["automatic", "manual"]).map(lambda v: {"capture_method": v}),
    small_sets(["m1", "m2"]).map(lambda v: {"merchant": v}),
    small_sets(["en", "nl_NL", "de"]).map(lambda v: {"locale": v}),
    _range().map(lambda r: {"amount": r}),
    st.integers(1, 4).map(lambda n: {"items": {"gte": n}}),
    st.integers(1, 6).map(lambda n: {"quantity": {"lte": n}}),
    st.sampled_from(
        [
            {"key": "channel"},
            {"key": "channel", "values": ["b2b"]},
            {"key": "promo", "values": ["x", "y"]},
        ]
    ).map(lambda t: {"additional_information": t}),
)
conditions = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"all": cs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"any": cs}),
        inner.map(lambda c: {"not": c}),
        st.tuples(inner, inner).map(lambda pair: {**pair[1], **pair[0]}),
    ),
    max_leaves=5,
)


@st.composite
def actions(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    kind = draw(st.sampled_from(["boost", "penalize", "exclude", "pin", "split"]))
    if kind in ("boost", "penalize"):
        return {kind: {draw(st.sampled_from(names)): draw(st.integers(1, 60))}}
    if kind == "exclude":
        return {
            "exclude": draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
        }
    if kind == "pin" or len(names) < 2:
        return {"pin": draw(st.sampled_from(names))}
    a, b = draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True))
    cut = draw(st.integers(1, 99))
    return {"split": {a: cut, b: 100 - cut}}


@st.composite
def rule_sets(draw: st.DrawFn) -> tuple[RulesFile, dict[str, Capabilities]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=4, unique=True))
    sometimes = st.integers(0, 3).map(lambda n: n == 3)  # true about one time in four
    providers: dict[str, Any] = {}
    for name in names:
        conf: dict[str, Any] = {
            "enabled": not draw(sometimes),
            "preference": draw(st.integers(0, 100)),
        }
        if draw(sometimes):
            conf["currencies"] = draw(small_sets(CURRENCIES))
        if draw(sometimes):
            conf["payment_methods"] = draw(small_sets(METHODS))
        if draw(sometimes):
            conf["amount"] = {"max": str(draw(amounts))}
        if draw(st.booleans()):
            conf["fees"] = {
                "percent": str(draw(st.integers(0, 400)) / 100),
                "fixed": {"EUR": "0.25"},
            }
        providers[name] = conf
    rules = [
        {
            "id": f"r{i}",
            "priority": draw(st.integers(0, 3)),
            "when": draw(conditions),
            "then": draw(actions(names)),
        }
        for i in range(draw(st.integers(0, 6)))
    ]
    scoring = {
        "weights": {
            k: draw(st.integers(0, 5)) for k in ("preference", "success_rate", "latency", "cost")
        },
        "fallback_order": draw(st.permutations(names)),
        "exploration": draw(st.sampled_from([0, 0, 0.2])),
    }
    if sum(scoring["weights"].values()) == 0:
        scoring["weights"]["preference"] = 1
    model = RulesFile.model_validate(
        {
            "schema_version": 1,
            "version": "p",
            "providers": providers,
            "rules": rules,
            "scoring": scoring,
        }
    )
    adapters = [n for n in names if not draw(sometimes)]
    adapters += draw(st.lists(st.sampled_from(NAMES), max_size=1))
    caps = {
        name: Capabilities(
            payment_methods=frozenset(
                METHODS if not draw(sometimes) else draw(small_sets(METHODS))
            ),
            currencies=frozenset(draw(small_sets(CURRENCIES))) if draw(sometimes) else None,
            max_amount=draw(amounts) if draw(sometimes) else None,
        )
        for name in adapters
    }
    return model, caps


requests = st.builds(
    Features,
    merchant=st.sampled_from(["m1", "m2"]),
    order_reference=st.text(min_size=1, max_size=12),
    currency=st.sampled_from(CURRENCIES),
    payment_method=st.sampled_from(METHODS),
    amount=amounts,
    country=st.sampled_from([*COUNTRIES, None]),
    capture_method=st.sampled_from(["automatic", "manual"]),
    locale=st.sampled_from(["en_US", "nl_NL", "de_DE", None]),
    item_count=st.integers(1, 5),
    quantity=st.integers(1, 8),
    info=st.sampled_from([{}, {"channel": "b2b"}, {"channel": "web"}, {"promo": "x"}]),
)
unavailable = st.dictionaries(st.sampled_from(NAMES), st.just("circuit open"), max_size=2)
snapshots = st.dictionaries(
    st.tuples(st.sampled_from(NAMES), st.just("all"), st.just("")),
    st.builds(Counters, st.floats(0, 500), st.floats(0, 500), st.floats(0, 1e6), st.floats(0, 500)),
    max_size=4,
).map(lambda d: StatsSnapshot.of(d, 1.0))


def matches(c: Condition, f: Features) -> bool:
    """A naive, independent reading of a condition."""
    checks: list[bool] = []
    if c.currency is not None:
        checks.append(f.currency in c.currency)
    if c.country is not None:
        checks.append(f.country in c.country)
    if c.payment_method is not None:
        checks.append(f.payment_method in c.payment_method)
    if c.capture_method is not None:
        checks.append(f.capture_method in c.capture_method)
    if c.merchant is not None:
        checks.append(f.merchant in c.merchant)
    if c.locale is not None:
        checks.append(
            f.locale is not None
            and any(f.locale == v or f.locale.split("_")[0] == v for v in c.locale)
        )
    for name, value in (("amount", f.amount), ("items", f.item_count), ("quantity", f.quantity)):
        r = getattr(c, name)
        if r is not None:
            checks.append(
                (r.gt is None or value > r.gt)
                and (r.gte is None or value >= r.gte)
                and (r.lt is None or value < r.lt)
                and (r.lte is None or value <= r.lte)
            )
    for t in c.additional_information or ():
        checks.append(t.key in f.info and (t.values is None or f.info[t.key] in t.values))
    if c.all_ is not None:
        checks.append(all(matches(x, f) for x in c.all_))
    if c.any_ is not None:
        checks.append(any(matches(x, f) for x in c.any_))
    if c.not_ is not None:
        checks.append(not matches(c.not_, f))
    return all(checks)


def eligible(
    name: str,
    model: RulesFile,
    caps: dict[str, Capabilities],
    f: Features,
    excluded_by_rules: set[str],
    down: dict[str, str],
) -> bool:
    conf = model.providers.get(name)
    cap = caps.get(name)
    if conf is None or cap is None or not conf.enabled:
        return False
    if f.payment_method not in cap.payment_methods:
        return False
    if cap.currencies is not None and f.currency not in cap.currencies:
        return False
    if cap.max_amount is not None and f.amount > cap.max_amount:
        return False
    if conf.currencies is not None and f.currency not in conf.currencies:
        return False
    if conf.payment_methods is not None and f.payment_method not in conf.payment_methods:
        return False
    if conf.amount is not None and conf.amount.max is not None and f.amount > conf.amount.max:
        return False
    return name not in excluded_by_rules and name not in down


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_sets(), st.lists(requests, min_size=1, max_size=5), unavailable, snapshots)
def test_decisions_are_sound_complete_and_deterministic(
    rules: tuple[RulesFile, dict[str, Capabilities]],
    fs: list[Features],
    down: dict[str, str],
    stats: StatsSnapshot,
) -> None:
    model, caps = rules
    loaded = LoadedRules(model, "0" * 64, "<prop>", {})
    compiled = compile_rules(loaded, caps)
    again = compile_rules(loaded, caps)
    order = sorted(enumerate(model.rules), key=lambda item: (-item[1].priority, item[0]))
    for f in fs:
        decision = decide(f, compiled, stats, down)
        assert decide(f, compiled, stats, down) == decision
        assert decide(f, again, stats, down) == decision

        fired = [r for _, r in order if r.when is None or matches(r.when, f)]
        assert decision.matched_rules == tuple(r.id for r in fired)
        ruled_out = {p for r in fired for p in r.then.exclude or ()}

        ranked = [c.provider for c in decision.ranked]
        excluded = [e.provider for e in decision.excluded]
        assert len(set(ranked)) == len(ranked)
        assert not set(ranked) & set(excluded)
        assert set(ranked) | set(excluded) == set(model.providers) | set(caps)
        for name in ranked:
            assert eligible(name, model, caps, f, ruled_out, down), name
        for name in excluded:
            assert not eligible(name, model, caps, f, ruled_out, down), name
            assert next(e.reason for e in decision.excluded if e.provider == name)

        for c in decision.ranked:
            assert math.isclose(math.fsum(c.components.values()), c.score, abs_tol=1e-9)
            assert -1e-9 <= c.score <= 100 + 1e-9
        rest = decision.ranked[1:]
        assert all(round(a.score, 9) >= round(b.score, 9) for a, b in itertools.pairwise(rest))
        if decision.ranked and not decision.notes:
            assert round(decision.ranked[0].score, 9) == max(
                round(c.score, 9) for c in decision.ranked
            )


@settings(max_examples=400, deadline=None)
@given(conditions, conditions, st.lists(requests, min_size=1, max_size=20))
def test_the_linter_analysis_is_sound(
    narrow: dict[str, Any], wide: dict[str, Any], fs: list[Features]
) -> None:
    """'Never matches' and 'implies' are only claimed when no request contradicts them."""
    from gateway.routing.analysis import implies, never_matches

    a, b = Condition.model_validate(narrow), Condition.model_validate(wide)
    if never_matches(a):
        assert not any(matches(a, f) for f in fs)
    if implies(a, b):
        assert all(matches(b, f) for f in fs if matches(a, f))
