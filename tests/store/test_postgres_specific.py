"""What only the PostgreSQL store has: migrations, SKIP LOCKED claims, retention by
``keep_until`` and its bounded purge, the error boundary, and the round trips of a create."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from gateway.store.base import ClaimKind, Completion, OutboxItem, StoredResponse, StoreUnavailable
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_schema import migrations, schema_state, upgrade
from gateway.store.postgres_support import PostgresSettings, describe_database
from tests.postgres_support import create_database, drop_database, unique_name
from tests.store.samples import make_session

pytestmark = pytest.mark.postgres


def item(item_id: str) -> OutboxItem:
    return OutboxItem(
        id=item_id,
        merchant_id="m1",
        event_type="payment_session.created",
        body=b"{}",
        created_at=1.0,
    )


# migrations ----------------------------------------------------------------------------------


async def test_upgrade_applies_every_migration_once_and_is_idempotent() -> None:
    name = unique_name("migrate")
    url = await create_database(name, migrate=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            assert (await schema_state(conn)).current == 0
            applied = await upgrade(conn)
            assert [m.version for m in applied] == [m.version for m in migrations()]
            assert await upgrade(conn) == ()
            state = await schema_state(conn)
            assert state.current == state.latest
            assert state.pending == ()
        finally:
            await conn.close()
    finally:
        await drop_database(name)


async def test_a_failing_migration_leaves_the_schema_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.store import postgres_schema
    from gateway.store.postgres_schema import Migration

    broken = (*migrations(), Migration(9999, "broken", "CREATE TABLE extra (x int); SELECT 1 / 0"))
    monkeypatch.setattr(postgres_schema, "migrations", lambda: broken)
    name = unique_name("migrate")
    url = await create_database(name, migrate=False)
    try:
        conn = await asyncpg.connect(url)
        try:
            with pytest.raises(asyncpg.DivisionByZeroError):
                await upgrade(conn)
            assert await conn.fetchval("SELECT to_regclass('sessions')") is None
            assert await conn.fetchval("SELECT to_regclass('extra')") is None
        finally:
            await conn.close()
    finally:
        await drop_database(name)


# claims never hand the same row out twice ------------------------------------------------------


async def test_two_concurrent_claimers_never_get_the_same_outbox_item(
    postgres_database: str,
) -> None:
    first, second = PostgresStore(postgres_database), PostgresStore(postgres_database)
    try:
        await first.outbox_add([item(f"n{i:03d}") for i in range(300)], due=1.0)
        got: list[list[str]] = [[], []]

        async def drain(store: PostgresStore, into: list[str]) -> None:
            while batch := await store.outbox_claim(now=2.0, lease_s=60, limit=7):
                into.extend(i.id for i in batch)

        await asyncio.gather(drain(first, got[0]), drain(second, got[1]))
        assert not set(got[0]) & set(got[1])
        assert sorted(got[0] + got[1]) == [f"n{i:03d}" for i in range(300)]
        assert got[0]
        assert got[1]  # both took part
    finally:
        await first.close()
        await second.close()


async def test_a_claim_skips_rows_another_claimer_holds_without_waiting(
    pg: PostgresStore, conn: Any
) -> None:
    await pg.outbox_add([item("held"), item("free")], due=1.0)
    await pg.schedule_expiry("held", 1.0)
    await pg.schedule_expiry("free", 1.0)
    async with conn.transaction():  # another worker's claim, mid-transaction
        await conn.execute("SELECT 1 FROM outbox WHERE id = 'held' FOR UPDATE")
        await conn.execute("SELECT 1 FROM session_expiries WHERE session_id = 'held' FOR UPDATE")
        claimed = await asyncio.wait_for(pg.outbox_claim(now=2.0, lease_s=60, limit=10), 2)
        assert [c.id for c in claimed] == ["free"]
        expiries = await asyncio.wait_for(pg.claim_expiries(now=2.0, lease_s=60, limit=10), 2)
        assert expiries == ["free"]


# retention -------------------------------------------------------------------------------------


async def _age(conn: Any, table: str, seconds: float) -> None:
    await conn.execute(
        f"UPDATE {table} SET keep_until = clock_timestamp() - make_interval(secs => $1)",  # noqa: S608
        seconds,
    )


async def test_rows_past_their_retention_read_as_absent(pg: PostgresStore, conn: Any) -> None:
    begun = await pg.begin_create("m1", "k1", "fp", token="t1", lease_ms=60_000, order_ref="O1")
    assert begun.claim.kind is ClaimKind.CLAIMED
    record = make_session("s_1")
    completion = Completion("m1", "k1", "t1", StoredResponse(201, b"{}"), 60, "O1", 60)
    assert await pg.commit_create(record, completion, ttl_s=60, expires_at=None)
    assert await pg.claim_event("stripe", "evt", lease_s=60) == "new"
    for table in ("sessions", "idempotency_keys", "order_reservations", "webhook_events"):
        await _age(conn, table, 1)
    assert await pg.get_session("s_1") is None
    assert await pg.find_sessions("merchant-1", "ORD-2024-001", limit=10) == []
    assert not await pg.update_session(record.model_copy(update={"version": 1}), expected_version=0)
    assert await pg.claim_event("stripe", "evt", lease_s=60) == "new"
    again = await pg.begin_create("m1", "k1", "fp-2", token="t2", lease_ms=60_000, order_ref="O1")
    assert again.claim.kind is ClaimKind.CLAIMED  # the old key and reservation are gone
    assert again.order_holder is None
    # a fresh commit of the same session id replaces the expired row
    completion2 = Completion("m1", "k1", "t2", StoredResponse(201, b"{}"), 60, "O1", 60)
    assert await pg.commit_create(record, completion2, ttl_s=60, expires_at=None)
    assert await pg.get_session("s_1") == record


async def test_purge_deletes_only_expired_rows_and_at_most_limit(
    pg: PostgresStore, conn: Any
) -> None:
    await conn.execute(
        "INSERT INTO sessions SELECT 's' || i, 'm', 'o', now(), 0, '{}', "
        "now() + CASE WHEN i <= 25 THEN interval '-1 hour' ELSE interval '1 hour' END "
        "FROM generate_series(1, 40) i"
    )
    await conn.execute(
        "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, keep_until) "
        "SELECT 'm', 'k' || i, 'fp', now() - interval '1 hour' FROM generate_series(1, 5) i"
    )
    now = time.time()
    assert await pg.purge(now=now, limit=10) == 10
    assert await conn.fetchval("SELECT count(*) FROM sessions") == 30
    assert await pg.purge(now=now, limit=100) == 20  # 15 sessions, then the 5 keys
    assert await pg.purge(now=now, limit=100) == 0
    assert await conn.fetchval("SELECT count(*) FROM sessions") == 15
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_purge_is_a_no_op_before_retention_ends(pg: PostgresStore, conn: Any) -> None:
    await pg.begin_create("m1", "k1", "fp", token="t1", lease_ms=60_000, order_ref=None)
    assert await pg.purge(now=time.time(), limit=100) == 0
    await _age(conn, "idempotency_keys", 1)
    assert await pg.purge(now=time.time(), limit=100) == 1


# the error boundary ----------------------------------------------------------------------------


async def test_an_unreachable_database_is_store_unavailable_quickly() -> None:
    store = PostgresStore(
        PostgresSettings("postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=0.5)
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get_session("s_1")
    with pytest.raises(StoreUnavailable):
        await store.ping()
    assert time.monotonic() - started < 2
    assert await store.warm_up() == 0
    await store.close()


async def test_a_wrong_query_surfaces_as_the_bug_it_is(pg: PostgresStore) -> None:
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await pg._fetchval("bug", "SELEC 1")
    with pytest.raises(asyncpg.UndefinedTableError):
        await pg._fetchval("bug", "SELECT 1 FROM no_such_table")


async def test_a_statement_over_the_command_timeout_is_store_unavailable(
    postgres_database: str,
) -> None:
    store = PostgresStore(PostgresSettings(postgres_database, command_timeout_s=0.2))
    try:
        with pytest.raises(StoreUnavailable):
            await store._fetchval("slow", "SELECT pg_sleep(2)")
        await store.ping()  # the pool recovers
    finally:
        await store.close()


async def test_a_pool_busy_with_requests_still_reads_as_up(postgres_database: str) -> None:
    """Readiness pings on a connection of its own: a saturated pool is load, not an outage
    (answering not-ready would take every instance out of the load balancer at once)."""
    store = PostgresStore(
        PostgresSettings(postgres_database, min_size=1, max_size=1, pool_timeout_s=0.3)
    )
    try:
        busy = asyncio.create_task(store._fetchval("slow", "SELECT pg_sleep(1.5)"))
        await asyncio.sleep(0.3)
        with pytest.raises(StoreUnavailable):  # new work is shed at the pool timeout...
            await store.get_session("s_1")
        started = time.monotonic()
        await store.ping()  # ...while the database itself answers at once
        assert time.monotonic() - started < 0.25
        await busy
    finally:
        await store.close()


def test_the_printable_database_never_shows_the_password() -> None:
    url = "postgresql://gw:s3cr3t@db.internal:6432/records?sslmode=require"
    assert describe_database(url) == "db.internal:6432/records"
    assert "s3cr3t" not in describe_database(url)


# what a create costs ---------------------------------------------------------------------------


async def test_a_create_is_two_round_trips(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    for name in ("_fetchrow", "_fetch", "_fetchval", "_execute"):
        original = getattr(pg, name)

        async def counted(
            operation: str, *args: Any, _original: Any = original, **options: Any
        ) -> Any:
            statements.append(operation)
            return await _original(operation, *args, **options)

        monkeypatch.setattr(pg, name, counted)
    begun = await pg.begin_create("m1", "k1", "fp", token="t1", lease_ms=60_000, order_ref="O1")
    assert begun.claim.kind is ClaimKind.CLAIMED
    completion = Completion("m1", "k1", "t1", StoredResponse(201, b"{}"), 60, "O1", 60)
    assert await pg.commit_create(
        make_session("s_1"),
        completion,
        ttl_s=60,
        expires_at=time.time() + 600,
        outbox=[item("created")],
    )
    assert statements == ["begin_create", "commit_create"]


# text PostgreSQL cannot hold -------------------------------------------------------------------


async def test_nul_and_lone_surrogates_in_identifiers_work_as_elsewhere(pg: PostgresStore) -> None:
    """JSON can carry U+0000 (and a JWT subject a lone surrogate), which PostgreSQL text
    refuses: such values are stored escaped, one-to-one, and never become a 500."""
    merchant, order = "m\x00", "ORD\x00 é"
    begun = await pg.begin_create(
        merchant, "k\x00", "fp", token="t1", lease_ms=5000, order_ref=order
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    record = make_session("s_1").model_copy(
        update={"merchantId": merchant, "orderReference": order}
    )
    completion = Completion(merchant, "k\x00", "t1", StoredResponse(201, b"{}"), 60, order, 60)
    assert await pg.commit_create(
        record, completion, ttl_s=60, expires_at=None, outbox=[item("n1")]
    )
    assert await pg.find_sessions(merchant, order, limit=5) == [record]
    assert await pg.find_sessions("m", "ORD", limit=5) == []
    assert await pg.find_sessions('\x01"m\\u0000"', order, limit=5) == []  # no collision
    other = await pg.begin_create(merchant, "k2", "fp", token="t2", lease_ms=5000, order_ref=order)
    assert other.order_holder == "s_1"
    assert await pg.get_session("s_\x00") is None
    surrogate = await pg.begin_create(
        "\ud800", "k", "fp", token="t3", lease_ms=5000, order_ref="\udfff"
    )
    assert surrogate.claim.kind is ClaimKind.CLAIMED
    assert await pg.claim_event("stripe", "evt\x00", lease_s=60) == "new"
    assert await pg.claim_event("stripe", "evt", lease_s=60) == "new"
    await pg.outbox_add([item("n2").failed("bad\x00byte")], due=1.0)
    (claimed,) = [c for c in await pg.outbox_claim(now=2.0, lease_s=60, limit=5) if c.id == "n2"]
    assert claimed.last_error == "bad\x00byte"


def test_a_settings_error_never_echoes_the_database_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from gateway.settings import Settings

    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://gw:s3cr3t-pw@db/records")
    monkeypatch.setenv("GATEWAY_DATABASE_POOL_MIN_SIZE", "50")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "database_pool_min_size must be <= database_pool_max_size" in str(raised.value)
    assert "s3cr3t-pw" not in str(raised.value)
    monkeypatch.setenv("GATEWAY_DATABASE_POOL_MIN_SIZE", "2")
    assert "s3cr3t-pw" not in repr(Settings())


def test_several_workers_on_postgres_need_shared_coordination() -> None:
    from gateway.app import check_startup
    from gateway.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="GATEWAY_COORDINATION=memory lives in one process"):
        check_startup(Settings(_env_file=None, store="postgres", workers=2))  # type: ignore[call-arg]
    shared = Settings(_env_file=None, store="postgres", coordination="redis", workers=2)  # type: ignore[call-arg]
    assert check_startup(shared)
