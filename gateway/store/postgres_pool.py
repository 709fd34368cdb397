"""The connection pool under :class:`gateway.store.postgres.PostgresStore`: opened on first
use (so a gateway starts while the database is down and recovers by itself), every query one
pooled round trip, every outage mapped to :class:`~gateway.store.base.StoreUnavailable`.

asyncpg's own pool logs a warning with the whole traceback each time it fails to reconnect its
minimum connections; :class:`OutageWithoutTraceback` makes those one line, as the gateway's own
outage logs are (a traceback stays on anything that is not an outage)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from gateway.store.postgres_support import (
    PostgresSettings,
    describe_database,
    is_unavailable,
    mapped,
)

__all__ = ["OutageWithoutTraceback", "PostgresPool"]

log = logging.getLogger("gateway.store.postgres")


class OutageWithoutTraceback(logging.Filter):
    """Turns a record whose exception is a database outage into one line: the exception's
    type and message join the message and the traceback is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record; rewrite it when its exception is an outage."""
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and is_unavailable(error):
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _tame_asyncpg_pool_log() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, OutageWithoutTraceback) for f in pool_log.filters):
        pool_log.addFilter(OutageWithoutTraceback())


async def _nothing_to_reset(conn: Any) -> None:
    """The pool's reset of a connection coming back: nothing to do. Every query of the store
    is one autocommit statement that leaves no session state behind (no SET, LISTEN, cursor or
    session-level advisory lock), so asyncpg's default reset, a four-statement query and one
    more round trip after every store call, is skipped (asyncpg still clears its own state)."""


class PostgresPool:
    """An asyncpg pool opened lazily: concurrent first callers share one attempt, and a
    failed attempt is retried by the next call. Queries run one statement each in autocommit
    (a plpgsql function is one statement, and one transaction).

    A busy pool sheds new work fast (a connection within ``pool_timeout_s``, else 503), but
    a statement that *finishes* work already under way (``finishing=True``: the commit of a
    create whose provider session exists, giving its claim up) waits up to the command
    timeout for one: failing it would leave a provider session behind and the key leased."""

    def __init__(self, conf: PostgresSettings) -> None:
        self.conf = conf
        self.database = describe_database(conf.url)
        self._pool: Any = None
        self._opening: asyncio.Future[Any] | None = None
        self._ping_conn: Any = None
        self._ping_lock = asyncio.Lock()
        _tame_asyncpg_pool_log()
        self._finish_wait_s = max(conf.pool_timeout_s, conf.command_timeout_s)

    def _wait_s(self, finishing: bool) -> float:
        return self._finish_wait_s if finishing else self.conf.pool_timeout_s

    async def _ready(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[Any]) -> None:
        if self._opening is opening:
            self._opening = None
        if not opening.cancelled() and opening.exception() is None:
            self._pool = opening.result()

    async def _open(self) -> Any:
        conf = self.conf
        pool = asyncpg.create_pool(
            conf.url,
            min_size=min(conf.min_size, conf.max_size),
            max_size=conf.max_size,
            timeout=conf.connect_timeout_s,
            command_timeout=conf.command_timeout_s,
            reset=_nothing_to_reset,
        )
        try:
            await pool
        except BaseException:
            pool.terminate()
            raise
        log.info(
            "postgres pool open: %s (%d-%d connections)",
            self.database,
            conf.min_size,
            conf.max_size,
        )
        return pool

    async def warm_up(self) -> int:
        """Open the pool (and its minimum connections) now, best effort; how many are open."""
        try:
            with mapped("warm_up"):
                pool = await self._ready()
        except Exception as exc:  # the gateway still starts; requests answer 503 until it is up
            log.warning("postgres %s is not reachable yet: %s", self.database, exc)
            return 0
        return int(pool.get_size())

    async def _run(self, operation: str, finishing: bool, query: Any) -> Any:
        """``await query(conn)`` on a pooled connection. A connection whose command timed out
        or failed is terminated before it goes back: asyncpg would otherwise wait for the
        cancel request it sends to a database that does not answer (doubling the wait), and
        the pool replaces it with a fresh one."""
        with mapped(operation):
            pool = await self._ready()
            conn = await pool.acquire(timeout=self._wait_s(finishing))
            try:
                return await query(conn)
            except BaseException as exc:
                if not isinstance(exc, Exception) or is_unavailable(exc):
                    # a connection the server closed is back in the pool already
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()
                raise
            finally:
                await pool.release(conn)

    async def _fetchrow(self, operation: str, sql: str, *args: Any) -> Any:
        return await self._run(operation, False, lambda conn: conn.fetchrow(sql, *args))

    async def _fetch(self, operation: str, sql: str, *args: Any) -> list[Any]:
        return list(await self._run(operation, False, lambda conn: conn.fetch(sql, *args)))

    async def _fetchval(self, operation: str, sql: str, *args: Any, finishing: bool = False) -> Any:
        return await self._run(operation, finishing, lambda conn: conn.fetchval(sql, *args))

    async def _execute(self, operation: str, sql: str, *args: Any, finishing: bool = False) -> str:
        return str(await self._run(operation, finishing, lambda conn: conn.execute(sql, *args)))

    async def ping(self) -> None:
        """Raise :class:`~gateway.store.base.StoreUnavailable` unless the database answers.

        On a connection of its own, kept between pings: a pool busy with requests is load, not
        an outage, and must not take every instance out of the load balancer at once."""
        async with self._ping_lock:
            with mapped("ping"):
                conn = self._ping_conn
                if conn is None or conn.is_closed():
                    conn = self._ping_conn = await asyncpg.connect(
                        self.conf.url,
                        timeout=self.conf.connect_timeout_s,
                        command_timeout=self.conf.command_timeout_s,
                    )
                try:
                    await conn.fetchval("SELECT 1")
                except BaseException:
                    self._ping_conn = None
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()
                    raise

    async def close(self) -> None:
        """Close the pool (waiting for connections in use to come back)."""
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        ping, self._ping_conn = self._ping_conn, None
        if ping is not None:
            with contextlib.suppress(Exception):
                await ping.close(timeout=self.conf.command_timeout_s)
        pool, self._pool = self._pool, None
        if pool is not None:
            with mapped("close"):
                await pool.close()
