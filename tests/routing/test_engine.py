"""The engine: eligibility with reasons, scoring components, ranking, the repository rules."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from gateway.routing.compiled import compile_rules
from gateway.routing.engine import COMPONENTS, decide
from gateway.routing.features import extract_features
from gateway.routing.rules import load_rules_file
from gateway.routing.stats import Counters, StatsSnapshot
from providers.base import Capabilities
from tests.routing.helpers import (
    OPEN,
    ROOT,
    compiled,
    features,
    first,
    reasons,
    route,
    seed_request,
)

CARDS = Capabilities(payment_methods=frozenset({"card"}))


def test_eligibility_by_adapter_capabilities() -> None:
    caps = {
        "stripe": Capabilities(payment_methods=frozenset({"card"}), currencies=frozenset({"USD"})),
        "adyen": Capabilities(payment_methods=frozenset({"ideal"})),
        "paypal": Capabilities(payment_methods=frozenset({"card"}), countries=frozenset({"US"})),
    }
    d = route(compiled(capabilities=caps))
    assert d.ranked == ()
    assert reasons(d) == {
        "stripe": "adapter does not support currency AUD",
        "adyen": "adapter does not support payment method card",
        "paypal": "adapter does not serve billing country AU",
    }


def test_capture_and_amount_limits_of_the_adapter() -> None:
    caps = {
        "stripe": Capabilities(
            payment_methods=frozenset({"card"}), capture_methods=frozenset({"automatic"})
        ),
        "adyen": Capabilities(payment_methods=frozenset({"card"}), max_amount=Decimal("100")),
        "paypal": Capabilities(payment_methods=frozenset({"card"}), min_amount=Decimal("140.76")),
    }
    d = route(compiled(capabilities=caps), features(captureMethod="manual"))
    assert [c.provider for c in d.ranked] == ["paypal"]
    assert reasons(d) == {
        "stripe": "adapter does not support capture method manual",
        "adyen": "amount 140.76 AUD is above the adapter's maximum 100",
    }


def test_rules_narrow_what_the_adapter_declares() -> None:
    rules = compiled(
        {
            "stripe": {"currencies": ["USD", "EUR"]},
            "adyen": {"countries": ["NL"]},
            "paypal": {"payment_methods": ["paypal"]},
        },
        capabilities={"stripe": OPEN, "adyen": OPEN, "paypal": OPEN},
    )
    assert reasons(route(rules)) == {
        "stripe": "routing rules do not allow currency AUD",
        "adyen": "routing rules do not allow billing country AU",
        "paypal": "routing rules do not allow payment method card",
    }


def test_amount_limits_per_currency_override_the_default() -> None:
    rules = compiled(
        {
            "stripe": {
                "amount": {"min": 1, "max": 100},
                "amount_per_currency": {"AUD": {"max": 200}},
            },
            "adyen": {"amount": {"max": 100}},
            "paypal": {"amount": {"min": 500}},
        }
    )
    d = route(rules)
    assert [c.provider for c in d.ranked] == ["stripe"]
    assert reasons(d) == {
        "adyen": "amount 140.76 AUD is above the maximum 100 of the routing rules",
        "paypal": "amount 140.76 AUD is below the minimum 500 of the routing rules",
    }


def test_disabled_missing_adapter_unconfigured_adapter_and_open_circuit() -> None:
    rules = compiled(
        {"stripe": {"enabled": False}, "adyen": {}, "paypal": {}, "mollie": {}},
        capabilities={"stripe": OPEN, "adyen": OPEN, "paypal": OPEN, "braintree": OPEN},
    )
    d = route(rules, unavailable={"adyen": "circuit open", "unknown": "x"})
    assert [c.provider for c in d.ranked] == ["paypal"]
    assert reasons(d) == {
        "stripe": "disabled in the routing rules",
        "adyen": "circuit open",
        "mollie": "no adapter is loaded for this provider",
        "braintree": "not configured in the routing rules",
    }
    assert [e.provider for e in d.excluded] == sorted(reasons(d))


def test_nothing_eligible_gives_empty_ranking_with_every_reason() -> None:
    rules = compiled({"stripe": {"currencies": ["USD"]}, "adyen": {"payment_methods": ["ideal"]}})
    d = route(rules)
    assert d.ranked == ()
    assert first(d) is None
    assert d.exclusion_details() == [
        {"provider": "adyen", "reason": "routing rules do not allow payment method card"},
        {"provider": "stripe", "reason": "routing rules do not allow currency AUD"},
    ]
    assert d.explain()["selectedProvider"] is None


def test_components_add_up_to_the_score_and_follow_the_weights() -> None:
    rules = compiled(
        {
            "stripe": {"preference": 80, "fees": {"percent": 2, "fixed": {"AUD": "0.30"}}},
            "adyen": {"preference": 40, "fees": {"percent": 1}},
            "paypal": {"preference": 0},
        },
        scoring={"weights": {"preference": 2, "success_rate": 1, "latency": 1, "cost": 0}},
    )
    d = route(rules)
    for c in d.ranked:
        assert tuple(c.components) == COMPONENTS
        assert math.fsum(c.components.values()) == pytest.approx(c.score, abs=1e-9)
        assert 0.0 <= c.score <= 100.0
    stripe = next(c for c in d.ranked if c.provider == "stripe")
    assert stripe.components["preference"] == pytest.approx(50.0 * 0.8)
    assert stripe.components["cost"] == 0.0
    assert stripe.details["fee"] == "3.1152"  # 140.76 * 2% + 0.30, exact
    assert stripe.details["successRate"] == pytest.approx(0.97 * 0.75)
    assert stripe.components["latency"] == pytest.approx(25.0 * 0.5)  # neutral latency prior


def test_cost_score_is_exact_fee_over_amount() -> None:
    rules = compiled(
        {"stripe": {"fees": {"percent": "2.5"}}, "adyen": {"fees": {"percent": 5}}, "paypal": {}},
        scoring={"weights": {"preference": 0, "success_rate": 0, "latency": 0, "cost": 1}},
    )
    scores = {c.provider: c.score for c in route(rules).ranked}
    assert scores == {
        "stripe": pytest.approx(50.0),
        "adyen": pytest.approx(0.0),
        "paypal": pytest.approx(50.0),
    }


def test_ties_break_by_fallback_order_then_name() -> None:
    providers = {"stripe": {}, "adyen": {}, "paypal": {}, "zeta": {}}
    plain = compiled(providers)
    assert [c.provider for c in route(plain).ranked] == ["adyen", "paypal", "stripe", "zeta"]
    ordered = compiled(providers, scoring={"fallback_order": ["zeta", "stripe"]})
    assert [c.provider for c in route(ordered).ranked] == ["zeta", "stripe", "adyen", "paypal"]


def test_learnt_success_rate_changes_the_ranking() -> None:
    rules = compiled({"stripe": {}, "adyen": {}})
    good = StatsSnapshot.of(
        {
            ("stripe", "all", ""): Counters(creation_ok=100, creation_fail=100),
            ("adyen", "all", ""): Counters(creation_ok=200),
        },
        as_of=1.0,
    )
    d = route(rules, stats=good)
    assert first(d) == "adyen"
    assert d.ranked[0].details["successSamples"] == 200


def test_decision_names_the_rules_version_and_is_deterministic() -> None:
    rules = compiled(version="2024-01-01.3")
    a, b = route(rules), route(rules)
    assert a == b
    assert a.rules_version.startswith("2024-01-01.3@")
    assert len(a.rules_version) == len("2024-01-01.3@") + 8
    assert a.decision_id.startswith("rd_")
    other = route(rules, features(orderReference="ORD-other"))
    assert other.decision_id != a.decision_id
    assert decide(features(), rules, StatsSnapshot(), decision_id="given").decision_id == "given"


def test_repository_rules_route_the_seed_request_with_an_explanation() -> None:
    loaded = load_rules_file(ROOT / "routing_rules.yaml")
    from tests.routing.helpers import ALL_METHODS

    caps = {n: Capabilities(payment_methods=ALL_METHODS) for n in ("stripe", "adyen", "paypal")}
    rules = compile_rules(loaded, caps)
    decision = decide(extract_features(seed_request(), "merchant-1"), rules, StatsSnapshot())
    assert decision.ranked, decision.excluded
    assert {c.provider for c in decision.ranked} == {"stripe", "adyen"}
    assert {e.provider: e.reason for e in decision.excluded} == {
        "paypal": "routing rules do not allow payment method card"
    }
    assert "au-cards-split" in decision.matched_rules
    assert decision.rules_version == f"{loaded.rules.version}@{loaded.content_hash[:8]}"
    explained = decision.explain()
    for c in explained["candidates"]:
        assert sum(c["components"].values()) == pytest.approx(c["score"], abs=5e-4)
        assert set(c["components"]) == set(COMPONENTS)
    for c in decision.ranked:
        assert math.fsum(c.components.values()) == pytest.approx(c.score, abs=1e-9)
    assert explained["selectedProvider"] == decision.ranked[0].provider
    assert any(n.startswith("rule au-cards-split: split bucket") for n in explained["notes"])


def test_session_type_is_a_capability() -> None:
    caps = {
        "stripe": Capabilities(payment_methods=frozenset({"card"})),
        "adyen": Capabilities(
            payment_methods=frozenset({"card"}),
            session_types=frozenset({"one_time", "first_in_series"}),
        ),
    }
    rules = compiled({"stripe": {}, "adyen": {}}, capabilities=caps)
    d = route(rules, features(sessionType="first_in_series"))
    assert [c.provider for c in d.ranked] == ["adyen"]
    assert reasons(d) == {"stripe": "adapter does not support session type first_in_series"}
    assert len(route(rules).ranked) == 2
