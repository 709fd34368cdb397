"""Routing and the adapters agree on what a provider can take: one source of truth.

The adapters' own ``eligibility_problem`` is what the router excludes on, so the provider that
``POST /routing/simulate`` ranks first is the one the create path tries first, and it never
answers ``not_supported``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.models import CheckoutRequest, semantic_problems
from gateway.domain.money import exponent
from gateway.routing.service import Router
from gateway.routing.simulate import read_samples, simulate
from providers.adyen.adapter import AdyenAdapter
from providers.paypal.adapter import PayPalAdapter
from providers.stripe.adapter import StripeAdapter
from tests.api.conftest import GatewayFactory, headers, seed

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "bench/routing_samples.jsonl"
#: the adapters' classes: their capabilities and eligibility checks need no I/O
ADAPTERS: dict[str, Any] = {
    "stripe": StripeAdapter,
    "adyen": AdyenAdapter,
    "paypal": PayPalAdapter,
}


def router() -> Router:
    return Router(ROOT / "routing_rules.yaml", ADAPTERS)


def assert_agrees(decision: Any, request: CheckoutRequest) -> None:
    """Every ranked provider's adapter takes the request; every refusing one is excluded."""
    for candidate in decision.ranked:
        assert ADAPTERS[candidate.provider].eligibility_problem(request) is None, candidate
    excluded = {e.provider: e.reason for e in decision.excluded}
    for name, adapter in ADAPTERS.items():
        problem = adapter.eligibility_problem(request)
        if problem is not None:
            assert name in excluded, (name, problem)


def test_every_bench_sample_is_routed_to_a_provider_that_takes_it() -> None:
    samples, problems = read_samples(SAMPLES)
    assert not problems
    assert len(samples) == 50
    active = router()
    for sample in samples:
        decision = active.decide(
            sample.request, sample.merchant, unavailable=sample.unavailable, dry_run=True
        )
        assert decision.ranked, sample.line
        assert_agrees(decision, sample.request)


def test_the_offline_replay_applies_the_same_checks() -> None:
    from gateway.routing.check import adapter_checks

    samples, _ = read_samples(SAMPLES)
    active = router()
    offline = simulate(active.rules, samples, checks=adapter_checks(ADAPTERS))
    online = [
        active.decide(s.request, s.merchant, unavailable=s.unavailable, dry_run=True)
        for s in samples
    ]
    assert [d.ranked[0].provider for _, d in offline.decisions] == [
        d.ranked[0].provider for d in online
    ]


def test_ideal_in_usd_excludes_stripe_with_its_reason() -> None:
    body = seed(paymentMethod="ideal", currency="USD")
    request = CheckoutRequest.model_validate(body)
    decision = router().decide(request, "m", dry_run=True)
    assert [c.provider for c in decision.ranked] == ["adyen"]
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons["stripe"] == "adapter cannot take this request: Stripe offers ideal only in EUR"


def test_stripes_eight_digit_bound_excludes_it_where_the_rules_would_not() -> None:
    # 500000.000 KWD: within the rules' 999999.99 but 500000000 minor units at Stripe
    body = seed(
        currency="KWD",
        amount={"total": 500000, "shipping": 0, "tax": 0},
        orderItems=[{"name": "Car", "quantity": 1, "unitPrice": 500000}],
    )
    request = CheckoutRequest.model_validate(body)
    decision = router().decide(request, "m", dry_run=True)
    assert [c.provider for c in decision.ranked] == ["adyen"]
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons["stripe"] == (
        "adapter cannot take this request: Stripe accepts KWD amounts up to 99999.999 "
        "(99999999 minor units)"
    )


_METHODS = ["card", "paypal", "apple_pay", "google_pay", "ideal", "klarna", "sepa_debit"]
_CURRENCIES = ["EUR", "USD", "GBP", "JPY", "KWD", "HUF", "TWD", "CVE", "CLP", "ISK", "MGA", "SEK"]


@st.composite
def requests(draw: st.DrawFn) -> CheckoutRequest:
    currency = draw(st.sampled_from(_CURRENCIES))
    places = exponent(currency)
    minor = st.integers(min_value=0, max_value=10**places * 2_000_000)
    units = draw(st.lists(minor, min_size=1, max_size=3))
    quantities = draw(st.lists(st.integers(1, 5), min_size=len(units), max_size=len(units)))
    shipping = Decimal(draw(minor)).scaleb(-places)
    prices = [Decimal(u).scaleb(-places) for u in units]
    total = sum((p * q for p, q in zip(prices, quantities, strict=True)), shipping)
    body = seed(
        orderReference=f"ORD-{draw(st.integers(0, 10**6))}",
        paymentMethod=draw(st.sampled_from(_METHODS)),
        currency=currency,
        captureMethod=draw(st.sampled_from(["automatic", "manual"])),
        sessionType=draw(st.sampled_from(["one_time", "first_in_series"])),
        amount={"total": total, "shipping": shipping, "tax": 0},
        orderItems=[
            {"name": f"Item {i}", "quantity": q, "unitPrice": p}
            for i, (p, q) in enumerate(zip(prices, quantities, strict=True))
        ],
    )
    country = draw(st.sampled_from(["NL", "DE", "US", "AU", "JP"]))
    body["customer"]["billingAddress"]["country"] = country
    request = CheckoutRequest.model_validate(body)
    assert not semantic_problems(request)
    return request


_ROUTER = router()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_ranked_providers_are_exactly_those_whose_adapter_takes_the_request(
    request: CheckoutRequest,
) -> None:
    assert_agrees(_ROUTER.decide(request, "m", dry_run=True), request)


async def test_simulate_and_create_agree_on_ideal_in_usd(gateway: GatewayFactory) -> None:
    client = await gateway()
    body = json.loads(json.dumps(seed(paymentMethod="ideal", currency="USD")))
    simulated = await client.post("/api/v1/routing/simulate", json=body, headers=headers(None))
    assert simulated.status == 200, await simulated.text()
    decision = await simulated.json()
    assert decision["selectedProvider"] == "adyen"
    assert {
        "provider": "stripe",
        "reason": ("adapter cannot take this request: Stripe offers ideal only in EUR"),
    } in decision["excluded"]
    created = await client.post("/api/v1/sessions", json=body, headers=headers("ideal-usd"))
    assert created.status == 201, await created.text()
    attempts = (await created.json())["routing"]["attempts"]
    assert [(a["provider"], a["outcome"]) for a in attempts] == [("adyen", "created")]


def test_exclusion_reasons_show_amounts_as_plain_decimals() -> None:
    body = seed(
        currency="USD",
        amount={"total": Decimal("1E+6"), "shipping": 0, "tax": 0},
        orderItems=[{"name": "Boat", "quantity": 1, "unitPrice": Decimal("1E+6")}],
    )
    decision = router().decide(CheckoutRequest.model_validate(body), "m", dry_run=True)
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert (
        reasons["stripe"]
        == "amount 1000000 USD is above the maximum 999999.99 of the routing rules"
    )
    assert "E+" not in str(decision.explain())


class _BrokenCheck:
    """An adapter whose eligibility check itself has a bug."""

    capabilities = StripeAdapter.capabilities

    @staticmethod
    def eligibility_problem(request: CheckoutRequest) -> str | None:
        return {"only": "this"}[request.currency]


def test_an_eligibility_check_that_raises_excludes_its_provider_by_type() -> None:
    active = Router(ROOT / "routing_rules.yaml", {**ADAPTERS, "stripe": _BrokenCheck})
    request = CheckoutRequest.model_validate(seed(currency="EUR"))
    decision = active.decide(request, "m", dry_run=True)
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons["stripe"] == (
        "adapter cannot take this request: its eligibility check failed (KeyError)"
    )
    assert [c.provider for c in decision.ranked] == ["adyen"]
