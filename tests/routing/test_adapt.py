"""The adaptive learner: volume forgetting, CUSUM change detection, segments, and the
probability-matching exploration, in memory and in the real Redis (db 13, own prefix)."""

from __future__ import annotations

import random
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from gateway.routing.compiled import CompiledRules
from gateway.routing.rules import Learning, RulesError, load_rules_text
from gateway.routing.stats import (
    Counters,
    Forgetting,
    MemoryStatsStore,
    SegmentKey,
    StatsSnapshot,
    apply_outcomes,
    cusum_step,
    estimate_adaptive,
    payment_delta,
    segments_for,
)
from gateway.routing.stats_redis import RedisStatsStore
from gateway.settings import Settings
from gateway.store.redis_client import open_redis
from tests.routing.helpers import compiled, features, first, route, rules_yaml

LEARN = Learning()
FORGET = Forgetting(
    LEARN.window_outcomes,
    LEARN.change_detection.fast_window,
    LEARN.change_detection.threshold,
    LEARN.change_detection.min_samples,
    LEARN.change_detection.shift,
)
ALL: SegmentKey = ("p", "all", "")


def test_forgetting_follows_the_learning_model() -> None:
    assert Forgetting.of(LEARN) == FORGET
    assert Forgetting.of(Learning(model="decayed")) is None
    off = Learning(change_detection={"enabled": False})
    assert Forgetting.of(off) == replace(FORGET, threshold=0.0)


def feed(counters: Counters, outcomes: list[bool], forgetting: Forgetting) -> Counters:
    for ok in outcomes:
        counters = apply_outcomes(counters, payment_delta(ok), forgetting, 1.0)
    return counters


def bernoulli(rng: random.Random, rate: float, n: int) -> list[bool]:
    return [rng.random() < rate for _ in range(n)]


def payment_rate(c: Counters) -> float:
    return c.payment_ok / (c.payment_ok + c.payment_fail)


def test_volume_forgetting_keeps_about_a_window_of_evidence() -> None:
    quiet = Forgetting(window=200, fast_window=20, threshold=0, min_samples=10)
    c = feed(Counters(), [True] * 5000, quiet)
    assert c.payment_ok == pytest.approx(200, rel=0.01)  # not 5,000
    c = feed(c, [False] * 200, quiet)
    # without detection 200 failures still outweigh the old successes: 1 - (1 - 1/200)^200
    assert payment_rate(c) == pytest.approx((1 - 1 / 200) ** 200, abs=0.01)


def test_cusum_detects_a_drop_within_tens_of_outcomes_and_restarts_the_estimate() -> None:
    rng = random.Random(1)
    c = feed(Counters(), bernoulli(rng, 0.9, 1000), FORGET)
    before = c.changed_at
    for n in range(1, 200):
        c = apply_outcomes(c, payment_delta(rng.random() < 0.55), FORGET, 100.0 + n)
        if c.changed_at != before:
            break
    assert c.changed_at == 100.0 + n
    assert n <= 60, n
    assert c.payment_ok + c.payment_fail < 25  # old evidence dropped
    assert payment_rate(c) < 0.8


def test_cusum_detects_a_recovery() -> None:
    rng = random.Random(2)
    c = feed(Counters(), bernoulli(rng, 0.5, 400), FORGET)
    start = c.changed_at
    c = feed(c, bernoulli(rng, 0.95, 60), FORGET)
    assert payment_rate(c) > 0.8
    assert c.changed_at != start or c.payment_ok + c.payment_fail < 80


@pytest.mark.parametrize("rate", [0.5, 0.85, 0.97])
def test_stationary_noise_rarely_raises_an_alarm(rate: float) -> None:
    rng = random.Random(3)
    alarms = 0
    c = Counters()
    for i in range(5000):
        c = apply_outcomes(c, payment_delta(rng.random() < rate), FORGET, float(i + 1))
        alarms += c.changed_at == float(i + 1)
    assert alarms <= 2, alarms


def test_cusum_step_moves_towards_the_side_the_outcomes_point_to() -> None:
    down, up = cusum_step(0, 10, 0.9, 0.15, 0.0, 0.0)
    assert down > 5
    assert up == 0.0
    down, up = cusum_step(10, 0, 0.5, 0.15, 3.0, 0.0)
    assert down == 0.0
    assert up > 2


async def test_memory_store_applies_forgetting_per_segment() -> None:
    store = MemoryStatsStore()
    segs = segments_for("p", "EUR", "DE", "card")
    assert ("p", "cell", "EUR.DE.card") in segs
    assert ("p", "method", "card") in segs
    for _ in range(300):
        await store.add(segs, payment_delta(True), now=1.0, half_life_s=3600, forgetting=FORGET)
    loaded = await store.load(providers=["p"], now=1.0, half_life_s=3600)
    assert loaded[("p", "cell", "EUR.DE.card")].payment_ok == pytest.approx(
        (1 - (1 - 1 / 200) ** 300) * 200, rel=0.01
    )


def test_a_provider_declining_in_one_segment_loses_only_that_segment() -> None:
    rules = compiled({"stripe": {}, "adyen": {}, "paypal": {"enabled": False}})
    good = Counters(creation_ok=200, payment_ok=180, payment_fail=20)
    bad = Counters(creation_ok=40, payment_ok=16, payment_fail=24)
    mixed = good.plus(bad)
    snap = StatsSnapshot.of(
        {
            ("stripe", "all", ""): mixed,
            ("stripe", "currency", "USD"): good,
            ("stripe", "country", "US"): good,
            ("stripe", "method", "card"): mixed,
            ("stripe", "cell", "USD.US.card"): good,
            ("stripe", "currency", "EUR"): bad,
            ("stripe", "country", "DE"): bad,
            ("stripe", "cell", "EUR.DE.card"): bad,
            ("adyen", "all", ""): Counters(creation_ok=200, payment_ok=150, payment_fail=50),
        },
        1.0,
    )
    us = route(rules, features(currency="USD", country="US", orderReference="o1"), snap)
    de = route(rules, features(currency="EUR", country="DE", orderReference="o1"), snap)
    assert {c.provider: c.details["successSegment"] for c in us.ranked}["stripe"] == (
        "cell:USD.US.card"
    )
    assert {c.provider: c.details["successSegment"] for c in de.ranked}["stripe"] == (
        "cell:EUR.DE.card"
    )
    leaders = {
        cur: [
            first(route(rules, features(currency=cur, country=ctry, orderReference=f"r{i}"), snap))
            for i in range(300)
        ]
        for cur, ctry in (("USD", "US"), ("EUR", "DE"))
    }
    assert leaders["USD"].count("stripe") > 240
    assert leaders["EUR"].count("adyen") > 240


def test_a_sparse_segment_falls_back_to_coarser_ones() -> None:
    snap = StatsSnapshot.of(
        {
            ("p", "all", ""): Counters(creation_ok=100, payment_ok=90, payment_fail=10),
            ("p", "cell", "EUR.DE.card"): Counters(creation_ok=3, payment_ok=0, payment_fail=3),
        },
        1.0,
    )
    est = estimate_adaptive(snap, "p", "EUR", "DE", "card", LEARN)
    assert est.segment == "all"
    assert est.payment > 0.8


def explore_rules(floor: float, ceiling: float) -> CompiledRules:
    return compiled(
        {"stripe": {}, "adyen": {}, "paypal": {"enabled": False}},
        scoring={
            "weights": {"preference": 0, "success_rate": 100, "latency": 0, "cost": 0},
            "exploration": {"floor": floor, "ceiling": ceiling},
        },
    )


def snapshot(stripe: tuple[float, float], adyen: tuple[float, float]) -> StatsSnapshot:
    return StatsSnapshot.of(
        {
            (name, "all", ""): Counters(creation_ok=500, payment_ok=ok, payment_fail=fail)
            for name, (ok, fail) in (("stripe", stripe), ("adyen", adyen))
        },
        1.0,
    )


def explored_share(rules: CompiledRules, snap: StatsSnapshot, n: int = 2000) -> float:
    picks = [route(rules, features(orderReference=f"x{i}"), snap) for i in range(n)]
    explored = [d for d in picks if d.ranked[0].details.get("explored")]
    assert all(any(note.startswith("exploration:") for note in d.notes) for d in explored)
    return len(explored) / n


def test_exploration_follows_uncertainty_within_floor_and_ceiling() -> None:
    rules = explore_rules(0.02, 0.2)
    clear = snapshot((180, 20), (100, 100))  # 90% vs 50% on 200 outcomes each
    assert 0.01 < explored_share(rules, clear) < 0.03  # the floor
    doubtful = snapshot((9, 1), (8, 2))  # 10 outcomes each: could be either
    assert 0.17 < explored_share(rules, doubtful) < 0.23  # the ceiling
    # stripe leads on preference; adyen's rate could make up for it, with a chance in between
    leaning = compiled(
        {"stripe": {"preference": 60}, "adyen": {"preference": 50}, "paypal": {"enabled": False}},
        scoring={
            "weights": {"preference": 50, "success_rate": 50, "latency": 0, "cost": 0},
            "exploration": {"floor": 0.02, "ceiling": 0.2},
        },
    )
    share = explored_share(leaning, snapshot((45, 5), (46, 4)))
    assert 0.03 < share < 0.17


def test_exploration_is_stable_per_order_and_explained() -> None:
    rules = explore_rules(0.05, 0.3)
    snap = snapshot((9, 1), (8, 2))
    one = [route(rules, features(orderReference=f"s{i}"), snap) for i in range(200)]
    two = [route(rules, features(orderReference=f"s{i}"), snap) for i in range(200)]
    assert [first(d) for d in one] == [first(d) for d in two]
    details = one[0].explain()["candidates"]
    for cand in details:
        for key in ("successRate", "successSamples", "paymentSamples", "window", "explored"):
            assert key in cand["details"], key
    assert details[0]["details"]["window"] == "last ~200 outcomes, half-life 3600 s"


def test_a_fixed_exploration_number_still_loads_as_floor_and_ceiling() -> None:
    rules = compiled(scoring={"exploration": 0.1})
    assert (rules.exploration_floor, rules.exploration_ceiling) == (0.1, 0.1)


@pytest.mark.parametrize(
    ("scoring", "message"),
    [
        ({"exploration": {"floor": 0.3, "ceiling": 0.1}}, "floor must not exceed the ceiling"),
        ({"exploration": {"ceiling": 0.9}}, "less than or equal to 0.5"),
        (
            {"learning": {"window_outcomes": 20, "change_detection": {"fast_window": 30}}},
            "fast_window must be smaller than window_outcomes",
        ),
        ({"learning": {"model": "bandit"}}, "'adaptive' or 'decayed'"),
        (  # the recent counts never reach fast_window: detection would never fire
            {"learning": {"change_detection": {"fast_window": 20, "min_samples": 20}}},
            "change_detection.min_samples must be smaller than fast_window",
        ),
    ],
)
def test_bad_learning_knobs_are_refused_with_the_reason(
    scoring: dict[str, object], message: str
) -> None:
    with pytest.raises(RulesError) as err:
        load_rules_text(rules_yaml(scoring=scoring))
    assert message in str(err.value)


def test_a_bare_exploration_number_out_of_range_is_one_error() -> None:
    with pytest.raises(RulesError) as err:
        load_rules_text(rules_yaml(scoring={"exploration": 0.9}))
    assert len(err.value.problems) == 1, err.value.problems
    assert "less than or equal to 0.5" in str(err.value)


# the shared store ------------------------------------------------------------------------


@pytest.fixture
async def redis_stats(redis_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    conn = open_redis(Settings(_env_file=None, redis_url=redis_url))  # type: ignore[call-arg]
    store = RedisStatsStore(conn, redis_prefix + "adapt:", owns_conn=True)
    yield store
    await store.close()


async def test_redis_applies_the_same_forgetting_and_detection_as_memory(
    redis_stats: RedisStatsStore,
) -> None:
    memory = MemoryStatsStore()
    rng = random.Random(4)
    segs = segments_for("stripe", "USD", "US", "card")
    now = 1000.0
    for rate, n in ((0.9, 300), (0.5, 80)):
        for _ in range(n):
            k = rng.randint(1, 3)  # batches of a few outcomes, as the feed writes them
            ok = sum(rng.random() < rate for _ in range(k))
            delta = Counters(creation_ok=k, latency_sum=100.0 * k, latency_n=k)
            delta = delta.plus(Counters(payment_ok=ok, payment_fail=k - ok))
            for store in (memory, redis_stats):
                await store.add(segs, delta, now=now, half_life_s=3600, forgetting=FORGET)
            now += 0.5
    got = await redis_stats.load(providers=["stripe"], now=now, half_life_s=3600)
    want = await memory.load(providers=["stripe"], now=now, half_life_s=3600)
    assert set(got) == set(want) == set(segs)
    for key in segs:
        assert got[key].as_tuple() == pytest.approx(want[key].as_tuple(), rel=1e-9, abs=1e-9)
    assert got[segs[0]].changed_at > 1000.0  # the drop was detected, in Redis too


async def test_redis_detection_is_shared_by_two_writers(redis_url: str, redis_prefix: str) -> None:
    conns = [open_redis(Settings(_env_file=None, redis_url=redis_url)) for _ in range(2)]  # type: ignore[call-arg]
    stores = [RedisStatsStore(c, redis_prefix + "adapt2:", owns_conn=True) for c in conns]
    try:
        for i in range(300):
            await stores[i % 2].add(
                [ALL], payment_delta(i % 10 != 0), now=1.0, half_life_s=3600, forgetting=FORGET
            )
        for i in range(60):
            await stores[i % 2].add(
                [ALL], payment_delta(i % 2 == 0), now=2.0, half_life_s=3600, forgetting=FORGET
            )
        loaded = await stores[0].load(providers=["p"], now=2.0, half_life_s=3600)
        assert loaded[ALL].changed_at == 2.0
        assert urlsplit(redis_url).scheme.startswith("redis")
    finally:
        for store in stores:
            await store.close()
