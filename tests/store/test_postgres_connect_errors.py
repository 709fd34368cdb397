"""A database the gateway can no longer open a connection to is the store being unavailable
(503), like a server that is down, never an unhandled error (500): here the database is gone
(SQLSTATE 3D000); a refused login (class 28) is mapped the same way."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from gateway.store.base import StoreUnavailable
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_support import is_unavailable
from tests.postgres_support import database_url, unique_name

pytestmark = pytest.mark.postgres


async def test_a_database_that_is_gone_is_store_unavailable(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.store.postgres")
    store = PostgresStore(database_url(unique_name("gone")))
    try:
        assert await store.warm_up() == 0
        assert "does not exist" in caplog.text
        with pytest.raises(StoreUnavailable, match="InvalidCatalogNameError"):
            await store.get_session("s_1")
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (asyncpg.InvalidPasswordError("password authentication failed"), True),
        (asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry"), True),
        (asyncpg.InvalidCatalogNameError('database "x" does not exist'), True),
        (asyncpg.UndefinedTableError('relation "sesions" does not exist'), False),
        (asyncpg.UniqueViolationError("duplicate key"), False),
    ],
    ids=["password", "hba", "database", "wrong-query", "constraint"],
)
def test_connection_refusals_are_outages_and_query_errors_stay_bugs(
    error: Exception, unavailable: bool
) -> None:
    assert is_unavailable(error) is unavailable
