"""What a PostgreSQL outage writes to the log: one line per failure, no traceback (as a Redis
outage), also from asyncpg's own pool while it reconnects; a bug keeps its traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
import pytest

from gateway.logs import JsonFormatter
from gateway.store.base import StoreUnavailable
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_pool import OutageWithoutTraceback
from gateway.store.postgres_support import PostgresSettings
from tests.postgres_support import wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres


@pytest.fixture
async def proxy(postgres_database: str) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the test database: :meth:`TcpProxy.stop` is the outage."""
    target = urlsplit(postgres_database)
    proxied = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxied.start()
    yield proxied
    await proxied.stop()


def json_lines(records: list[logging.LogRecord]) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in records]
    assert all("\n" not in line for line in lines)
    return [orjson.loads(line) for line in lines]


async def test_the_pool_reconnecting_during_an_outage_logs_one_line_without_traceback(
    postgres_database: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    database = urlsplit(postgres_database).path
    store = PostgresStore(
        PostgresSettings(f"postgresql://postgres@127.0.0.1:{proxy.port}{database}", min_size=2)
    )
    try:
        assert await store.get_session("s-1") is None  # the pool is open
        await proxy.stop()
        with pytest.raises(StoreUnavailable):
            await store.get_session("s-1")

        async def pool_warnings() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "asyncpg.pool"]

        (line, *_) = json_lines(await wait_for(pool_warnings))
        assert "exc" not in line, line["exc"]
        message = str(line["msg"])
        assert message.startswith("Failed to restore the pool connection floor; retrying: ")
        assert "Connect" in message  # the cause, e.g. ConnectionRefusedError
        await proxy.start()
        assert await store.get_session("s-1") is None  # back by itself
    finally:
        await store.close()


def test_a_bug_logged_through_the_filter_keeps_its_traceback() -> None:
    try:
        raise KeyError("o_kind")
    except KeyError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("asyncpg.pool", logging.WARNING, __file__, 1, "odd", None, exc_info)
    assert OutageWithoutTraceback().filter(record)
    assert record.exc_info is exc_info
    (line,) = json_lines([record])
    assert "Traceback" in str(line["exc"])


def test_an_outage_logged_through_the_filter_is_one_line() -> None:
    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except ConnectionRefusedError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "asyncpg.pool", logging.WARNING, __file__, 1, "retrying %s", ("floor",), exc_info
    )
    assert OutageWithoutTraceback().filter(record)
    (line,) = json_lines([record])
    assert line["msg"] == "retrying floor: ConnectionRefusedError: [Errno 111] Connect call failed"
    assert "exc" not in line
