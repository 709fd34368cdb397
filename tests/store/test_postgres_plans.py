"""The PostgreSQL store's lookups use its indexes: the plans PostgreSQL actually runs (logged by
``auto_explain``, including the statements inside the create functions) on tables of 5,000
rows each after ANALYZE, so the planner would pick a sequential scan if an index were missing.
Every statement runs seven times: the custom plans, then the generic plan."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from gateway.store import postgres, postgres_queues
from tests.postgres_support import create_database, drop_database, run_sync, unique_name

pytestmark = pytest.mark.postgres

_FILL = """
INSERT INTO sessions
SELECT 's' || i, 'm' || (i % 50), 'o' || (i % 100), now() - i * interval '1 second', 0, '{}',
       now() + CASE WHEN i % 10 = 0 THEN interval '-1 day' ELSE interval '1 day' END
FROM generate_series(1, 5000) i;
INSERT INTO idempotency_keys (scope, idem_key, fingerprint, keep_until)
SELECT 'm' || (i % 50), 'k' || i, 'fp', now() + interval '1 day' FROM generate_series(1, 5000) i;
INSERT INTO order_reservations
SELECT 'm' || (i % 50), 'o' || i, 's' || i, now() + interval '1 day'
FROM generate_series(1, 5000) i;
INSERT INTO webhook_events
SELECT 'stripe', 'e' || i, 'done', now() + interval '1 day' FROM generate_series(1, 5000) i;
INSERT INTO session_expiries SELECT 's' || i, 1000 + i FROM generate_series(1, 5000) i;
INSERT INTO outbox (id, merchant_id, event_type, body, created_at, due)
SELECT 'n' || i, 'm', 't', '\\x00', 1, 1000 + i FROM generate_series(1, 5000) i;
INSERT INTO orphan_jobs (id, session_id, provider, request, due)
SELECT 'j' || i, 's' || i, 'stripe', '\\x00', 1000 + i FROM generate_series(1, 5000) i;
ANALYZE;
"""


@pytest.fixture(scope="module")
def filled(postgres_url: str) -> Iterator[str]:
    """A database of this module's own, its tables filled with 5,000 rows each. (Through
    ``postgres_url``: a missing server skips these tests, or fails them under CI=true, before
    this module-scoped fixture tries to connect.)"""
    name = unique_name("plans")
    url = run_sync(create_database(name))

    async def fill() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(_FILL)
        finally:
            await conn.close()

    try:
        run_sync(fill())
        yield url
    finally:
        run_sync(drop_database(name))


@pytest.fixture
async def explained(filled: str) -> AsyncIterator[Any]:
    """A connection to the filled database that logs every plan it runs."""
    conn = await asyncpg.connect(filled)
    try:
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
            " SET auto_explain.log_nested_statements = on; SET client_min_messages = log"
        )
        yield conn
    finally:
        await conn.close()


class _Rollback(Exception):
    pass


async def plans_of(conn: Any, sql: str, *args: Any) -> list[str]:
    """The plans of ``sql`` (and of the statements it runs) over seven executions, each
    rolled back so the data stays as filled."""
    plans: list[str] = []

    def listen(_: Any, message: Any) -> None:
        plans.append(str(message.message))

    statement = await conn.prepare(sql)  # asyncpg's type introspection runs here, unlogged
    conn.add_log_listener(listen)
    try:
        for _ in range(7):
            try:
                async with conn.transaction():
                    await statement.fetch(*args)
                    raise _Rollback
            except _Rollback:
                pass
    finally:
        conn.remove_log_listener(listen)
    assert plans, "auto_explain logged nothing"
    return plans


def assert_indexed(plans: list[str], *indexes: str) -> None:
    text = "\n".join(plans)
    assert "Seq Scan" not in text, text
    for index in indexes:
        assert index in text, f"{index} not used:\n{text}"


async def test_get_uses_the_primary_key(explained: Any) -> None:
    assert_indexed(await plans_of(explained, postgres._GET, "s42"), "sessions_pkey")


async def test_find_sessions_uses_the_order_index_for_both_pages(explained: Any) -> None:
    first = await plans_of(explained, postgres._FIND, "m1", "o1", 10)
    assert_indexed(first, "Index Scan using sessions_by_order")
    cursor = datetime.now(UTC)
    later = await plans_of(explained, postgres._FIND_BEFORE, "m1", "o1", 10, cursor, "s9")
    assert_indexed(later, "Index Scan using sessions_by_order")
    assert "ROW(created_at, session_id) <" in "\n".join(later)  # the cursor is an index bound
    assert "Sort" not in "\n".join(first + later)  # the index gives the order


async def test_begin_create_looks_up_by_primary_keys(explained: Any) -> None:
    plans = await plans_of(explained, postgres._BEGIN, "m1", "k1", "fp", "t", 60_000, "o1", None, 0)
    assert_indexed(plans, "idempotency_keys_pkey", "order_reservations_pkey")
    # and a key and order that exist (in flight / reserved)
    taken = await plans_of(
        explained, postgres._BEGIN, "m1", "k50", "fp", "t", 60_000, "o50", None, 0
    )
    assert_indexed(taken, "idempotency_keys_pkey")


async def test_commit_create_looks_up_by_primary_keys(explained: Any) -> None:
    args = (
        "s_new", "m1", "o1", datetime.now(UTC), 0, "{}", 60_000, time.time() + 600,
        "m1", "k1", "t", 201, b"{}", "/l", 60_000, "o1", 60_000, time.time(),
        ["n_new"], ["m1"], ["payment_session.created"], [b"{}"], [1.0],
        ["s_new:stripe"], ["s_new"], ["stripe"], [b"{}"],
    )  # fmt: skip
    plans = await plans_of(explained, postgres._COMMIT, *args)
    assert_indexed(plans, "idempotency_keys_pkey", "order_reservations_pkey")


async def test_update_session_uses_the_primary_key(explained: Any) -> None:
    args = ("s42", "{}", 1, 0, time.time(), ["n_x"], ["m"], ["t"], [b"{}"], [1.0])
    assert_indexed(
        await plans_of(explained, postgres_queues._UPDATE_SESSION, *args), "sessions_pkey"
    )


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        (postgres_queues._OUTBOX_CLAIM, "Index Scan using outbox_by_due"),
        (postgres_queues._CLAIM_EXPIRIES, "Index Scan using session_expiries_by_due"),
        (postgres_queues._ORPHAN_CLAIM, "Index Scan using orphan_jobs_by_due"),
    ],
    ids=["outbox", "expiries", "orphans"],
)
async def test_due_claims_use_the_due_index(explained: Any, sql: str, index: str) -> None:
    plans = await plans_of(explained, sql, 1100.0, 5000.0, 50)
    assert_indexed(plans, index)
    assert "LockRows" in "\n".join(plans)  # FOR UPDATE SKIP LOCKED


async def test_purge_finds_its_batches_through_the_keep_until_indexes(explained: Any) -> None:
    # 500 of the sessions are past their retention; a batch of 100 deletes by ctid
    plans = await plans_of(explained, "SELECT gateway_purge($1, $2)", time.time(), 100)
    assert_indexed(plans, "sessions_by_keep_until")
    assert "Tid Scan on sessions" in "\n".join(plans)
    # nothing left to delete in the other tables: their index says so without a scan
    everything = await plans_of(explained, "SELECT gateway_purge($1, $2)", time.time(), 1000)
    assert_indexed(
        everything,
        "sessions_by_keep_until",
        "idempotency_keys_by_keep_until",
        "order_reservations_by_keep_until",
        "webhook_events_by_keep_until",
    )


async def test_the_outbox_backlog_stops_counting_at_its_bound(explained: Any) -> None:
    # the delivery worker measures the backlog every round: it never counts the whole outbox
    await explained.execute("SET auto_explain.log_analyze = on")
    try:
        plans = await plans_of(explained, postgres_queues._OUTBOX_BACKLOG, 100)
    finally:
        await explained.execute("RESET auto_explain.log_analyze")
    text = "\n".join(plans)
    assert "Limit" in text, text
    scans = [line for line in text.splitlines() if "Scan" in line]
    assert scans, text
    assert all("actual" in line and "rows=100 " in line for line in scans), text
