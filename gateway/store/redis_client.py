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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.redis_conn import LuaScript, RedisConn, RedisMode, ScriptArg, Unconfirmed
from gateway.store.redis_durability import durability_warnings, replica_count
from gateway.store.redis_support import _mapped

__all__ = [
    "RedisClientSettings",
    "StandaloneConn",
    "open_node_client",
    "open_redis",
    "open_redis_client",
    "parse_sentinels",
    "run_script",
    "warm_up",
]

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


def _pool_options(conf: RedisClientSettings) -> dict[str, Any]:
    return {
        "max_connections": conf.max_connections,
        "timeout": conf.pool_timeout_s,
        "socket_timeout": conf.socket_timeout_s,
        "socket_connect_timeout": conf.connect_timeout_s,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }


def _client_on(pool: aioredis.BlockingConnectionPool, conf: RedisClientSettings) -> aioredis.Redis:
    pool.connection_class = _retrying_connect(pool.connection_class, conf.connect_retries)
    return aioredis.Redis.from_pool(pool)


def open_redis_client(url: str, conf: RedisClientSettings) -> aioredis.Redis:
    """A client on a pool made per ``conf`` (bytes replies); the caller closes it."""
    return _client_on(aioredis.BlockingConnectionPool.from_url(url, **_pool_options(conf)), conf)


def open_node_client(
    host: str,
    port: int,
    conf: RedisClientSettings,
    *,
    username: str | None = None,
    password: str | None = None,
) -> aioredis.Redis:
    """Like :func:`open_redis_client`, for one node named by address (a cluster primary)."""
    pool = aioredis.BlockingConnectionPool(
        host=host, port=port, username=username, password=password, **_pool_options(conf)
    )
    return _client_on(pool, conf)


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


T = TypeVar("T")


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as address pairs (``GATEWAY_REDIS_SENTINELS``,
    ``GATEWAY_REDIS_CLUSTER_NODES``); ValueError (quoting nothing) when one is malformed."""
    found: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError("redis_sentinels must be host:port pairs separated by commas")
        found.append((host.strip("[]"), int(port)))
    return found


async def run_script(
    client: aioredis.Redis,
    script: LuaScript,
    keys: Sequence[str],
    args: Sequence[ScriptArg],
    *,
    wait_replicas: int,
    wait_timeout_ms: int,
    asking: bool = False,
) -> Any:
    """``script`` once on ``client``'s server (``EVALSHA``, then ``EVAL`` after
    ``NOSCRIPT``: it did not run). ``wait_replicas`` > 0: ``WAIT`` follows in the same
    pipeline, on the same connection, and fewer acknowledgements raise
    :class:`StoreUnavailable`. ``asking``: ``ASKING`` first (a slot being migrated). An error
    reply is raised as redis-py's exception (``MovedError``...); nothing is re-sent."""
    for command in ("EVALSHA", "EVAL"):
        body = script.sha if command == "EVALSHA" else script.source
        if wait_replicas <= 0 and not asking:
            try:
                return await client.execute_command(  # type: ignore[no-untyped-call]
                    command, body, len(keys), *keys, *args
                )
            except NoScriptError:
                continue
        async with client.pipeline(transaction=False) as pipe:
            if asking:
                pipe.execute_command("ASKING")
            pipe.execute_command(command, body, len(keys), *keys, *args)
            if wait_replicas > 0:
                pipe.execute_command("WAIT", wait_replicas, wait_timeout_ms)
            replies = await pipe.execute(raise_on_error=False)
        reply = replies[1 if asking else 0]
        if isinstance(reply, NoScriptError):
            continue
        if isinstance(reply, BaseException):
            raise reply
        if wait_replicas > 0:
            acked = replies[-1]
            if isinstance(acked, BaseException):
                raise acked
            if int(acked) < wait_replicas:
                raise Unconfirmed(
                    f"redis write reached {int(acked)} of {wait_replicas} replicas "
                    f"within {wait_timeout_ms} ms"
                )
        return reply
    raise StoreUnavailable("redis refused the script twice (NOSCRIPT after EVAL)")


class StandaloneConn:
    """:class:`~gateway.store.redis_conn.RedisConn` on one server (``GATEWAY_REDIS_MODE=
    standalone``): ``WAIT`` rides in the write's pipeline, on its connection."""

    mode: RedisMode = "standalone"

    def __init__(self, client: aioredis.Redis, *, wait_replicas: int | str, wait_timeout_ms: int):
        self.client = client
        self._wanted = wait_replicas
        self._wait_replicas = wait_replicas if isinstance(wait_replicas, int) else 0
        self._wait_timeout_ms = wait_timeout_ms

    @property
    def wait_replicas(self) -> int:
        return self._wait_replicas

    async def script(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        confirm: bool = False,
    ) -> Any:
        return await run_script(
            self.client,
            script,
            keys,
            args,
            wait_replicas=self._wait_replicas if confirm else 0,
            wait_timeout_ms=self._wait_timeout_ms,
        )

    async def read(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except (RedisConnectionError, RedisTimeoutError):
            return await operation()

    async def ping(self) -> None:
        await self.client.ping()

    async def start(self) -> list[str]:
        with _mapped("start"):
            address = self.client.connection_pool.connection_kwargs
            name = f"{address.get('host', '?')}:{address.get('port', '?')}"
            cluster = await self.client.info("cluster")
            if int(cluster.get("cluster_enabled", 0)):
                # it answers for its own slots only: every other key is MOVED (a 503)
                raise StoreUnavailable(
                    f"redis {name} is a Redis Cluster node: set GATEWAY_REDIS_MODE=cluster"
                )
            replicas = await replica_count(self.client)
            if self._wanted == "auto":
                self._wait_replicas = 1 if replicas > 0 else 0
            return await durability_warnings(
                [(name, self.client)], wait_replicas=self._wait_replicas, mode=self.mode
            )

    async def warm_up(self, connections: int) -> int:
        return await warm_up(self.client, connections)

    async def primaries(self) -> list[Any]:
        return [self.client]

    async def close(self) -> None:
        await self.client.aclose()


def open_redis(settings: Settings, conf: RedisClientSettings | None = None) -> RedisConn:
    """The :class:`~gateway.store.redis_conn.RedisConn` ``GATEWAY_REDIS_MODE`` asks for (not
    yet started: call :meth:`start` before traffic)."""
    conf = conf or RedisClientSettings.from_settings(settings)
    if settings.redis_mode == "cluster":
        from gateway.store.redis_cluster import ClusterConn

        return ClusterConn(
            settings.redis_url,
            conf,
            more_seeds=parse_sentinels(settings.redis_cluster_nodes),
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )
    if settings.redis_mode == "sentinel":
        from gateway.store.redis_sentinel import SentinelConn

        password = settings.redis_sentinel_password
        return SentinelConn(
            sentinels=parse_sentinels(settings.redis_sentinels),
            service=settings.redis_sentinel_service,
            sentinel_password=password.get_secret_value() if password else None,
            data_url=settings.redis_url,
            conf=conf,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )
    return StandaloneConn(
        open_redis_client(settings.redis_url, conf),
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
