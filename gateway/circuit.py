"""Per-provider circuit breakers whose state lives in the coordination store
(:class:`~gateway.store.coordination.CircuitStore`), shared by every process.

Closed: calls flow; ``threshold`` failures within ``window`` open the circuit. Open: the provider
is excluded from routing for ``open_seconds``. Half-open: a few probe requests go through; a
success closes the circuit, a failure opens it again. Each process reads the shared state at most
once per ``refresh_seconds``; successes in the closed state cost nothing.

Every state this process learns is published as ``gateway_circuit_state``; while
:meth:`CircuitBreakers.running` is active the shared state is also re-read every
``publish_seconds``, so the gauge follows the circuits when no checkout traffic flows.

A circuit store that cannot be reached never fails a checkout: the last known states stay in
force, a half-open probe is let through and an outcome that cannot be counted is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.metrics import CIRCUIT_STATE, CIRCUIT_STATE_VALUES
from gateway.store.base import StoreUnavailable
from gateway.store.coordination import CircuitState, CircuitStore

__all__ = ["CircuitBreakers", "CircuitPolicy"]

log = logging.getLogger("gateway.circuit")


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    threshold: int = 5
    window_seconds: float = 30.0
    open_seconds: float = 30.0
    half_open_probes: int = 2
    refresh_seconds: float = 1.0
    publish_seconds: float = 5.0


def _gauge_value(state: CircuitState, now: float) -> float:
    """0 closed, 1 half-open, 2 open; an open circuit past ``open_until`` reads half-open."""
    name = state.state
    if name == "open" and state.open_until is not None and state.open_until <= now:
        name = "half_open"
    return CIRCUIT_STATE_VALUES.get(name, CIRCUIT_STATE_VALUES["closed"])


class CircuitBreakers:
    """The gateway's view of every provider's circuit."""

    def __init__(self, store: CircuitStore, providers: list[str], policy: CircuitPolicy) -> None:
        self._store = store
        self._providers = list(providers)
        self._policy = policy
        self._states: dict[str, CircuitState] = {p: CircuitState("closed") for p in providers}
        self._fetched_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._publish()

    def _publish(self) -> None:
        now = time.time()
        for provider, state in self._states.items():
            CIRCUIT_STATE.labels(provider).set(_gauge_value(state, now))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CircuitBreakers]:
        """Re-read (and publish) the shared state every ``publish_seconds`` until exit."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self._policy.publish_seconds)
                try:
                    await self.refresh(force=True)
                except Exception:
                    log.warning("circuit state refresh failed", exc_info=True)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def states(self) -> dict[str, CircuitState]:
        return dict(self._states)

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read the shared state when the cached copy is older than the refresh interval."""
        now = time.monotonic()
        if not force and now - self._fetched_at < self._policy.refresh_seconds:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._fetch())
        await asyncio.shield(self._refreshing)

    async def _fetch(self) -> None:
        try:
            self._states = await self._store.circuit_states(self._providers, now=time.time())
        except StoreUnavailable:
            log.warning("circuit states unavailable; keeping the last known states")
        self._fetched_at = time.monotonic()
        self._publish()

    def unavailable(self) -> dict[str, str]:
        """Providers routing must skip, with the reason."""
        now = time.time()
        out: dict[str, str] = {}
        for provider, state in self._states.items():
            if state.state == "open" and (state.open_until is None or state.open_until > now):
                out[provider] = "circuit open"
        return out

    def retry_after_s(self, providers: list[str]) -> int:
        """Whole seconds until the first of ``providers``' open circuits turns half-open (>= 1)."""
        now = time.time()
        until = [
            state.open_until
            for name in providers
            if (state := self._states.get(name)) is not None and state.open_until is not None
        ]
        return max(1, math.ceil(min(until) - now)) if until else 1

    async def admit(self, provider: str) -> bool:
        """May a call go to ``provider`` now? In half-open only the probe quota passes."""
        state = self._states.get(provider)
        if state is None or state.state == "closed":
            return True
        now = time.time()
        if state.state == "open" and state.open_until is not None and state.open_until > now:
            return False
        try:
            return await self._store.circuit_acquire_probe(
                provider,
                now=now,
                max_probes=self._policy.half_open_probes,
                probe_ttl_s=max(1.0, self._policy.open_seconds),
            )
        except StoreUnavailable:
            log.warning("circuit probe of %s not coordinated: circuit store unavailable", provider)
            return True

    async def success(self, provider: str) -> None:
        state = self._states.get(provider)
        if state is not None and state.state != "closed":
            try:
                self._states[provider] = await self._store.circuit_success(
                    provider, now=time.time()
                )
            except StoreUnavailable:
                log.warning("circuit success of %s not counted: store unavailable", provider)
                return
            self._publish()

    async def failure(self, provider: str) -> None:
        policy = self._policy
        try:
            new = await self._store.circuit_failure(
                provider,
                now=time.time(),
                window_s=policy.window_seconds,
                threshold=policy.threshold,
                open_s=policy.open_seconds,
            )
        except StoreUnavailable:
            log.warning("circuit failure of %s not counted: store unavailable", provider)
            return
        if new.state != self._states.get(provider, CircuitState("closed")).state:
            log.warning("circuit for %s is now %s", provider, new.state)
        self._states[provider] = new
        self._publish()
