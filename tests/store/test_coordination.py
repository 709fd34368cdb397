"""The coordination bundle (circuits, routing statistics, rate limits) as ``GATEWAY_COORDINATION``
opens it, apart from the records, and what an unreachable coordination costs (never a
checkout)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app, open_backends
from gateway.circuit import CircuitBreakers, CircuitPolicy
from gateway.ratelimit import RateLimit
from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.circuits_redis import RedisCircuits
from gateway.store.coordination import open_coordination, redis_coordination
from gateway.store.memory import MemoryStore
from gateway.store.redis_client import StandaloneConn, open_redis
from tests.api.conftest import JWT_SECRET, ROOT
from tests.gateway_processes import free_port


def settings_for(**values: Any) -> Settings:
    return Settings(_env_file=None, jwt_secret=JWT_SECRET, **values)  # type: ignore[call-arg]


def open_conn(url: str) -> StandaloneConn:
    return open_redis(settings_for(redis_url=url))


async def test_memory_records_with_redis_coordination_share_circuits_and_limits(
    redis_url: str, redis_prefix: str
) -> None:
    """The production pairing's shape (records elsewhere, coordination in Redis): two
    processes' bundles see one circuit and draw from one bucket."""
    settings = settings_for(
        store="memory", coordination="redis", redis_url=redis_url, redis_prefix=redis_prefix
    )
    store, one = open_backends(settings)
    two = open_coordination(settings)
    try:
        assert isinstance(store, MemoryStore)
        assert (one.name, two.name) == ("redis", "redis")
        now = time.time()
        opened = await one.circuits.circuit_failure(
            "stripe", now=now, window_s=10, threshold=1, open_s=30
        )
        assert opened.state == "open"
        assert (await two.circuits.circuit_states(["stripe"], now=now))["stripe"] == opened
        limit = RateLimit(per_second=0.01, burst=1)
        assert await one.buckets.take("merchant", "m-1", limit) is None
        wait = await two.buckets.take("merchant", "m-1", limit)
        assert wait is not None
        assert wait > 1
        await one.ping()
    finally:
        await one.close()
        await two.close()


async def test_a_bundle_leaves_a_conn_it_does_not_own_open(
    redis_url: str, redis_prefix: str
) -> None:
    conn = open_conn(redis_url)
    try:
        bundle = redis_coordination(conn, redis_prefix)
        await bundle.ping()
        await bundle.close()
        assert await conn.client.ping() is True
    finally:
        await conn.close()


async def test_a_bundle_closes_the_conn_it_owns(redis_url: str, redis_prefix: str) -> None:
    conn = open_conn(redis_url)
    bundle = redis_coordination(conn, redis_prefix, owns_conn=True)
    assert await bundle.warm_up(3) == 3
    pool = conn.client.connection_pool
    assert len(pool._available_connections) + len(pool._in_use_connections) >= 3
    await bundle.close()
    assert not pool._in_use_connections
    assert all(not c.is_connected for c in pool._available_connections)


async def test_the_redis_store_and_coordination_share_one_conn(
    redis_url: str, redis_prefix: str
) -> None:
    settings = settings_for(store="redis", redis_url=redis_url, redis_prefix=redis_prefix)
    store, bundle = open_backends(settings)
    try:
        conn = bundle.conn
        assert conn is not None
        assert store.conn is conn  # type: ignore[attr-defined]
        assert bundle.circuits.conn is conn  # type: ignore[attr-defined]
        await store.close()  # not its to close
        await bundle.circuits.circuit_failure("stripe", now=1.0, window_s=10, threshold=5, open_s=1)
    finally:
        await bundle.close()


async def test_memory_coordination_is_the_default_of_the_memory_store() -> None:
    store, bundle = open_backends(settings_for())
    assert isinstance(store, MemoryStore)
    assert bundle.name == "memory"
    await bundle.ping()
    await bundle.close()


async def test_an_unreachable_circuit_store_never_fails_a_checkout() -> None:
    conn = open_conn(f"redis://127.0.0.1:{free_port()}/0")
    try:
        circuits = RedisCircuits(conn, "gw:")
        breakers = CircuitBreakers(circuits, ["stripe"], CircuitPolicy(threshold=1))
        with pytest.raises(StoreUnavailable):
            await circuits.circuit_failure("stripe", now=1.0, window_s=10, threshold=1, open_s=30)
        await breakers.failure("stripe")  # not counted, logged
        await breakers.success("stripe")
        assert await breakers.admit("stripe") is True
        assert breakers.unavailable() == {}
    finally:
        await conn.close()


async def test_readyz_reports_an_unreachable_coordination_without_failing_readiness(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = settings_for(
        rules_path=ROOT / "routing_rules.yaml",
        coordination="redis",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_warm_connections=0,
    )
    client = await aiohttp_client(create_app(settings))
    answer = await client.get("/readyz")
    body = await answer.json()
    assert answer.status == 200, body
    assert body["checks"]["store"] == {"ok": True, "backend": "memory"}
    coordination = body["checks"]["coordination"]
    assert (coordination["ok"], coordination["backend"]) == (False, "redis")
    assert "ping" in coordination["error"]
