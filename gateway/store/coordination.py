"""The coordination state the gateway processes share: circuit breakers here, routing
statistics in :mod:`gateway.routing.stats`, rate limits in :mod:`gateway.ratelimit`. It lives
in Redis (shared by every process) or in memory (one process); unlike the records
(:mod:`gateway.store.base`) losing it costs a little routing quality, never money.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["CircuitState", "CircuitStore"]


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
