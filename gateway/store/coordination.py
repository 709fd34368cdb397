"""The coordination state the gateway processes share: circuit breakers (:class:`CircuitStore`,
in :mod:`gateway.store.circuits_memory` and :mod:`gateway.store.circuits_redis`), routing
statistics (:mod:`gateway.routing.stats`) and rate limits (:mod:`gateway.ratelimit`), opened
together as one :class:`Coordination`. It lives in Redis (shared by every process) or in memory
(one process), per ``GATEWAY_COORDINATION``; unlike the records (:mod:`gateway.store.base`),
losing it costs a little routing quality or rate-limit precision, never money.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.ratelimit import TokenBuckets
    from gateway.routing.stats import StatsStore
    from gateway.settings import Settings
    from gateway.store.redis_conn import RedisConn

__all__ = [
    "CircuitState",
    "CircuitStore",
    "Coordination",
    "memory_coordination",
    "open_coordination",
    "redis_coordination",
]


@dataclass(frozen=True, slots=True)
class CircuitState:
    """One provider's circuit as every gateway process sees it.

    ``state`` is ``open`` until ``open_until`` (epoch seconds) passes; then it reads as
    ``half_open`` until a probe succeeds (``closed``) or fails (``open`` again).
    """

    state: str  # "closed" | "open" | "half_open"
    failures: int = 0
    open_until: float | None = None


class CircuitStore(Protocol):
    """Shared circuit-breaker state. Successes in the closed state write nothing."""

    async def circuit_states(self, providers: list[str], *, now: float) -> dict[str, CircuitState]:
        """Current state of each provider (closed when nothing is stored)."""
        ...

    async def circuit_failure(
        self, provider: str, *, now: float, window_s: float, threshold: int, open_s: float
    ) -> CircuitState:
        """Count a failure in the sliding ``window_s``; atomically open the circuit for
        ``open_s`` when ``threshold`` failures are reached (or at once when half-open)."""
        ...

    async def circuit_success(self, provider: str, *, now: float) -> CircuitState:
        """A success: a half-open circuit closes (failures reset); otherwise nothing changes."""
        ...

    async def circuit_acquire_probe(
        self, provider: str, *, now: float, max_probes: int, probe_ttl_s: float
    ) -> bool:
        """In half-open, let at most ``max_probes`` requests through per ``probe_ttl_s``."""
        ...


class Coordination:
    """The coordination state of one gateway process, in one place (``GATEWAY_COORDINATION``):
    ``circuits`` (:class:`CircuitStore`), ``stats`` (routing statistics, a
    :class:`~gateway.routing.stats.StatsStore`) and ``buckets`` (rate limits, a
    :class:`~gateway.ratelimit.TokenBuckets`), all in memory or all in Redis.

    Made by :func:`memory_coordination` or :func:`redis_coordination`; :meth:`close` closes
    what the bundle owns (the statistics store and, when it opened or was handed it, the Redis
    connection ``conn``).
    """

    def __init__(
        self,
        name: str,
        *,
        circuits: CircuitStore,
        stats: StatsStore,
        buckets: TokenBuckets,
        conn: RedisConn | None = None,
        owns_conn: bool = False,
    ) -> None:
        self.name = name
        self.circuits = circuits
        self.stats = stats
        self.buckets = buckets
        #: The Redis deployment the bundle lives in (None in memory).
        self.conn = conn
        self._owns_conn = owns_conn

    async def ping(self) -> None:
        """Raise :class:`~gateway.store.base.StoreUnavailable` unless the backend answers."""
        if self.conn is not None:
            from gateway.store.redis_support import _mapped

            with _mapped("ping"):
                await self.conn.ping()

    async def warm_up(self, connections: int) -> int:
        """Open up to ``connections`` pooled Redis connections now (best effort); how many."""
        if self.conn is None or not connections:
            return 0
        return await self.conn.warm_up(connections)

    async def close(self) -> None:
        """Release what this bundle owns."""
        await self.stats.close()
        if self.conn is not None and self._owns_conn:
            from gateway.store.redis_support import _mapped

            with _mapped("close"):
                await self.conn.close()


def memory_coordination() -> Coordination:
    """Coordination in this process's memory: one gateway process only."""
    from gateway.ratelimit import MemoryTokenBuckets
    from gateway.routing.stats import MemoryStatsStore
    from gateway.store.circuits_memory import MemoryCircuits

    return Coordination(
        "memory", circuits=MemoryCircuits(), stats=MemoryStatsStore(), buckets=MemoryTokenBuckets()
    )


def redis_coordination(conn: RedisConn, prefix: str, *, owns_conn: bool = False) -> Coordination:
    """Coordination in Redis under ``prefix``, on ``conn`` (closed by :meth:`Coordination.
    close` only with ``owns_conn``), shared by every process that uses the same prefix."""
    from gateway.ratelimit import RedisTokenBuckets
    from gateway.routing.stats_redis import RedisStatsStore
    from gateway.store.circuits_redis import RedisCircuits
    from gateway.store.keys import RedisKeys

    return Coordination(
        "redis",
        circuits=RedisCircuits(conn, prefix),
        stats=RedisStatsStore(conn, prefix),
        buckets=RedisTokenBuckets(conn, RedisKeys(prefix)),
        conn=conn,
        owns_conn=owns_conn,
    )


def open_coordination(settings: Settings, *, conn: RedisConn | None = None) -> Coordination:
    """The coordination ``settings`` ask for (``Settings.coordination_backend``), not yet
    started. In Redis it uses ``conn`` when given (the record store's: one pool for both; the
    bundle then closes it) or opens one of its own per ``GATEWAY_REDIS_*``
    (:func:`~gateway.store.redis_client.open_redis`)."""
    if settings.coordination_backend == "memory":
        return memory_coordination()
    if conn is None:
        from gateway.store.redis_client import open_redis

        conn = open_redis(settings)
    return redis_coordination(conn, settings.redis_prefix, owns_conn=True)
