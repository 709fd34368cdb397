"""What only the Redis store's orderReference index has: its key, scores, TTL and clean-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.store.base import ClaimKind, Completion, StoredResponse, StoreUnavailable
from gateway.store.keys import RedisKeys
from gateway.store.redis import RedisStore
from tests.redis_stores import redis_store as open_redis_store
from tests.store.samples import make_session
from tests.store.test_redis_specific import closed_port

T0 = datetime(2026, 3, 1, 12, 0, 0, 250_001, tzinfo=UTC)


async def commit(store: RedisStore, session_id: str, at: datetime, ttl_s: int) -> None:
    record = make_session(session_id).model_copy(update={"createdAt": at})
    key = f"key-{session_id}"
    begun = await store.begin_create(
        "merchant-1", key, "fp", token=key, lease_ms=5000, order_ref=None
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    completion = Completion("merchant-1", key, key, StoredResponse(201, b"{}"), ttl_s=60)
    assert await store.commit_create(record, completion, ttl_s=ttl_s, expires_at=None)


async def redis_store(store_factory: Any) -> RedisStore:
    store = await store_factory("redis")
    assert isinstance(store, RedisStore)
    return store


async def test_the_index_scores_created_at_in_microseconds_and_lives_as_long_as_its_sessions(
    store_factory: Any, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    store = await redis_store(store_factory)
    index = RedisKeys(redis_prefix).order_sessions("merchant-1", "ORD-2024-001")
    await commit(store, "s_1", T0, ttl_s=600)
    assert await redis_client.zscore(index, "s_1") == 1_772_366_400_250_001
    assert 598_000 < await redis_client.pttl(index) <= 600_000
    await commit(store, "s_2", T0 + timedelta(seconds=1), ttl_s=60)  # never shortened
    assert 598_000 < await redis_client.pttl(index) <= 600_000
    await commit(store, "s_3", T0 + timedelta(seconds=2), ttl_s=900)  # raised to the longest
    assert 898_000 < await redis_client.pttl(index) <= 900_000
    assert await redis_client.zcard(index) == 3


async def test_ids_of_expired_sessions_are_removed_from_the_index_when_read(
    store_factory: Any, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    store = await redis_store(store_factory)
    keys = RedisKeys(redis_prefix)
    index = keys.order_sessions("merchant-1", "ORD-2024-001")
    for i in range(5):
        await commit(store, f"s_{i}", T0 + timedelta(seconds=i), ttl_s=600)
    await redis_client.delete(keys.session("s_4"), keys.session("s_2"), keys.session("s_1"))
    found = await store.find_sessions("merchant-1", "ORD-2024-001", limit=2)
    assert [r.sessionId for r in found] == ["s_3", "s_0"]
    assert await redis_client.zrange(index, 0, -1) == [b"s_0", b"s_3"]


async def test_an_unreadable_session_is_a_store_error(
    store_factory: Any, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    store = await redis_store(store_factory)
    await commit(store, "s_1", T0, ttl_s=600)
    await redis_client.set(RedisKeys(redis_prefix).session("s_1"), b"{not json")
    with pytest.raises(StoreUnavailable, match="unreadable"):
        await store.find_sessions("merchant-1", "ORD-2024-001", limit=2)


async def test_a_dead_redis_is_a_store_error() -> None:
    store = open_redis_store(f"redis://127.0.0.1:{closed_port()}/0", "gw:")
    try:
        with pytest.raises(StoreUnavailable, match="find_sessions"):
            await store.find_sessions("merchant-1", "ORD-1", limit=2)
    finally:
        await store.close()
