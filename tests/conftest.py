"""Fixtures shared by every test package.

Redis: tests that use ``redis_url`` (directly or through ``redis_prefix``, ``redis_client``,
``store_factory("redis")``, ``coordination_factory("redis")``, or the ``store[redis]`` and
``circuits[redis]`` parameters) or carry ``@pytest.mark.redis``
run against database 13 of the Redis at ``GATEWAY_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/13``), each under its own key prefix, and delete only their own keys
(never FLUSHDB: the server is shared). Redis is checked once per session; when it does not
answer those tests are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from gateway.settings import Settings
from gateway.store.base import RecordStore
from gateway.store.coordination import (
    CircuitStore,
    Coordination,
    memory_coordination,
    redis_coordination,
)
from gateway.store.keys import RedisKeys
from gateway.store.memory import MemoryStore
from tests.redis_cleanup import delete_matching_at
from tests.redis_servers import RedisCluster
from tests.redis_stores import redis_store

pytest_plugins = ["tests.postgres_support", "tests.pg_instance", "tests.redis_cluster_support"]

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

StoreFactory = Callable[..., Awaitable[RecordStore]]
CoordinationFactory = Callable[..., Awaitable[Coordination]]


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _redis_problem(url: str) -> str | None:
    """Why Redis at ``url`` cannot be used, or None when it answers PING."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches Redis through a fixture with ``redis``."""
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (db 13). Skips the test when Redis is down; fails it under CI=true."""
    problem = _redis_problem(REDIS_URL)
    if problem is not None:
        message = f"Redis at {REDIS_URL} does not answer: {problem}"
        if _under_ci():
            pytest.fail(f"{message} (CI=true: a missing Redis is a failure)", pytrace=False)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture(autouse=True)
def _redis_marker_gate(request: pytest.FixtureRequest) -> None:
    """Tests marked ``redis`` without using a Redis fixture get the same skip/fail check."""
    if request.node.get_closest_marker("redis") is not None:
        request.getfixturevalue("redis_url")


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; teardown deletes only its keys (SCAN, UNLINK per
    slot: :func:`tests.redis_cleanup.delete_matching`)."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    delete_matching_at([redis_url], RedisKeys(prefix).match_all())


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A raw ``redis.asyncio`` client on the test database (bytes in, bytes out)."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store_factory(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """``await store_factory("memory" | "redis" | "redis_cluster" | "postgres", **kwargs)``;
    every store made is closed at teardown. Redis stores of one test share its ``redis_prefix``
    (like several gateway processes sharing one Redis), so their keys are deleted with it
    (``redis_cluster``: its ``redis_cluster_prefix``, deleted on every primary); PostgreSQL
    stores of one test share the session's database, emptied before the test."""
    created: list[RecordStore] = []

    async def make(kind: str = "memory", **kwargs: Any) -> RecordStore:
        store: RecordStore
        if kind == "memory":
            store = MemoryStore()
        elif kind == "redis":
            url: str = request.getfixturevalue("redis_url")
            prefix: str = request.getfixturevalue("redis_prefix")
            store = redis_store(url, prefix, **kwargs)
            await store.conn.start()
        elif kind == "redis_cluster":
            cluster: RedisCluster = request.getfixturevalue("redis_cluster")
            prefix = request.getfixturevalue("redis_cluster_prefix")
            store = redis_store(cluster.seed_url, prefix, mode="cluster", **kwargs)
            await store.conn.start()
        elif kind == "postgres":
            from gateway.store.postgres import PostgresStore

            database: str = request.getfixturevalue("postgres_database")
            store = PostgresStore(database, **kwargs)
        else:
            raise ValueError(f"unknown store kind {kind!r}")
        created.append(store)
        return store

    yield make
    for store in reversed(created):
        await store.close()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis_cluster", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def store(request: pytest.FixtureRequest, store_factory: StoreFactory) -> RecordStore:
    """The record store under test, once per backend: memory, Redis (standalone, and a
    3-master Redis Cluster of the test session's own) and PostgreSQL."""
    kind: str = request.param
    return await store_factory(kind)


@pytest.fixture
async def coordination_factory(
    request: pytest.FixtureRequest,
) -> AsyncIterator[CoordinationFactory]:
    """``await coordination_factory("memory" | "redis")``; each bundle made is closed at
    teardown. Redis bundles of one test share its ``redis_prefix`` (and its stores' keys)."""
    created: list[Coordination] = []

    async def make(kind: str = "memory") -> Coordination:
        if kind == "memory":
            bundle = memory_coordination()
        elif kind == "redis":
            url: str = request.getfixturevalue("redis_url")
            prefix: str = request.getfixturevalue("redis_prefix")
            from gateway.store.redis_client import open_redis

            conn = open_redis(Settings(_env_file=None, redis_url=url))  # type: ignore[call-arg]
            bundle = redis_coordination(conn, prefix, owns_conn=True)
        else:
            raise ValueError(f"unknown coordination kind {kind!r}")
        created.append(bundle)
        return bundle

    yield make
    for bundle in reversed(created):
        await bundle.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def circuits(
    request: pytest.FixtureRequest, coordination_factory: CoordinationFactory
) -> CircuitStore:
    """The circuit store under test, once per coordination backend: memory and Redis."""
    kind: str = request.param
    return (await coordination_factory(kind)).circuits
