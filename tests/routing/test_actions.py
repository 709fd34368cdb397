"""Rule actions: boost, penalize, exclude, pin, split (stable per orderReference)."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing.engine import decide
from gateway.routing.stats import StatsSnapshot
from tests.routing.helpers import compiled, features, first, reasons, route

NEUTRAL = {"weights": {"preference": 1, "success_rate": 0, "latency": 0, "cost": 0}}


def candidate(decision, name):  # type: ignore[no-untyped-def]
    return next(c for c in decision.ranked if c.provider == name)


def test_boost_and_penalize_move_the_preference_component() -> None:
    rules = compiled(
        rules=[
            {"id": "up", "then": {"boost": {"adyen": 20}}},
            {"id": "down", "then": {"penalize": {"stripe": 15}, "boost": {"adyen": 5}}},
        ],
        scoring=NEUTRAL,
    )
    d = route(rules)
    assert candidate(d, "adyen").components["preference"] == pytest.approx(75.0)  # 50 + 20 + 5
    assert candidate(d, "stripe").components["preference"] == pytest.approx(35.0)
    assert candidate(d, "adyen").details["rulePoints"] == 25.0
    assert first(d) == "adyen"


def test_preference_is_clamped_to_0_100() -> None:
    rules = compiled(
        {"stripe": {"preference": 90}, "adyen": {"preference": 5}},
        [{"id": "a", "then": {"boost": {"stripe": 50}, "penalize": {"adyen": 50}}}],
        NEUTRAL,
    )
    d = route(rules)
    assert candidate(d, "stripe").score == pytest.approx(100.0)
    assert candidate(d, "adyen").score == pytest.approx(0.0)


def test_exclude_names_the_rule() -> None:
    rules = compiled(rules=[{"id": "no-paypal", "then": {"exclude": ["paypal", "stripe"]}}])
    d = route(rules)
    assert [c.provider for c in d.ranked] == ["adyen"]
    assert reasons(d) == {
        "paypal": "excluded by rule no-paypal",
        "stripe": "excluded by rule no-paypal",
    }


def test_pin_puts_its_provider_first_and_keeps_the_rest_as_failover() -> None:
    rules = compiled(
        {"stripe": {"preference": 90}, "adyen": {"preference": 10}, "paypal": {"preference": 50}},
        [{"id": "pin-adyen", "then": {"pin": "adyen"}}],
        NEUTRAL,
    )
    d = route(rules)
    assert [c.provider for c in d.ranked] == ["adyen", "stripe", "paypal"]
    assert "rule pin-adyen: pinned adyen" in d.notes


def test_highest_priority_pin_wins_and_the_other_is_noted() -> None:
    rules = compiled(
        rules=[
            {"id": "low", "priority": 1, "then": {"pin": "stripe"}},
            {"id": "high", "priority": 5, "then": {"pin": "paypal"}},
        ]
    )
    d = route(rules)
    assert first(d) == "paypal"
    assert "rule low: placement overridden by higher-priority rule high" in d.notes


def test_a_pin_to_an_ineligible_provider_is_skipped() -> None:
    rules = compiled(
        rules=[
            {"id": "pin-paypal", "priority": 5, "then": {"pin": "paypal"}},
            {"id": "pin-adyen", "priority": 1, "then": {"pin": "adyen"}},
        ]
    )
    d = route(rules, unavailable={"paypal": "circuit open"})
    assert first(d) == "adyen"
    assert "rule pin-paypal: no eligible provider to place, ignored" in d.notes
    assert reasons(d) == {"paypal": "circuit open"}


SPLIT = [{"id": "ab", "then": {"split": {"stripe": 70, "adyen": 30}}}]


def test_split_shares_traffic_by_percent() -> None:
    rules = compiled(rules=SPLIT)
    counts = Counter(first(route(rules, features(orderReference=f"ORD-{i}"))) for i in range(4000))
    assert counts["paypal"] == 0
    assert 0.66 < counts["stripe"] / 4000 < 0.74
    assert 0.26 < counts["adyen"] / 4000 < 0.34


def test_split_is_stable_per_order_reference_across_recompiles_and_stats() -> None:
    before = compiled(rules=SPLIT, version="a")
    after = compiled(rules=[*SPLIT, {"id": "other", "then": {"boost": {"paypal": 3}}}], version="b")
    busy = StatsSnapshot.of({("stripe", "all", ""): _failing()}, 1.0)
    for i in range(200):
        f = features(orderReference=f"ORD-{i}")
        chosen = first(decide(f, before, StatsSnapshot()))
        assert first(decide(f, before, StatsSnapshot())) == chosen
        assert first(decide(f, after, busy)) == chosen


def _failing():  # type: ignore[no-untyped-def]
    from gateway.routing.stats import Counters

    return Counters(creation_ok=10, creation_fail=500)


def test_changing_a_split_moves_only_the_difference() -> None:
    old = compiled(rules=SPLIT)
    new = compiled(rules=[{"id": "ab", "then": {"split": {"stripe": 60, "adyen": 40}}}])
    moved = sum(
        first(route(old, features(orderReference=f"O{i}")))
        != first(route(new, features(orderReference=f"O{i}")))
        for i in range(3000)
    )
    assert 0.07 < moved / 3000 < 0.13


def test_split_when_the_drawn_provider_is_ineligible_stays_within_the_split() -> None:
    rules = compiled(
        rules=[{"id": "abc", "then": {"split": {"stripe": 50, "adyen": 30, "paypal": 20}}}]
    )
    picks = Counter(
        first(
            route(rules, features(orderReference=f"R{i}"), unavailable={"stripe": "circuit open"})
        )
        for i in range(2000)
    )
    assert set(picks) == {"adyen", "paypal"}
    assert 0.52 < picks["adyen"] / 2000 < 0.68  # 30 : 20


def test_split_is_salted_by_merchant() -> None:
    rules = compiled(rules=SPLIT)
    differ = sum(
        first(route(rules, features("m1", orderReference=f"X{i}")))
        != first(route(rules, features("m2", orderReference=f"X{i}")))
        for i in range(500)
    )
    assert differ > 50


def test_exploration_promotes_a_stable_small_share() -> None:
    rules = compiled(
        {"stripe": {"preference": 90}, "adyen": {"preference": 10}, "paypal": {"enabled": False}},
        scoring={**NEUTRAL, "exploration": 0.1},
    )
    picks = [route(rules, features(orderReference=f"E{i}")) for i in range(3000)]
    explored = [d for d in picks if first(d) == "adyen"]
    assert 0.07 < len(explored) / 3000 < 0.13
    assert all(any(n.startswith("exploration:") for n in d.notes) for d in explored)
    assert [first(route(rules, features(orderReference=f"E{i}"))) for i in range(50)] == [
        first(d) for d in picks[:50]
    ]


def test_no_exploration_when_a_rule_placed_the_request() -> None:
    rules = compiled(rules=[{"id": "pin", "then": {"pin": "paypal"}}], scoring={"exploration": 0.5})
    assert all(
        first(route(rules, features(orderReference=f"P{i}"))) == "paypal" for i in range(300)
    )
