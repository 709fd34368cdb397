"""Routing statistics in the real Redis (db 13, a unique prefix per test, only our keys)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from gateway.routing.service import Router
from gateway.routing.stats import Counters
from gateway.routing.stats_redis import _ADD, RedisStatsStore
from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import open_redis
from tests.fault_proxy import FaultProxy
from tests.routing.helpers import OPEN, request, rules_yaml

ALL = ("stripe", "all", "")


def stats_store(url: str, prefix: str) -> RedisStatsStore:
    """A store on a connection of its own (closed with it)."""
    conn = open_redis(Settings(_env_file=None, redis_url=url))  # type: ignore[call-arg]
    return RedisStatsStore(conn, prefix, owns_conn=True)


@pytest.fixture
async def stores(redis_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    """Two stores on separate connections: two gateway processes sharing one Redis."""
    made = [stats_store(redis_url, redis_prefix) for _ in range(2)]
    yield made
    for store in made:
        await store.close()


async def test_round_trip_and_decay(stores: list[RedisStatsStore]) -> None:
    one, _ = stores
    await one.add(
        [ALL, ("stripe", "currency", "EUR")], Counters(1, 0, 250.0, 1), now=1000.0, half_life_s=60
    )
    await one.add([ALL], Counters(0, 1, 0, 0, 1, 0), now=1060.0, half_life_s=60)
    loaded = await one.load(providers=["stripe", "adyen"], now=1060.0, half_life_s=60)
    assert loaded[ALL] == Counters(0.5, 1.0, 125.0, 0.5, 1.0, 0.0)
    assert loaded[("stripe", "currency", "EUR")].creation_ok == pytest.approx(0.5)
    later = await one.load(providers=["stripe"], now=1120.0, half_life_s=60)
    assert later[ALL].creation_fail == pytest.approx(0.5)


async def test_concurrent_writers_lose_no_update(stores: list[RedisStatsStore]) -> None:
    one, two = stores
    writes = [
        store.add([ALL], Counters(creation_ok=1), now=5000.0, half_life_s=3600)
        for _ in range(100)
        for store in (one, two)
    ]
    await asyncio.gather(*writes)
    loaded = await two.load(providers=["stripe"], now=5000.0, half_life_s=3600)
    assert loaded[ALL].creation_ok == pytest.approx(200.0)


async def test_an_increment_whose_reply_is_lost_is_applied_once(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    """The script reached Redis and ran, its reply was cut: the write fails (and is counted as
    failed by the feed) but is never re-sent, so the counter moved by exactly one."""
    await redis_client.script_load(_ADD.source)  # EVALSHA runs at once (no NOSCRIPT round)
    parts = urlsplit(redis_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    through = stats_store(f"redis://127.0.0.1:{proxy.port}{parts.path}", redis_prefix)
    direct = stats_store(redis_url, redis_prefix)
    try:
        proxy.cut_after = b"EVALSHA"
        with pytest.raises(StoreUnavailable, match="stats_add"):
            await through.add([ALL], Counters(creation_ok=1), now=5000.0, half_life_s=3600)
        assert proxy.cuts == 1
        loaded = await direct.load(providers=["stripe"], now=5000.0, half_life_s=3600)
        assert loaded[ALL].creation_ok == 1.0
    finally:
        await through.close()
        await direct.close()
        await proxy.close()


async def test_every_key_is_under_the_prefix_and_has_a_ttl(
    stores: list[RedisStatsStore], redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    one, _ = stores
    await one.add(
        [ALL, ("stripe", "country", "NL"), ("adyen", "all", "")],
        Counters(creation_ok=1),
        now=1.0,
        half_life_s=60,
    )
    keys = [k.decode() async for k in redis_client.scan_iter(match=f"{redis_prefix}*")]
    assert len(keys) == 5  # three segment hashes, two provider indexes
    assert all(k.startswith(f"{redis_prefix}stats:") for k in keys)
    for key in keys:
        ttl = await redis_client.pttl(key)
        assert 0 < ttl <= 7 * 86_400 * 1000


async def test_a_clock_behind_the_stored_stamp_never_inflates_counts(
    stores: list[RedisStatsStore],
) -> None:
    one, two = stores
    await one.add([ALL], Counters(creation_ok=4), now=1000.0, half_life_s=10)
    await two.add([ALL], Counters(creation_ok=1), now=990.0, half_life_s=10)  # skewed clock
    loaded = await one.load(providers=["stripe"], now=1000.0, half_life_s=10)
    assert loaded[ALL].creation_ok == pytest.approx(5.0)


async def test_routers_in_two_processes_learn_from_each_other(
    tmp_path, redis_url: str, redis_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rules.yaml"
    path.write_text(rules_yaml({"stripe": {}, "adyen": {}}))
    caps = {"stripe": OPEN, "adyen": OPEN}
    routers = [
        Router(path, caps, stats_store(redis_url, redis_prefix), owns_stats_store=True)
        for _ in range(2)
    ]
    writer, reader = routers
    async with writer.running(), reader.running():
        before = reader.decide(request(), "m1")
        assert before.ranked[0].provider == "adyen"  # a tie: broken by name
        for _ in range(60):
            await writer.record_creation("adyen", "unavailable", 5.0, request())
            await writer.record_creation("adyen", "rejected", 5.0, request())  # not counted
        await writer.flush()
        await reader.refresh_stats()
        after = reader.decide(request(), "m1")
        assert after.ranked[0].provider == "stripe"
        adyen = next(c for c in after.ranked if c.provider == "adyen")
        assert adyen.details["successSamples"] == pytest.approx(60.0, rel=1e-3)
    assert writer.counters["outcome_not_counted"] == 60


async def test_the_router_learns_into_the_coordination_sharing_the_stores_conn(
    tmp_path, redis_url: str, redis_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    from gateway.app import open_backends
    from gateway.settings import Settings

    path = tmp_path / "rules.yaml"
    path.write_text(rules_yaml({"stripe": {}, "adyen": {}}))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        store="redis",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        rules_path=path,
    )
    store, coordination = open_backends(settings)
    assert coordination.name == "redis"
    assert coordination.stats._conn is store.conn  # type: ignore[attr-defined]
    try:
        router = Router.from_settings(settings, {"stripe": OPEN, "adyen": OPEN}, coordination.stats)
        async with router.running():
            await router.record_creation("stripe", "created", 120.0, request())
            await router.record_payment("stripe", False, "AUD", "AU")
            await router.flush()
            snapshot = await router.refresh_stats()
        counters = snapshot.segments[("stripe", "country", "AU")]
        assert counters.creation_ok == pytest.approx(1.0, rel=1e-3)
        assert counters.payment_fail == pytest.approx(1.0, rel=1e-3)
        await store.ping()  # the router closed nothing it does not own
        await store.close()
        await coordination.ping()  # the store left the shared conn to the coordination
    finally:
        await coordination.close()
