"""The one place a Redis client is made: pool size, timeouts, connect retries and warm-up.

Every Redis user of a gateway process (the store, routing statistics, rate limits) shares the
client made here, so the pool and its settings are the same everywhere:

- a *blocking* pool of ``max_connections``: a request beyond them waits up to ``pool_timeout_s``
  for a connection to come free instead of failing at once;
- opening a connection is retried (``connect_retries`` more times, 0.1 s, 0.2 s, 0.4 s... apart):
  nothing has been sent yet, so this is safe for every operation;
- a command is **never** re-sent: a script that timed out may have run (a claim, a commit), and
  only its caller, holding the lease, may decide what happens next;
- :func:`warm_up` opens connections before the server listens, so a burst arriving right after
  start finds a warm pool instead of opening dozens of connections at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.settings import Settings

__all__ = ["RedisClientSettings", "open_redis_client", "warm_up"]

log = logging.getLogger("gateway.store.redis")

_FIRST_BACKOFF_S = 0.1


@dataclass(frozen=True, slots=True)
class RedisClientSettings:
    """Connection settings of the shared client (``GATEWAY_REDIS_*``)."""

    max_connections: int = 64
    pool_timeout_s: float = 5.0
    connect_timeout_s: float = 1.0
    socket_timeout_s: float = 1.0
    connect_retries: int = 2
    warm_connections: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisClientSettings:
        return cls(
            max_connections=settings.redis_max_connections,
            pool_timeout_s=settings.redis_pool_timeout_seconds,
            connect_timeout_s=settings.redis_connect_timeout_seconds,
            socket_timeout_s=settings.redis_socket_timeout_seconds,
            connect_retries=settings.redis_connect_retries,
            warm_connections=settings.redis_warm_connections,
        )


def _retrying_connect(base: type[AbstractConnection], retries: int) -> type[AbstractConnection]:
    """``base`` whose :meth:`connect` tries ``1 + retries`` times (commands are not retried)."""

    class RetryingConnect(base):  # type: ignore[valid-type,misc]
        async def connect(self) -> None:
            if self.is_connected:  # the pool calls this on every checkout
                return
            for attempt in range(retries + 1):
                try:
                    await self.connect_check_health(check_health=True, retry_socket_connect=False)
                    return
                except (RedisConnectionError, RedisTimeoutError):
                    if attempt == retries:
                        raise
                    await self.disconnect()
                    await asyncio.sleep(_FIRST_BACKOFF_S * 2**attempt)

    RetryingConnect.__name__ = f"RetryingConnect{base.__name__}"
    return RetryingConnect


def open_redis_client(url: str, conf: RedisClientSettings) -> aioredis.Redis:
    """A client on a pool made per ``conf`` (bytes replies); the caller closes it."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=conf.max_connections,
        timeout=conf.pool_timeout_s,
        socket_timeout=conf.socket_timeout_s,
        socket_connect_timeout=conf.connect_timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
    )
    pool.connection_class = _retrying_connect(pool.connection_class, conf.connect_retries)
    return aioredis.Redis.from_pool(pool)


async def warm_up(client: aioredis.Redis, connections: int) -> int:
    """Open up to ``connections`` pooled connections and return them to the pool; how many
    opened. Best effort: a Redis that is down is logged, and ``/readyz`` reports it."""
    pool: Any = client.connection_pool
    wanted = min(connections, pool.max_connections)
    acquired: list[AbstractConnection] = []

    async def one() -> None:
        connection = await pool.get_connection()
        acquired.append(connection)

    try:
        results = await asyncio.gather(*(one() for _ in range(wanted)), return_exceptions=True)
    finally:
        for connection in acquired:
            await pool.release(connection)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        error = failed[0]
        if not isinstance(error, (RedisError, OSError)):
            raise error
        log.warning(
            "redis pool warm-up opened %d of %d connections: %s: %s",
            len(acquired),
            wanted,
            type(error).__name__,
            error,
        )
    return len(acquired)
