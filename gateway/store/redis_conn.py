"""The one seam between the gateway and a Redis deployment: standalone, cluster or Sentinel.

Every Redis user (the record store, circuits, routing statistics, rate limits) talks to Redis
through one :class:`RedisConn` made by :func:`gateway.store.redis_client.open_redis`:

- :meth:`RedisConn.script` runs a :class:`LuaScript` whose keys all lie in one cluster slot
  (``EVALSHA``, falling back to ``EVAL`` on ``NOSCRIPT``: the script did not run, so that is
  safe). It is **never** re-sent after the command may have reached Redis: a claim or a commit
  that timed out may have happened, and only its caller may decide what comes next.
- ``confirm=True`` answers only once the write reached :attr:`RedisConn.wait_replicas`
  replicas (``WAIT`` on the connection that wrote, in the same round trip); fewer within
  ``GATEWAY_REDIS_WAIT_TIMEOUT_MS`` raise :class:`Unconfirmed` (a
  :class:`~gateway.store.base.StoreUnavailable`: the write ran, and the caller may undo it), so
  the caller answers 503 instead of acknowledging a write a failover could lose.
- :meth:`RedisConn.read` runs an idempotent read, retried once after a connection error.
- :attr:`RedisConn.client` serves the plain single-slot commands (``GET``, ``ZADD``...): a
  ``redis.asyncio.Redis`` (standalone, Sentinel) or ``redis.asyncio.RedisCluster``; neither
  re-sends a command by itself. Wrap its calls in ``_mapped`` (redis_support): in cluster mode
  it raises ``RedisClusterException`` (not a ``RedisError``) for unroutable commands, and its
  per-node pools do not wait for a free connection (``MaxConnectionsError`` beyond
  ``GATEWAY_REDIS_MAX_CONNECTIONS`` per node), unlike the scripts' pools; a command run
  through :meth:`RedisConn.read` waits for one, up to the pool timeout.

Implementations: ``StandaloneConn`` (redis_client), ``ClusterConn`` (redis_cluster: scripts on
the slot owner's own connection, MOVED followed once), ``SentinelConn`` (redis_sentinel: the
pool follows ``+switch-master`` and READONLY; confirmed writes are refused while a failover is
under way). Each ``start()`` checks the durability settings (redis_durability).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from gateway.store.base import StoreUnavailable

__all__ = ["LuaScript", "RedisConn", "RedisMode", "ScriptArg", "Unconfirmed"]

RedisMode = Literal["standalone", "cluster", "sentinel"]
ScriptArg = str | int | float | bytes
T = TypeVar("T")


class Unconfirmed(StoreUnavailable):
    """A confirmed write ran on the primary, but its acknowledgement is refused (``WAIT``
    short of replicas, or a Sentinel failover under way meanwhile): the caller may undo it."""


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script and its SHA-1 (what ``EVALSHA`` names it by)."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "sha", hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        )


class RedisConn(Protocol):
    """A connected Redis deployment (see the module docstring)."""

    #: ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` (bytes replies).
    client: Any
    mode: RedisMode

    @property
    def wait_replicas(self) -> int:
        """Replicas a confirmed write must reach (0: no ``WAIT``)."""
        ...

    async def script(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        confirm: bool = False,
    ) -> Any:
        """Run ``script`` once on the node owning ``keys`` (one slot); see the module doc."""
        ...

    async def read(self, operation: Callable[[], Awaitable[T]]) -> T:
        """``operation()`` (an idempotent read), retried once after a connection error."""
        ...

    async def ping(self) -> None:
        """Raise unless every node the gateway writes to answers."""
        ...

    async def start(self) -> list[str]:
        """Connect, check and learn the deployment before traffic (topology, replica count
        for ``wait_replicas=auto``, Sentinel's switch-over listener); the durability warnings
        found (``min-replicas-to-write`` unset, no AOF...), each already logged loudly."""
        ...

    async def warm_up(self, connections: int) -> int:
        """Open up to ``connections`` pooled connections now (best effort); how many."""
        ...

    async def primaries(self) -> list[Any]:
        """A ``redis.asyncio.Redis`` per primary (one in standalone/Sentinel mode), for tools
        that must visit every node (test clean-up, key counts); the caller closes none."""
        ...

    async def close(self) -> None:
        """Close every pool and background task."""
        ...
