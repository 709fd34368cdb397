"""The exact lifetimes the memory, Redis and PostgreSQL stores give what production writes, read
inside each store (Redis ``PTTL``, the memory store's deadlines, PostgreSQL's ``keep_until``).
The store-agnostic contract checks the same lifetimes by behaviour (``test_contract.py``,
``test_lifecycle_contract.py``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.store.base import ClaimKind, Completion, RecordStore, StoredResponse
from gateway.store.circuits_memory import MemoryCircuits
from gateway.store.circuits_redis import RedisCircuits
from gateway.store.coordination import CircuitStore
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.redis import RedisStore
from gateway.store.ttl_dict import TTLDict
from tests.conftest import CoordinationFactory, StoreFactory
from tests.postgres_support import remaining_ms as postgres_remaining_ms

from .samples import make_session

KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
RECORD_KINDS = [*KINDS, pytest.param("postgres", marks=pytest.mark.postgres)]
SCOPE = "merchant-1"


def _memory_left(table: TTLDict, key: str) -> int:
    if table.get(key) is None:
        return -2
    return int((table.expires(key) - time.monotonic()) * 1000)


async def remaining_ms(store: Any, area: str, *parts: str) -> int:
    """Milliseconds before a record expires; -2 when it does not exist, -1 when it never does.

    ``area`` is a :class:`~gateway.store.keys.RedisKeys` method: idempotency, order, session,
    webhook_dedup or circuit."""
    if isinstance(store, (RedisStore, RedisCircuits)):
        key: str = getattr(store.keys, area)(*parts)
        if area == "order":  # a running create's claim is kept long: its lease is its value's
            value = await store.conn.client.get(key)
            if value is not None and value.startswith(b"claim:") and b"|" in value:
                seconds, micros = await store.conn.client.time()
                return int(value.rsplit(b"|", 1)[1]) - (seconds * 1000 + micros // 1000)
        return int(await store.conn.client.pttl(key))
    if isinstance(store, MemoryCircuits):
        return _memory_left(store._circuits, parts[0])
    if isinstance(store, PostgresStore):
        return await postgres_remaining_ms(store.conf.url, area, *parts)
    assert isinstance(store, MemoryStore)
    table = {
        "idempotency": store._idem,
        "order": store._orders,
        "session": store._sessions,
        "webhook_dedup": store._events,
    }[area]
    return _memory_left(table, "\x00".join(parts))


@pytest.fixture(params=RECORD_KINDS)
async def kept(request: pytest.FixtureRequest, store_factory: StoreFactory) -> RecordStore:
    return await store_factory(request.param)


@pytest.fixture(params=KINDS)
async def circuits(
    request: pytest.FixtureRequest, coordination_factory: CoordinationFactory
) -> CircuitStore:
    return (await coordination_factory(request.param)).circuits


async def test_a_key_is_leased_then_kept_for_its_retention(kept: RecordStore) -> None:
    begun = await kept.begin_create(
        SCOPE, "k1", "fp", token="t1", lease_ms=30_000, order_ref="ORD-1"
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    assert 28_000 < await remaining_ms(kept, "idempotency", SCOPE, "k1") <= 30_000
    assert 18_000 < await remaining_ms(kept, "order", SCOPE, "ORD-1") <= 30_000

    completion = Completion(
        SCOPE, "k1", "t1", StoredResponse(201, b"{}"), 3_600, "ORD-1", order_ttl_s=900
    )
    assert await kept.commit_create(make_session(), completion, ttl_s=86_400, expires_at=None)
    assert 3_598_000 < await remaining_ms(kept, "idempotency", SCOPE, "k1") <= 3_600_000
    assert 898_000 < await remaining_ms(kept, "order", SCOPE, "ORD-1") <= 900_000
    assert 86_398_000 < await remaining_ms(kept, "session", "s_1") <= 86_400_000

    moved = make_session().model_copy(update={"version": 1})
    assert await kept.update_session(moved, expected_version=0)
    assert 86_398_000 < await remaining_ms(kept, "session", "s_1") <= 86_400_000


async def test_a_pinned_key_is_kept_for_the_pin_and_its_lease_never_shortens_it(
    kept: RecordStore,
) -> None:
    from datetime import UTC, datetime

    from gateway.store.base import CreatePin

    pin = CreatePin(datetime(2026, 1, 2, tzinfo=UTC), "rq-1")
    await kept.begin_create(
        SCOPE, "k1", "fp", token="t1", lease_ms=20_000, order_ref=None, pin=pin, pin_ttl_ms=600_000
    )
    assert 598_000 < await remaining_ms(kept, "idempotency", SCOPE, "k1") <= 600_000
    await kept.abandon_create(SCOPE, "k1", "t1", sent=["stripe"])
    assert 598_000 < await remaining_ms(kept, "idempotency", SCOPE, "k1") <= 600_000


async def test_order_reservations_follow_replace_and_release(kept: RecordStore) -> None:
    await kept.begin_create(SCOPE, "k1", "fp", token="t1", lease_ms=5_000, order_ref="ORD-1")
    completion = Completion(
        SCOPE, "k1", "t1", StoredResponse(201, b"{}"), 60, "ORD-1", order_ttl_s=900
    )
    assert await kept.commit_create(make_session(), completion, ttl_s=600, expires_at=None)
    assert await kept.replace_order(SCOPE, "ORD-1", "s_1", "t2", lease_ms=20_000)
    assert 18_000 < await remaining_ms(kept, "order", SCOPE, "ORD-1") <= 20_000
    await kept.release_order(SCOPE, "ORD-1", "t2")
    assert await remaining_ms(kept, "order", SCOPE, "ORD-1") == -2


async def test_webhook_markers_are_leased_then_kept_done(kept: RecordStore) -> None:
    assert await kept.claim_event("stripe", "evt_1", lease_s=30) == "new"
    assert 28_000 < await remaining_ms(kept, "webhook_dedup", "stripe", "evt_1") <= 30_000
    await kept.finish_event("stripe", "evt_1", ttl_s=86_400)
    assert 86_398_000 < await remaining_ms(kept, "webhook_dedup", "stripe", "evt_1") <= 86_400_000


async def test_circuit_state_is_bounded_in_time(circuits: CircuitStore) -> None:
    async def fail() -> None:
        await circuits.circuit_failure(
            "stripe", now=time.time(), window_s=10, threshold=3, open_s=30
        )

    await fail()
    closed_ttl = await remaining_ms(circuits, "circuit", "stripe")
    assert 0 < closed_ttl <= (10 + 300) * 1000
    for _ in range(2):
        await fail()
    open_ttl = await remaining_ms(circuits, "circuit", "stripe")
    assert 30_000 + 300_000 < open_ttl <= (30 + 10 + 300) * 1000
