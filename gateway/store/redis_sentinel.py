"""``GATEWAY_REDIS_MODE=sentinel``: :class:`SentinelConn`, a RedisConn behind Redis Sentinel.

The client asks the Sentinels for the primary of ``GATEWAY_REDIS_SENTINEL_SERVICE`` whenever it
opens a connection. Pooled connections would keep talking to a demoted primary, whose writes a
failover throws away, so the pool is *reset* (idle connections closed, busy ones closed when
released, the primary's address forgotten) as soon as either

- a Sentinel publishes ``+switch-master`` for the service (a background task per Sentinel
  listens), or
- a reply says ``READONLY`` (the node is a replica now) or the connection to the primary breaks.

Writes that must survive a failover run with ``confirm=True``: ``WAIT`` in the same pipeline,
so a write that no replica acknowledged (a demoted primary has none) raises
:class:`~gateway.store.base.StoreUnavailable` instead of being answered 201. ``WAIT`` alone is
not enough with two replicas or more: once Sentinel promoted one, the old primary still has
the others until Sentinel re-points them, and their acknowledgements are worthless (they resync
from the new primary). So from ``+try-failover`` (published at least one Sentinel tick, 100
ms, before the promotion) until ``+switch-master``, a confirmed write is refused even when
``WAIT`` succeeded: it may have happened, as after any 503, and the caller's retry decides.
Each Sentinel's attempt is held until that Sentinel gives it up (``-failover-abort-*``: a
Sentinel not elected gives up while the elected one promotes), and a write during which a
failover started or a switch-over was announced is refused as well, however quickly the
failover ended.
``wait_replicas=auto`` is 1 here: a Sentinel deployment has replicas by definition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import RedisClientSettings, run_script, warm_up
from gateway.store.redis_conn import LuaScript, RedisMode, ScriptArg, Unconfirmed
from gateway.store.redis_durability import durability_warnings, replica_count
from gateway.store.redis_support import _mapped

__all__ = ["SentinelConn"]

log = logging.getLogger("gateway.store.redis")
T = TypeVar("T")

_LISTEN_PAUSE_S = 0.5
_SWITCH = "+switch-master"
#: a Sentinel starts a failover (automatic or SENTINEL FAILOVER), or gives one up
_STARTS = "+try-failover"
_ABORTS = (
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
)
#: a failover whose end was never heard of stops holding back confirmations after this
_FAILOVER_HOLD_S = 60.0


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel pool with the blocking checkout of ``BlockingConnectionPool``: a request
    beyond ``max_connections`` waits up to ``timeout`` for a free connection."""


class SentinelConn:
    """:class:`~gateway.store.redis_conn.RedisConn` behind Sentinel (see the module doc)."""

    mode: RedisMode = "sentinel"

    def __init__(
        self,
        *,
        sentinels: Sequence[tuple[str, int]],
        service: str,
        sentinel_password: str | None,
        data_url: str,
        conf: RedisClientSettings,
        wait_replicas: int | str,
        wait_timeout_ms: int,
    ) -> None:
        parts = urlsplit(data_url)
        timeouts = {
            "socket_timeout": conf.socket_timeout_s,
            "socket_connect_timeout": conf.connect_timeout_s,
        }
        self._sentinel_kwargs: dict[str, Any] = {
            **timeouts,
            "password": sentinel_password,
            "retry": Retry(NoBackoff(), 0),
        }
        self._addresses = list(sentinels)
        self._service = service
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            self._addresses,
            sentinel_kwargs=self._sentinel_kwargs,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
            health_check_interval=30,
            **timeouts,
        )
        self.client: aioredis.Redis = self._sentinel.master_for(
            service,
            redis_class=aioredis.Redis,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=conf.max_connections,
            timeout=conf.pool_timeout_s,
        )
        self._wanted = wait_replicas
        self._wait_replicas = wait_replicas if isinstance(wait_replicas, int) else 1
        self._wait_timeout_ms = wait_timeout_ms
        self._listeners: list[asyncio.Task[None]] = []
        self._closing = False
        self._subscribed = asyncio.Event()
        #: the failovers under way: when each Sentinel that announced one started it
        self._failovers: dict[str, float] = {}
        #: counts failover starts and switch-overs, so a write spanning one is never confirmed
        self._failover_epoch = 0
        self.resets = 0

    @property
    def wait_replicas(self) -> int:
        return self._wait_replicas

    async def reset(self, why: str) -> None:
        """Forget the primary: idle connections close now, busy ones when released, and the
        next connection asks the Sentinels where the primary is."""
        pool: Any = self.client.connection_pool
        pool.master_address = None
        await pool.update_active_connections_for_reconnect()
        await pool.disconnect(inuse_connections=False)
        self.resets += 1
        log.warning("redis sentinel %s: %s; connection pool reset", self._service, why)

    def _failover_under_way(self) -> bool:
        now = time.monotonic()
        for source, since in list(self._failovers.items()):
            if now - since > _FAILOVER_HOLD_S:
                del self._failovers[source]
        return bool(self._failovers)

    async def script(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        confirm: bool = False,
    ) -> Any:
        if confirm and self._failover_under_way():
            raise StoreUnavailable(f"redis sentinel {self._service}: failover under way")
        epoch = self._failover_epoch
        with _mapped("script"):
            try:
                reply = await run_script(
                    self.client,
                    script,
                    keys,
                    args,
                    wait_replicas=self._wait_replicas if confirm else 0,
                    wait_timeout_ms=self._wait_timeout_ms,
                )
                if confirm and (self._failover_under_way() or self._failover_epoch != epoch):
                    # a failover started (or even ended) meanwhile: the replica that
                    # acknowledged may be re-pointed to the new primary
                    raise Unconfirmed(
                        f"redis sentinel {self._service}: failover started before the write "
                        "was confirmed (it may have happened)"
                    )
                return reply
            except (ReadOnlyError, RedisConnectionError) as exc:
                # READONLY (redis-py turns it into "The previous master is now a slave") or
                # a broken link: the primary may have changed; never re-sent
                await self.reset(f"{type(exc).__name__} from the primary")
                raise

    async def read(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            await self.reset(f"{type(exc).__name__} on a read")
            return await operation()

    async def ping(self) -> None:
        await self.client.ping()

    async def start(self) -> list[str]:
        with _mapped("start"):
            await self.client.ping()  # MasterNotFoundError when no Sentinel names a primary
            replicas = await replica_count(self.client)
            if self._wanted == "auto":
                self._wait_replicas = 1
            warnings: list[str] = []
            if replicas < self._wait_replicas:
                line = (
                    f"redis sentinel {self._service}: the primary has {replicas} replicas but "
                    f"writes wait for {self._wait_replicas}: they will answer 503"
                )
                log.warning("REDIS DURABILITY: %s", line)
                warnings.append(line)
            address = await self._sentinel.discover_master(self._service)
            warnings += await durability_warnings(
                [(f"{address[0]}:{address[1]}", self.client)],
                wait_replicas=self._wait_replicas,
                mode=self.mode,
            )
        if not self._listeners:
            self._listeners = [
                asyncio.create_task(self._listen(host, port), name=f"sentinel-{host}:{port}")
                for host, port in self._addresses
            ]
            try:
                await asyncio.wait_for(self._subscribed.wait(), _LISTEN_PAUSE_S * 4)
            except TimeoutError:
                line = (
                    f"redis sentinel {self._service}: no Sentinel accepted the failover "
                    "subscription yet: a switch-over is noticed late"
                )
                log.warning("REDIS DURABILITY: %s", line)
                warnings.append(line)
        log.info(
            "redis sentinel %s: primary %s:%s, %d replicas, writes wait for %d",
            self._service,
            address[0],
            address[1],
            replicas,
            self._wait_replicas,
        )
        return warnings

    async def _listen(self, host: str, port: int) -> None:
        """Follow the failover events on one Sentinel, reconnecting until closed (redis-py
        may turn a cancellation inside ``get_message`` into a timeout: the flag ends it)."""
        while not self._closing:
            sentinel = aioredis.Redis(host=host, port=port, **self._sentinel_kwargs)
            try:
                async with sentinel.pubsub() as pubsub:
                    await pubsub.subscribe(_SWITCH, _STARTS, *_ABORTS)
                    await self._catch_up(sentinel, f"{host}:{port}")
                    self._subscribed.set()
                    while not self._closing:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None:
                            await self._on_event(message, f"{host}:{port}")
            except (RedisError, OSError) as exc:
                log.debug("sentinel %s:%s listener: %s", host, port, type(exc).__name__)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await sentinel.aclose()
            if not self._closing:
                await asyncio.sleep(_LISTEN_PAUSE_S)

    async def _catch_up(self, sentinel: aioredis.Redis, source: str) -> None:
        """Hold confirmations for a failover this Sentinel started while nobody listened (before
        the first subscription, or while its listener reconnected): its ``+try-failover`` was
        missed, but the master still carries ``failover_in_progress`` until it ends."""
        try:
            state = await sentinel.sentinel_master(self._service)
        except ResponseError:  # this Sentinel does not monitor the service: nothing to hold
            return
        flags = state.get("flags", "") if isinstance(state, dict) else ""
        text = flags.decode() if isinstance(flags, bytes) else str(flags)
        if "failover_in_progress" in text.split(","):
            self._failover_epoch += 1
            if source not in self._failovers:
                self._failovers[source] = time.monotonic()
                log.warning(
                    "redis sentinel %s: a failover is under way; confirmed writes are refused "
                    "until the new primary is announced",
                    self._service,
                )

    async def _on_event(self, message: dict[str, Any], source: str) -> None:
        """Apply one failover event that the Sentinel at ``source`` published: each Sentinel's
        attempt is held until that Sentinel gives it up, or any announces the new primary."""
        channel, data = (
            value.decode() if isinstance(value, bytes) else str(value)
            for value in (message.get("channel"), message.get("data"))
        )
        words = data.split()
        if channel == _SWITCH:
            if words[:1] == [self._service]:
                self._failover_epoch += 1
                await self.reset(f"+switch-master to {':'.join(words[3:5])}")
                self._failovers.clear()
        elif words[:2] == ["master", self._service]:
            if channel == _STARTS:
                self._failover_epoch += 1
                if source not in self._failovers:
                    self._failovers[source] = time.monotonic()
                    log.warning(
                        "redis sentinel %s: failover started; confirmed writes are refused "
                        "until the new primary is announced",
                        self._service,
                    )
            elif channel in _ABORTS and self._failovers.pop(source, None) is not None:
                log.warning("redis sentinel %s: failover abandoned (%s)", self._service, channel)

    async def warm_up(self, connections: int) -> int:
        return await warm_up(self.client, connections)

    async def primaries(self) -> list[Any]:
        return [self.client]

    async def close(self) -> None:
        self._closing = True
        for task in self._listeners:
            task.cancel()
        for task in self._listeners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listeners.clear()
        await self.client.aclose()
        await self._sentinel.aclose()
