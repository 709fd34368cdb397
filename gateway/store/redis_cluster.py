"""``GATEWAY_REDIS_MODE=cluster``: :class:`ClusterConn`, a RedisConn on a Redis Cluster.

- :attr:`ClusterConn.client` is a ``redis.asyncio.RedisCluster`` built with a retry policy of
  **zero**: redis-py's default re-sends a command after a connection error or a timeout, when
  it may already have run (a statistics increment counted twice, a claim taken twice). Slot
  redirections (``MOVED``, ``ASK``, ``TRYAGAIN``) are still followed: their command did not run.
- Scripts do not go through it: :meth:`ClusterConn.script` finds the primary owning the keys'
  slot and runs the script on that primary's own pooled client, with ``WAIT`` in the same
  pipeline when confirmed (so the acknowledgement is about that write's connection). A ``MOVED``
  reply (the slot moved: the script did not run) refreshes the topology and runs it once more;
  ``ASK`` runs it once on the importing node after ``ASKING``; ``TRYAGAIN`` (keys split by a
  migration) runs it again after a pause, for up to 0.75 s. Anything else is raised as
  :class:`~gateway.store.base.StoreUnavailable`, never retried.
- :meth:`ClusterConn.read` retries an idempotent read once, after a refresh of the topology.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import (
    RedisClientSettings,
    open_node_client,
    run_script,
    warm_up,
)
from gateway.store.redis_conn import LuaScript, RedisMode, ScriptArg
from gateway.store.redis_durability import durability_warnings, replica_count
from gateway.store.redis_support import _mapped

__all__ = ["ClusterConn", "cluster_key_slot"]

log = logging.getLogger("gateway.store.redis")
T = TypeVar("T")

#: pauses before re-sending a script refused with TRYAGAIN (its keys are split between the two
#: nodes of a slot migration; it did not run): 0.75 s in all, then 503
_TRYAGAIN_PAUSES_S = (0.05, 0.1, 0.2, 0.4)
#: the first and the longest pause of a read waiting for a free connection to its node
_BUSY_PAUSE_S = 0.002
_BUSY_PAUSE_MAX_S = 0.05
_READ_RETRY_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    RedisClusterException,
)


def cluster_key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (CRC16 of its hash tag, like the server)."""
    from redis.crc import key_slot

    return key_slot(key.encode() if isinstance(key, str) else key)


class ClusterConn:
    """:class:`~gateway.store.redis_conn.RedisConn` on a Redis Cluster (see the module doc)."""

    mode: RedisMode = "cluster"

    def __init__(
        self,
        seed_url: str,
        conf: RedisClientSettings,
        *,
        wait_replicas: int | str,
        wait_timeout_ms: int,
        more_seeds: Sequence[tuple[str, int]] = (),
    ) -> None:
        parts = urlsplit(seed_url)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._conf = conf
        self.client = RedisCluster.from_url(
            seed_url,
            # without them, a start while the URL's node is down never finds the cluster
            startup_nodes=[ClusterNode(host, port) for host, port in more_seeds] or None,
            retry=Retry(NoBackoff(), 0),
            max_connections=conf.max_connections,
            socket_timeout=conf.socket_timeout_s,
            socket_connect_timeout=conf.connect_timeout_s,
            require_full_coverage=True,
            decode_responses=False,
        )
        self._wanted = wait_replicas
        self._wait_replicas = wait_replicas if isinstance(wait_replicas, int) else 0
        self._wait_timeout_ms = wait_timeout_ms
        self._nodes: dict[str, aioredis.Redis] = {}
        self._refresh_lock = asyncio.Lock()
        self._topology_epoch = 0
        self._stale = False

    @property
    def wait_replicas(self) -> int:
        return self._wait_replicas

    def _node_client(self, node: ClusterNode) -> aioredis.Redis:
        client = self._nodes.get(node.name)
        if client is None:
            client = open_node_client(
                node.host,
                int(node.port),
                self._conf,
                username=self._username,
                password=self._password,
            )
            self._nodes[node.name] = client
        return client

    async def _refresh(self, seen_epoch: int) -> None:
        """Learn the topology again, unless another task did since ``seen_epoch``."""
        async with self._refresh_lock:
            if self._topology_epoch != seen_epoch:
                return
            await self.client.nodes_manager.initialize()
            self._topology_epoch += 1
            self._stale = False

    def _slot(self, keys: Sequence[str]) -> int:
        if not keys:
            raise StoreUnavailable("redis script without keys cannot be routed in a cluster")
        slots = {cluster_key_slot(key) for key in keys}
        if len(slots) != 1:
            raise StoreUnavailable(
                f"redis script keys span {len(slots)} cluster slots (CROSSSLOT): "
                "every key of one script needs the same hash tag"
            )
        return slots.pop()

    async def script(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        confirm: bool = False,
    ) -> Any:
        slot = self._slot(keys)
        wait = self._wait_replicas if confirm else 0
        with _mapped("script"):
            await self.client.initialize()
            if self._stale:
                await self._refresh(self._topology_epoch)
            moved = False
            pauses = iter(_TRYAGAIN_PAUSES_S)
            while True:
                epoch = self._topology_epoch
                node = self.client.nodes_manager.get_node_from_slot(slot)
                try:
                    try:
                        return await run_script(
                            self._node_client(node),
                            script,
                            keys,
                            args,
                            wait_replicas=wait,
                            wait_timeout_ms=self._wait_timeout_ms,
                        )
                    except AskError as exc:
                        # the slot is being migrated and these keys already left
                        target = self.client.nodes_manager.get_node(exc.host, exc.port)
                        if target is None:
                            target = ClusterNode(exc.host, exc.port)
                        return await run_script(
                            self._node_client(target),
                            script,
                            keys,
                            args,
                            wait_replicas=wait,
                            wait_timeout_ms=self._wait_timeout_ms,
                            asking=True,
                        )
                except MovedError:
                    # the slot lives elsewhere now; the script did not run
                    if moved:
                        raise
                    moved = True
                    await self._refresh(epoch)
                except TryAgainError:
                    # the keys are split between the two nodes of a migration; it did not run
                    pause = next(pauses, None)
                    if pause is None:
                        raise
                    await asyncio.sleep(pause)
                except (RedisConnectionError, RedisTimeoutError):
                    # may have run: never again; the next call re-learns the topology
                    self._stale = True
                    raise

    async def read(self, operation: Callable[[], Awaitable[T]]) -> T:
        """``operation()``, retried once after a topology refresh; while every connection to
        its node is busy (``MaxConnectionsError``: nothing was sent) it waits for one, up to
        the pool timeout, as the scripts' blocking pools do, instead of answering 503."""
        epoch = self._topology_epoch
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._conf.pool_timeout_s
        pause = _BUSY_PAUSE_S
        refreshed = False
        while True:
            try:
                return await operation()
            except MaxConnectionsError:
                if loop.time() >= give_up_at:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, _BUSY_PAUSE_MAX_S)
            except _READ_RETRY_ERRORS:
                if refreshed:
                    raise
                refreshed = True
                await self._refresh(epoch)

    async def _primaries(self) -> list[tuple[str, aioredis.Redis]]:
        await self.client.initialize()
        return [(node.name, self._node_client(node)) for node in self.client.get_primaries()]

    async def ping(self) -> None:
        """Every primary answers within the socket timeout. A failed ping marks the topology
        stale, so the next one (and the next script) pings the primaries the cluster has then:
        after a failover ``/readyz`` must not keep pinging the dead one."""
        if self._stale:
            await self._refresh(self._topology_epoch)
        primaries = await self._primaries()
        try:
            # bounded as a whole: a frozen node's new connection would cost a socket timeout
            # per connect attempt
            await asyncio.wait_for(
                asyncio.gather(*(client.ping() for _, client in primaries)),
                self._conf.socket_timeout_s,
            )
        except (*_READ_RETRY_ERRORS, TimeoutError):
            self._stale = True
            raise

    async def start(self) -> list[str]:
        with _mapped("start"):
            await self.client.initialize()  # refuses a cluster without full slot coverage
            primaries = await self._primaries()
            for name, client in primaries:
                info = await client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
                state = info.get("cluster_state") if isinstance(info, dict) else None
                if state != "ok":
                    raise StoreUnavailable(f"redis cluster node {name} reports {state}")
            counts = [await replica_count(client) for _, client in primaries]
            warnings: list[str] = []
            if self._wanted == "auto":
                self._wait_replicas = 1 if any(counts) else 0
            if self._wait_replicas > 0:
                for (name, _), count in zip(primaries, counts, strict=True):
                    if count < self._wait_replicas:
                        line = (
                            f"redis {name} has {count} replicas but writes wait for "
                            f"{self._wait_replicas}: its writes will answer 503"
                        )
                        log.warning("REDIS DURABILITY: %s", line)
                        warnings.append(line)
            warnings += await durability_warnings(
                primaries, wait_replicas=self._wait_replicas, mode=self.mode
            )
            log.info(
                "redis cluster: %d primaries, %d replicas, writes wait for %d",
                len(primaries),
                sum(counts),
                self._wait_replicas,
            )
            return warnings

    async def warm_up(self, connections: int) -> int:
        opened = 0
        with _mapped("warm-up"):
            for _, client in await self._primaries():
                opened += await warm_up(client, connections)
        return opened

    async def primaries(self) -> list[Any]:
        return [client for _, client in await self._primaries()]

    async def close(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()
        await self.client.aclose()
        # RedisCluster.aclose() does nothing while the client waits to re-learn the topology
        # (after a connection error): close its nodes' connections ourselves
        await self.client.nodes_manager.aclose()
        await self.client.nodes_manager.aclose("startup_nodes")
