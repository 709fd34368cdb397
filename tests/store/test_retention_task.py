"""The retention task: batches of purges until a short one, every interval, surviving an
outage; memory and Redis (records expire by themselves) purge nothing."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from gateway.retention import purge_round, run_retention
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_support import PostgresSettings
from tests.postgres_support import wait_for


async def test_memory_purges_nothing() -> None:
    assert await purge_round(MemoryStore(), batch=10) == 0


@pytest.mark.postgres
async def test_the_task_purges_expired_rows_in_batches_and_keeps_live_ones(
    postgres_database: str,
) -> None:
    conn = await asyncpg.connect(postgres_database)
    store = PostgresStore(postgres_database)
    try:
        await conn.execute(
            "INSERT INTO sessions SELECT 's' || i, 'm', 'o', now(), 0, '{}', "
            "now() + CASE WHEN i <= 25 THEN interval '-1 second' ELSE interval '1 hour' END "
            "FROM generate_series(1, 30) i"
        )
        assert await purge_round(store, batch=10) == 25  # 10 + 10 + 5: one round
        await conn.execute(
            "UPDATE sessions SET keep_until = now() - interval '1 second' WHERE session_id = 's26'"
        )
        stop = asyncio.Event()
        task = asyncio.create_task(run_retention(store, stop, interval_s=0.05, batch=10))

        async def purged() -> bool:
            return await conn.fetchval("SELECT count(*) FROM sessions") == 4

        await wait_for(purged)
        stop.set()
        await asyncio.wait_for(task, 2)
    finally:
        await store.close()
        await conn.close()


async def test_an_outage_is_logged_and_the_task_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    store = PostgresStore(
        PostgresSettings("postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=0.2)
    )
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="gateway.retention"):
        task = asyncio.create_task(run_retention(store, stop, interval_s=0.02, batch=10))

        async def failed_twice() -> bool:
            return sum("retention purge failed" in r.message for r in caplog.records) >= 2

        await wait_for(failed_twice)
        stop.set()
        await asyncio.wait_for(task, 2)
    await store.close()
