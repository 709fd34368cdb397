"""A stored session that no longer reads back (corrupted, or written by something else) is the
store failing, :class:`~gateway.store.base.StoreUnavailable` (a 503), on Redis and PostgreSQL
alike, whether it is read by id or found by its order."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.store.base import StoreUnavailable
from gateway.store.keys import RedisKeys
from tests.conftest import StoreFactory
from tests.store.samples import make_session, store_session

CORRUPT = '{"sessionId": "s_1", "status": "NOT-A-STATUS"}'


async def _corrupt_in_redis(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.set(RedisKeys(prefix).session("s_1"), CORRUPT, keepttl=True)
    finally:
        await client.aclose()


async def _corrupt_in_postgres(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE sessions SET payload = $1 WHERE session_id = 's_1'", CORRUPT)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
async def test_an_unreadable_session_is_the_store_failing(
    request: pytest.FixtureRequest, store_factory: StoreFactory, kind: str
) -> None:
    store = await store_factory(kind)
    record = make_session("s_1")
    await store_session(store, record, ttl_s=600)
    if kind == "redis":
        await _corrupt_in_redis(
            request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        )
    else:
        await _corrupt_in_postgres(request.getfixturevalue("postgres_database"))
    with pytest.raises(StoreUnavailable, match=r"session 's_1' is unreadable"):
        await store.get_session("s_1")
    with pytest.raises(StoreUnavailable, match="is unreadable"):
        await store.find_sessions(record.merchantId, record.orderReference, limit=10)
