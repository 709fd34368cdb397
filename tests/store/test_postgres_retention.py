"""Retention on PostgreSQL under attack: ``purge`` never deletes a live thing. Whether a record
is live is decided on the database's clock (every read compares ``keep_until`` with it), so a
gateway whose clock runs ahead of the database's must not purge what reads still see: an
in-flight claim, the order reservation it holds, a webhook event being processed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.store.base import ClaimKind, Completion, StoredResponse
from gateway.store.postgres import PostgresStore
from tests.store.samples import make_session

pytestmark = pytest.mark.postgres


async def test_a_gateway_clock_ahead_of_the_database_never_purges_live_records(
    pg: PostgresStore, conn: Any
) -> None:
    held = await pg.begin_create("m1", "k1", "fp", token="t1", lease_ms=60_000, order_ref="O1")
    assert held.claim.kind is ClaimKind.CLAIMED
    assert await pg.claim_event("stripe", "evt-1", lease_s=60) == "new"
    # the retention task of a gateway whose clock is an hour ahead of the database's
    assert await pg.purge(now=time.time() + 3600, limit=100) == 0
    # so the claim still holds the key and the order: a second request is refused both
    again = await pg.begin_create("m1", "k1", "fp", token="t2", lease_ms=60_000, order_ref=None)
    assert again.claim.kind is ClaimKind.IN_FLIGHT
    other = await pg.begin_create("m1", "k2", "fp", token="t3", lease_ms=60_000, order_ref="O1")
    assert other.order_holder == "claim:t1"
    assert await pg.claim_event("stripe", "evt-1", lease_s=60) == "processing"
    # once the database's clock says their retention ended, they go
    for table in ("idempotency_keys", "order_reservations", "webhook_events"):
        await conn.execute(
            f"UPDATE {table} SET keep_until = clock_timestamp() - interval '1 second'"  # noqa: S608
        )
    assert await pg.purge(now=time.time(), limit=100) == 4  # keys k1 and k2, O1, evt-1


async def test_purge_running_beside_creates_deletes_nothing_they_hold(
    pg: PostgresStore, conn: Any
) -> None:
    record = make_session("s_live")

    async def create(i: int) -> bool:
        token = f"t{i}"
        begun = await pg.begin_create(
            "m1", f"k{i}", "fp", token=token, lease_ms=60_000, order_ref=f"O{i}"
        )
        assert begun.claim.kind is ClaimKind.CLAIMED
        await asyncio.sleep(0)
        session = record.model_copy(update={"sessionId": f"s{i}", "orderReference": f"O{i}"})
        completion = Completion("m1", f"k{i}", token, StoredResponse(201, b"{}"), 60, f"O{i}", 60)
        return await pg.commit_create(session, completion, ttl_s=60, expires_at=None)

    async def purging(stop: asyncio.Event) -> int:
        total = 0
        while not stop.is_set():
            total += await pg.purge(now=time.time() + 120, limit=10)
        return total

    stop = asyncio.Event()
    purger = asyncio.ensure_future(purging(stop))
    done = await asyncio.gather(*(create(i) for i in range(40)))
    stop.set()
    assert await purger == 0
    assert all(done)
    assert await conn.fetchval("SELECT count(*) FROM sessions") == 40
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE status = 201") == 40
    assert await conn.fetchval("SELECT count(*) FROM order_reservations") == 40
