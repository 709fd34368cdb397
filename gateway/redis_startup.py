"""Starting a Redis deployment before the gateway takes traffic.

:class:`RedisStartup` runs :meth:`~gateway.store.redis_conn.RedisConn.start` (connect, check the
topology, resolve ``GATEWAY_REDIS_WAIT_REPLICAS=auto``, log the durability warnings) and then
opens the pooled connections, before the server listens. A Redis that is down at start does not
stop the gateway (as before: it listens, and ``/readyz`` answers 503 while the record store is
unreachable); the start is retried in the background until it succeeds, and until then
``/readyz`` reports ``redis`` as not started, which keeps a gateway whose records live there not
ready even once Redis answers pings again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.redis_conn import RedisConn
from gateway.store.redis_support import _mapped

__all__ = ["RedisStartup", "describe_redis"]

log = logging.getLogger("gateway.store.redis")

_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 5.0


class RedisStartup:
    """The start of one :class:`RedisConn` (shared by the record store and the coordination
    when both are in Redis): ``started``, ``warnings`` (the durability warnings found) and
    ``serves_records`` (whether readiness depends on it)."""

    def __init__(self, conn: RedisConn, *, warm_connections: int, serves_records: bool) -> None:
        self.conn = conn
        self.serves_records = serves_records
        self.started = False
        self.warnings: list[str] = []
        #: why the last start failed (no secret: StoreUnavailable messages name no password)
        self.error: str | None = None
        self._warm_connections = warm_connections
        self._retry: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        """Start and warm the connection now; on failure, log it, keep retrying in the
        background and return False."""
        try:
            await self._start_once()
        except StoreUnavailable as exc:
            self.error = str(exc)[:200]
            log.warning("redis not started, retrying in the background: %s", exc)
            self._retry = asyncio.create_task(self._retry_until_started(), name="redis-start")
            return False
        return True

    async def _start_once(self) -> None:
        with _mapped("start"):
            self.warnings = await self.conn.start()
        self.started = True
        if self._warm_connections:
            opened = await self.conn.warm_up(self._warm_connections)
            log.info("redis connection pool warmed: %d connections open", opened)

    async def _retry_until_started(self) -> None:
        delay = _RETRY_FIRST_S
        attempts = 1
        while True:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                await self._start_once()
            except StoreUnavailable as exc:
                self.error = str(exc)[:200]
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            self.error = None
            log.info("redis started after %d attempts", attempts)
            return

    async def close(self) -> None:
        """Stop retrying (the connection itself is closed by whoever owns it)."""
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry


def _endpoint(url: str) -> str:
    """``scheme://host:port/db`` of a Redis URL: no user, password or query (which may hold
    one)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def describe_redis(settings: Settings) -> str:
    """The Redis mode and endpoints ``settings`` name, for the start banner (never a
    password)."""
    if settings.redis_mode == "sentinel":
        sentinels = [s.strip().rpartition("@")[2] for s in settings.redis_sentinels.split(",")]
        return (
            f"sentinel, service {settings.redis_sentinel_service!r} via "
            f"{','.join(s for s in sentinels if s)}"
        )
    if settings.redis_mode == "cluster":
        more = [s.strip() for s in settings.redis_cluster_nodes.split(",") if s.strip()]
        seeds = f" (and {','.join(more)})" if more else ""
        return f"cluster, seed {_endpoint(settings.redis_url)}{seeds}"
    return f"standalone, {_endpoint(settings.redis_url)}"
