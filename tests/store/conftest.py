"""Fixtures of the PostgreSQL-specific store tests: a store and a raw connection on the test
session's own database (tests/postgres_support.py makes it and truncates it per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from gateway.store.postgres import PostgresStore


@pytest.fixture
async def pg(postgres_database: str) -> AsyncIterator[PostgresStore]:
    """A PostgreSQL store on the test's database."""
    store = PostgresStore(postgres_database)
    yield store
    await store.close()


@pytest.fixture
async def conn(postgres_database: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection to the test's database (to look at or age rows)."""
    connection = await asyncpg.connect(postgres_database)
    yield connection
    await connection.close()
