"""PostgreSQL for the tests (a pytest plugin, loaded by ``tests/conftest.py``).

Tests that use ``postgres_url`` (directly, through ``postgres_database``,
``store_factory("postgres")`` or the ``store[postgres]`` parameter) or carry
``@pytest.mark.postgres`` run against a database of their own: once per session a uniquely
named database is CREATEd on the server at ``GATEWAY_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``, the server's maintenance database), the
migrations are applied, and it is DROPped at the end; ``postgres_database`` empties its tables
before each test. No other database is touched. When the server does not answer those tests
are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gateway.store.postgres_schema import upgrade

T = TypeVar("T")

ADMIN_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

#: every table of the records (not schema_migrations)
TABLES = (
    "sessions",
    "idempotency_keys",
    "order_reservations",
    "webhook_events",
    "session_expiries",
    "outbox",
    "outbox_dead",
    "orphan_jobs",
)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a loop of its own (also from inside a running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def database_url(name: str, base: str = ADMIN_URL) -> str:
    """``base`` pointing at database ``name``."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _problem(url: str) -> str | None:
    try:
        conn = await asyncpg.connect(url, timeout=2.0)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def create_database(name: str, *, migrate: bool = True) -> str:
    """CREATE database ``name`` (and apply the migrations); its URL."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = database_url(name)
    if migrate:
        conn = await asyncpg.connect(url)
        try:
            await upgrade(conn)
        finally:
            await conn.close()
    return url


async def drop_database(name: str) -> None:
    """DROP database ``name``, closing its connections."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def unique_name(purpose: str = "test") -> str:
    """A database name nobody else uses."""
    return f"gateway_{purpose}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


async def truncate(url: str) -> None:
    """Empty every record table of the database at ``url``."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    finally:
        await conn.close()


async def remaining_ms(url: str, area: str, *parts: str) -> int:
    """Milliseconds before a record's retention ends; -2 when there is no live row.
    ``area``: idempotency, order, session or webhook (the parts: its key columns)."""
    table, columns = {
        "idempotency": ("idempotency_keys", ("scope", "idem_key")),
        "order": ("order_reservations", ("scope", "order_ref")),
        "session": ("sessions", ("session_id",)),
        "webhook": ("webhook_events", ("provider", "event_id")),
        "webhook_dedup": ("webhook_events", ("provider", "event_id")),
    }[area]
    where = " AND ".join(f"{c} = ${i + 1}" for i, c in enumerate(columns))
    conn = await asyncpg.connect(url)
    try:
        left = await conn.fetchval(
            f"SELECT extract(epoch FROM keep_until - clock_timestamp()) * 1000 FROM {table} "  # noqa: S608
            f"WHERE {where} AND keep_until > clock_timestamp()",
            *parts,
        )
    finally:
        await conn.close()
    return -2 if left is None else int(left)


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches PostgreSQL through a fixture with ``postgres``."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated database of this test session. Skips when PostgreSQL does not answer;
    fails under CI=true."""
    problem = run_sync(_problem(ADMIN_URL))
    if problem is not None:
        host = urlsplit(ADMIN_URL).hostname
        message = f"PostgreSQL at {host}:{urlsplit(ADMIN_URL).port or 5432} does not answer: "
        message += problem
        if _under_ci():
            pytest.fail(f"{message} (CI=true: a missing PostgreSQL is a failure)", pytrace=False)
        pytest.skip(message)
    name = unique_name()
    url = run_sync(create_database(name))
    try:
        yield url
    finally:
        run_sync(drop_database(name))


@pytest.fixture(autouse=True)
def _postgres_marker_gate(request: pytest.FixtureRequest) -> None:
    """Tests marked ``postgres`` without using a PostgreSQL fixture get the same check."""
    if request.node.get_closest_marker("postgres") is not None:
        request.getfixturevalue("postgres_url")


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """The session's database with every record table emptied for this test."""
    run_sync(truncate(postgres_url))
    return postgres_url


async def wait_for(condition: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Await ``condition()`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def outbox_drained(database_url: str, timeout: float = 20.0) -> None:
    """Wait until every merchant notification in the database's outbox was delivered."""
    conn = await asyncpg.connect(database_url)
    try:

        async def drained() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM outbox") == 0)

        await wait_for(drained, timeout=timeout)
    finally:
        await conn.close()
