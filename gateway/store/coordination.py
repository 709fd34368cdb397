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
    import redis.asyncio as aioredis

    from gateway.ratelimit import TokenBuckets
    from gateway.routing.stats import StatsStore
    from gateway.settings import Settings

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
    client).
    """

    def __init__(
        self,
        name: str,
        *,
        circuits: CircuitStore,
        stats: StatsStore,
        buckets: TokenBuckets,
        redis: aioredis.Redis | None = None,
        owns_client: bool = False,
        warm_connections: int = 0,
    ) -> None:
        self.name = name
        self.circuits = circuits
        self.stats = stats
        self.buckets = buckets
        self._redis = redis
        self._owns_client = owns_client
        self._warm_connections = warm_connections

    async def ping(self) -> None:
        """Raise :class:`~gateway.store.base.StoreUnavailable` unless the backend answers."""
        if self._redis is not None:
            from gateway.store.redis_support import _mapped

            with _mapped("ping"):
                await self._redis.ping()

    async def warm_up(self) -> int:
        """Open the pooled Redis connections of a client of its own (best effort); how many."""
        if self._redis is None or not self._warm_connections:
            return 0
        from gateway.store.redis_client import warm_up

        return await warm_up(self._redis, self._warm_connections)

    async def close(self) -> None:
        """Release what this bundle owns."""
        await self.stats.close()
        if self._redis is not None and self._owns_client:
            from gateway.store.redis_support import _mapped

            with _mapped("close"):
                await self._redis.aclose()


def memory_coordination() -> Coordination:
    """Coordination in this process's memory: one gateway process only."""
    from gateway.ratelimit import MemoryTokenBuckets
    from gateway.routing.stats import MemoryStatsStore
    from gateway.store.circuits_memory import MemoryCircuits

    return Coordination(
        "memory", circuits=MemoryCircuits(), stats=MemoryStatsStore(), buckets=MemoryTokenBuckets()
    )


def redis_coordination(
    client: aioredis.Redis, prefix: str, *, owns_client: bool = False, warm_connections: int = 0
) -> Coordination:
    """Coordination in Redis under ``prefix``, on ``client`` (closed by :meth:`Coordination.
    close` only with ``owns_client``), shared by every process that uses the same prefix."""
    from gateway.ratelimit import RedisTokenBuckets
    from gateway.routing.stats_redis import RedisStatsStore
    from gateway.store.circuits_redis import RedisCircuits
    from gateway.store.keys import RedisKeys

    return Coordination(
        "redis",
        circuits=RedisCircuits(client, prefix),
        stats=RedisStatsStore(client, prefix),
        buckets=RedisTokenBuckets(client, RedisKeys(prefix)),
        redis=client,
        owns_client=owns_client,
        warm_connections=warm_connections,
    )


def open_coordination(
    settings: Settings, *, redis_client: aioredis.Redis | None = None
) -> Coordination:
    """The coordination ``settings`` ask for (``Settings.coordination_backend``). In Redis it
    uses ``redis_client`` when given (the record store's: one pool for both; the bundle then
    closes it) or opens a client of its own per ``GATEWAY_REDIS_*``."""
    if settings.coordination_backend == "memory":
        return memory_coordination()
    if redis_client is not None:
        return redis_coordination(redis_client, settings.redis_prefix, owns_client=True)
    from gateway.store.redis_client import RedisClientSettings, open_redis_client

    conf = RedisClientSettings.from_settings(settings)
    return redis_coordination(
        open_redis_client(settings.redis_url, conf),
        settings.redis_prefix,
        owns_client=True,
        warm_connections=conf.warm_connections,
    )
