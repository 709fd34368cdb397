"""Outcome learning for the router: background writes to the stats store, snapshot refresh.

:class:`OutcomeFeed` turns attempt and payment outcomes into decayed counter updates and keeps
an immutable :class:`~gateway.routing.stats.StatsSnapshot` fresh. Writes are fire-and-forget
(tracked, bounded): a slow or failing store never delays or fails a checkout; every failure is
counted in the shared ``counters`` (the metrics hook) and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway.routing.stats import (
    MemoryStatsStore,
    StatsSnapshot,
    StatsStore,
    creation_delta,
    payment_delta,
    segments_for,
)

__all__ = ["OutcomeFeed"]

log = logging.getLogger("gateway.routing")
_MAX_PENDING_WRITES = 1000


class OutcomeFeed:
    """Counts outcomes into ``store`` and serves the latest snapshot of it."""

    def __init__(
        self,
        store: StatsStore | None,
        *,
        owns_store: bool,
        clock: Callable[[], float],
        counters: Counter[str],
    ) -> None:
        self.store: StatsStore = store if store is not None else MemoryStatsStore()
        self._owns = owns_store or store is None
        self._clock = clock
        self._counters = counters
        self._pending: set[asyncio.Task[None]] = set()
        self.snapshot = StatsSnapshot()

    def creation(
        self,
        provider: str,
        outcome: str,
        latency_ms: float,
        currency: str | None,
        country: str | None,
        half_life_s: float,
    ) -> None:
        """Count one session-creation attempt; outcomes that are not the provider's fault
        (a rejection of our request, an unsupported flow) are skipped."""
        delta = creation_delta(outcome, latency_ms)
        if delta is None:
            self._counters["outcome_not_counted"] += 1
            return
        segments = segments_for(provider, currency, country)
        self._write(self.store.add(segments, delta, now=self._clock(), half_life_s=half_life_s))

    def payment(
        self,
        provider: str,
        success: bool,
        currency: str | None,
        country: str | None,
        half_life_s: float,
    ) -> None:
        """Count one payment outcome reported by a provider webhook."""
        segments = segments_for(provider, currency, country)
        delta = payment_delta(success)
        self._write(self.store.add(segments, delta, now=self._clock(), half_life_s=half_life_s))

    def _write(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self._pending) >= _MAX_PENDING_WRITES:
            work.close()
            self._counters["stats_write_dropped"] += 1
            return
        task = asyncio.create_task(self._guarded(work))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:  # a stats failure must never surface in a checkout
            self._counters["stats_write_failed"] += 1
            log.warning("routing statistics write failed", exc_info=True)

    async def flush(self) -> None:
        """Wait for the writes in flight."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def refresh(self, providers: Sequence[str], half_life_s: float) -> StatsSnapshot:
        """Load the shared counters into a new snapshot (the old one stays on failure)."""
        now = self._clock()
        try:
            raw = await self.store.load(providers=providers, now=now, half_life_s=half_life_s)
        except Exception:
            self._counters["stats_refresh_failed"] += 1
            log.warning("routing statistics refresh failed", exc_info=True)
            return self.snapshot
        self.snapshot = StatsSnapshot.of(raw, now)
        return self.snapshot

    async def close(self) -> None:
        """Finish pending writes; close the store when this feed owns it."""
        await self.flush()
        if self._owns:
            await self.store.close()
