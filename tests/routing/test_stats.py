"""Learning: Beta priors, time decay, segments, outcome classification, the memory store."""

from __future__ import annotations

import pytest

from gateway.routing.rules import LatencyScoring, Learning, Prior
from gateway.routing.stats import (
    Counters,
    Fault,
    MemoryStatsStore,
    StatsSnapshot,
    beta_mean,
    classify_outcome,
    creation_delta,
    decay,
    estimate_latency,
    estimate_success,
    payment_delta,
    segments_for,
)

PRIOR = Prior(mean=0.9, strength=30)
LEARN = Learning(
    creation_prior=PRIOR, payment_prior=Prior(mean=0.5, strength=10), min_segment_samples=50
)


def snap(**segments: Counters) -> StatsSnapshot:
    keys = {
        "all": ("p", "all", ""),
        "eur": ("p", "currency", "EUR"),
        "nl": ("p", "country", "NL"),
    }
    return StatsSnapshot.of({keys[k]: v for k, v in segments.items()}, 1.0)


def test_no_data_sits_at_the_prior_mean() -> None:
    assert beta_mean(0, 0, PRIOR) == pytest.approx(0.9)
    est = estimate_success(StatsSnapshot(), "p", "EUR", "NL", LEARN)
    assert est.creation == pytest.approx(0.9)
    assert est.payment == pytest.approx(0.5)
    assert est.rate == pytest.approx(0.45)
    assert est.samples == 0
    assert est.segment == "all"


def test_a_handful_of_results_barely_moves_it_and_many_do() -> None:
    three_failures = beta_mean(0, 3, PRIOR)
    assert 0.8 < three_failures < 0.9  # raw rate would be 0
    assert beta_mean(3, 0, PRIOR) == pytest.approx((27 + 3) / 33)
    many = beta_mean(0, 1000, PRIOR)
    assert many < 0.03
    assert beta_mean(500, 500, PRIOR) == pytest.approx(527 / 1030)


def test_decay_halves_per_half_life() -> None:
    assert decay(0, 60) == 1.0
    assert decay(-5, 60) == 1.0
    assert decay(60, 60) == pytest.approx(0.5)
    assert decay(180, 60) == pytest.approx(0.125)


async def test_memory_store_decays_between_writes_and_on_read() -> None:
    store = MemoryStatsStore()
    key = [("p", "all", "")]
    await store.add(key, Counters(creation_ok=8), now=0.0, half_life_s=10)
    await store.add(key, Counters(creation_fail=4), now=10.0, half_life_s=10)
    loaded = await store.load(providers=["p"], now=20.0, half_life_s=10)
    assert loaded[("p", "all", "")].creation_ok == pytest.approx(2.0)  # 8 -> 4 -> 2
    assert loaded[("p", "all", "")].creation_fail == pytest.approx(2.0)  # 4 -> 2
    assert await store.load(providers=["other"], now=20.0, half_life_s=10) == {}


async def test_memory_store_forgets_idle_segments() -> None:
    store = MemoryStatsStore(ttl_s=100)
    await store.add([("p", "all", "")], Counters(creation_ok=1), now=0.0, half_life_s=10)
    assert await store.load(providers=["p"], now=50.0, half_life_s=10)
    assert await store.load(providers=["p"], now=101.0, half_life_s=10) == {}


def test_old_failures_fade_so_a_recovered_provider_is_trusted_again() -> None:
    fresh = snap(all=Counters(creation_ok=0, creation_fail=200))
    faded = snap(all=Counters(creation_ok=0, creation_fail=200).scaled(decay(3600 * 8, 3600)))
    assert estimate_success(fresh, "p", None, None, LEARN).creation < 0.2
    assert estimate_success(faded, "p", None, None, LEARN).creation > 0.8


def test_segments_count_only_with_enough_data_and_shrink_to_the_provider() -> None:
    overall = Counters(creation_ok=900, creation_fail=100)
    quiet = snap(all=overall, eur=Counters(creation_ok=0, creation_fail=10))
    est = estimate_success(quiet, "p", "EUR", "NL", LEARN)
    assert est.segment == "all"
    assert est.creation == pytest.approx(beta_mean(900, 100, PRIOR))
    rich = snap(all=overall, eur=Counters(creation_ok=10, creation_fail=90))
    est = estimate_success(rich, "p", "EUR", "NL", LEARN)
    base = beta_mean(900, 100, PRIOR)
    assert est.segment == "currency:EUR"
    assert est.creation == pytest.approx((10 + 30 * base) / (100 + 30))
    both = snap(
        all=overall, eur=Counters(creation_ok=10, creation_fail=90), nl=Counters(creation_ok=100)
    )
    est = estimate_success(both, "p", "EUR", "NL", LEARN)
    assert est.segment == "currency:EUR+country:NL"
    expected = ((10 + 30 * base) / 130 + (100 + 30 * base) / 130) / 2
    assert est.creation == pytest.approx(expected)


def test_payment_outcomes_multiply_in() -> None:
    s = snap(all=Counters(payment_ok=0, payment_fail=90))
    est = estimate_success(s, "p", None, None, LEARN)
    assert est.payment == pytest.approx(5 / 100)
    assert est.rate == pytest.approx(0.9 * 0.05)


def test_latency_prior_is_neutral_and_data_moves_it() -> None:
    params = LatencyScoring(good_ms=200, bad_ms=1200, prior_weight=5)
    assert estimate_latency(StatsSnapshot(), "p", params).score == pytest.approx(0.5)
    fast = snap(all=Counters(latency_sum=100 * 100, latency_n=100))
    est = estimate_latency(fast, "p", params)
    assert est.ms == pytest.approx((700 * 5 + 10_000) / 105)
    assert est.score > 0.95
    slow = snap(all=Counters(latency_sum=5000 * 100, latency_n=100))
    assert estimate_latency(slow, "p", params).score == 0.0


@pytest.mark.parametrize(
    ("outcome", "fault"),
    [
        ("created", Fault.SUCCESS),
        ("timeout", Fault.PROVIDER),
        ("unavailable", Fault.PROVIDER),
        ("rate_limited", Fault.PROVIDER),
        ("error", Fault.PROVIDER),
        ("rejected", Fault.NOT_COUNTED),
        ("not_supported", Fault.NOT_COUNTED),
        ("circuit_open", Fault.NOT_COUNTED),
        ("something-new", Fault.NOT_COUNTED),
    ],
)
def test_outcome_classification(outcome: str, fault: Fault) -> None:
    assert classify_outcome(outcome) is fault


def test_creation_deltas() -> None:
    assert creation_delta("created", 120.0) == Counters(1, 0, 120.0, 1)
    assert creation_delta("timeout", 5000.0) == Counters(0, 1, 5000.0, 1)
    assert creation_delta("unavailable", 3.0) == Counters(0, 1, 0, 0)  # a fast refusal
    assert creation_delta("rejected", 80.0) is None
    assert payment_delta(True) == Counters(payment_ok=1)
    assert payment_delta(False) == Counters(payment_fail=1)
    assert segments_for("p", "EUR", None) == [("p", "all", ""), ("p", "currency", "EUR")]
