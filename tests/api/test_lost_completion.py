"""A create whose completion was lost must not be answered differently later (issue 10).

The holder of an Idempotency-Key commits its session and completes the key in one script; the
completion fails when the holder's lease lapsed and another retry took the key over meanwhile
(it met the provider's in-flight key and gave the claim up again). The session is stored, the
holder answered 201, but the key holds no answer. The next retry resumes the pin, the provider
replays the same session, and the gateway must answer what it already acknowledged, byte for
byte, and must not overwrite the stored session (it may have moved on, e.g. been paid).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.idempotency import session_id_for
from gateway.store.keys import RedisKeys
from tests.api.conftest import GatewayFactory, headers
from tests.api.test_failover import card_order, sandbox_state


@pytest.mark.redis
async def test_a_retry_after_a_lost_completion_answers_the_acknowledged_201(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    store = await store_factory("redis")
    client = await gateway(store=store)
    body = card_order("ORD-LOST-COMPLETION")
    first = await client.post("/api/v1/sessions", json=body, headers=headers("lost"))
    assert first.status == 201, await first.text()
    acknowledged = await first.read()
    session_id = session_id_for("merchant-1", "lost")

    # the state a lost completion leaves: session stored, the key pinned but unanswered
    raw = aioredis.Redis.from_url(redis_url)
    try:
        record_key = RedisKeys(redis_prefix).idempotency("merchant-1", "lost")
        assert await raw.hdel(record_key, "st", "body", "loc") == 3
    finally:
        await raw.aclose()
    # meanwhile the session moved on (the customer is paying)
    stored = await store.get_session(session_id)
    assert stored is not None
    moved = stored.model_copy(update={"version": stored.version + 1, "paymentId": "pi_paying"})
    assert await store.update_session(moved, expected_version=stored.version)

    retry = await client.post("/api/v1/sessions", json=body, headers=headers("lost"))
    assert retry.status == 201, await retry.text()
    assert await retry.read() == acknowledged
    after = await store.get_session(session_id)
    assert after == moved  # not overwritten
    replay = await client.post("/api/v1/sessions", json=body, headers=headers("lost"))
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert await replay.read() == acknowledged
    assert sum(sandbox_state(sandbox).sessions_created.values()) == 1
