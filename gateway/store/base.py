"""What the gateway needs from a store. Memory and Redis implement it; one contract suite
(``tests/store``) runs against both.

Every record has a TTL; every claim is atomic (the first writer wins, everyone else learns who
did); a claim held by a crashed process expires with its lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.domain.session import SessionRecord

__all__ = [
    "CircuitState",
    "CircuitStore",
    "Claim",
    "ClaimKind",
    "IdempotencyStore",
    "OrderGuardStore",
    "SessionStore",
    "Store",
    "StoreUnavailable",
    "StoredResponse",
]


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error (maps to 503)."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A finished answer kept for idempotent replay, byte for byte."""

    status: int
    body: bytes
    location: str | None = None


class ClaimKind(StrEnum):
    CLAIMED = "claimed"  # this caller owns the key now and must complete or release it
    REPLAY = "replay"  # finished earlier with the same fingerprint: answer ``response``
    IN_FLIGHT = "in_flight"  # another caller holds the lease
    MISMATCH = "mismatch"  # the key was used with a different request body


@dataclass(frozen=True, slots=True)
class Claim:
    kind: ClaimKind
    token: str | None = None
    response: StoredResponse | None = None
    retry_after_ms: int | None = None


class IdempotencyStore(Protocol):
    async def claim(
        self, scope: str, key: str, fingerprint: str, *, token: str, lease_ms: int
    ) -> Claim:
        """Atomically claim ``key`` for ``fingerprint`` with a lease of ``lease_ms``."""
        ...

    async def complete(
        self, scope: str, key: str, token: str, response: StoredResponse, *, ttl_s: int
    ) -> bool:
        """Store the final answer if ``token`` still holds the claim; False otherwise."""
        ...

    async def release(self, scope: str, key: str, token: str) -> None:
        """Drop the claim (nothing was created) so a retry runs again."""
        ...


class OrderGuardStore(Protocol):
    """One unexpired PENDING session per (merchant, orderReference)."""

    async def reserve_order(
        self, scope: str, order_ref: str, token: str, *, lease_ms: int
    ) -> str | None:
        """Reserve the order for ``token``; None on success, else the value holding it
        (a session id, or ``claim:<token>`` while another request is creating one)."""
        ...

    async def replace_order(
        self, scope: str, order_ref: str, expected: str, token: str, *, lease_ms: int
    ) -> bool:
        """Take the reservation over from ``expected`` (a session that is no longer pending)."""
        ...

    async def bind_order(
        self, scope: str, order_ref: str, token: str, session_id: str, *, ttl_s: int
    ) -> None:
        """Point the reservation held by ``token`` at the created session."""
        ...

    async def release_order(self, scope: str, order_ref: str, token: str) -> None:
        """Drop the reservation held by ``token``."""
        ...


class SessionStore(Protocol):
    async def put_session(self, record: SessionRecord, *, ttl_s: int) -> None:
        """Insert or overwrite a session."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None when unknown or expired from the store."""
        ...


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


class Store(IdempotencyStore, OrderGuardStore, SessionStore, CircuitStore, Protocol):
    """The whole store surface, opened and closed by the application."""

    name: str

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
