"""The adaptive learner's statistics in the shared Redis: hashes written by the earlier layout
still load and keep learning, and a Redis that stops answering never holds up a decision or an
outcome, which are learnt again once it is back (db 13, a unique prefix per test)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from gateway.routing.service import Router
from gateway.routing.stats import Forgetting, payment_delta
from gateway.routing.stats_redis import RedisStatsStore
from gateway.settings import Settings
from gateway.store.redis_client import open_redis
from tests.fault_proxy import FaultProxy
from tests.routing.helpers import OPEN, request, rules_yaml

FORGET = Forgetting(200.0, 20.0, 6.0, 10.0, 0.15)


def stats_store(url: str, prefix: str) -> RedisStatsStore:
    conn = open_redis(  # short timeouts: the blackholed Redis answers nothing
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            redis_url=url,
            redis_socket_timeout_seconds=0.3,
            redis_connect_timeout_seconds=0.3,
        )
    )
    return RedisStatsStore(conn, prefix, owns_conn=True)


async def test_a_hash_of_the_earlier_layout_loads_and_keeps_learning(
    redis_url: str, redis_prefix: str
) -> None:
    store = stats_store(redis_url, redis_prefix)
    key = store.segment_key(("stripe", "all", ""))
    raw = aioredis.from_url(redis_url)
    try:
        # before the adaptive learner a segment hash held only these seven fields
        old = {
            "t": "1000",
            "cs": "90",
            "cf": "10",
            "ls": "9000",
            "ln": "90",
            "ps": "60",
            "pf": "30",
        }
        await raw.hset(key, mapping=old)
        await raw.zadd(store.index_key("stripe"), {"all:": 1000})
        loaded = await store.load(providers=["stripe"], now=1000.0, half_life_s=3600)
        counters = loaded[("stripe", "all", "")]
        assert (counters.creation_ok, counters.payment_ok, counters.payment_fail) == (90, 60, 30)
        assert counters.changed_at == 0.0
        assert counters.fast_payment_ok == counters.cusum_payment_down == 0.0

        await store.add(
            [("stripe", "all", "")], payment_delta(True), now=1000.0, half_life_s=3600,
            forgetting=FORGET,
        )  # fmt: skip
        after = (await store.load(providers=["stripe"], now=1000.0, half_life_s=3600))[
            ("stripe", "all", "")
        ]
        assert after.payment_ok == pytest.approx(60 * (1 - 1 / 200) + 1)
        assert after.payment_fail == pytest.approx(30 * (1 - 1 / 200))
        assert after.fast_payment_ok == 1.0
    finally:
        await raw.aclose()
        await store.close()


async def test_a_redis_that_stops_answering_holds_up_no_decision_and_learning_resumes(
    tmp_path, redis_url: str, redis_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    parts = urlsplit(redis_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    path = tmp_path / "rules.yaml"
    path.write_text(rules_yaml({"stripe": {}, "adyen": {}}))
    through = f"redis://127.0.0.1:{proxy.port}{parts.path}"
    router = Router(
        path, {"stripe": OPEN, "adyen": OPEN}, stats_store(through, redis_prefix),
        owns_stats_store=True,
    )  # fmt: skip
    try:
        async with router.running():
            for _ in range(5):
                await router.record_creation("adyen", "unavailable", 5.0, request())
            await router.flush()
            assert (await router.refresh_stats()).segments[("adyen", "all", "")].creation_fail == (
                pytest.approx(5.0, rel=1e-3)
            )

            proxy.blackhole()
            started = time.monotonic()
            for _ in range(50):  # what a checkout does: decide, then count its outcome
                router.decide(request(), "m1")
                await router.record_creation("adyen", "unavailable", 5.0, request())
                await router.record_payment("stripe", True, "AUD", "AU", "card")
            assert time.monotonic() - started < 0.25  # nothing waited for Redis
            kept = await router.refresh_stats()  # fails: the last snapshot stays
            assert kept.segments[("adyen", "all", "")].creation_fail == pytest.approx(5.0, rel=1e-3)
            await router.flush()  # the writes in flight fail (counted), none is retried
            assert router.counters["stats_refresh_failed"] >= 1
            assert router.counters["stats_write_failed"] >= 1

            proxy.heal()
            for _ in range(5):
                await router.record_creation("adyen", "unavailable", 5.0, request())
            await router.flush()
            fresh = await router.refresh_stats()
            assert fresh.segments[("adyen", "all", "")].creation_fail == pytest.approx(
                5 * (1 - 1 / 200) ** 5 + 5, rel=1e-3
            )  # the outage's outcomes are lost; the five before are discounted by five
            assert router.decide(request(), "m1").ranked[0].provider == "stripe"
    finally:
        await proxy.close()
