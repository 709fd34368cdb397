"""Outcome learning for the router: background writes to the stats store, snapshot refresh.

:class:`OutcomeFeed` turns attempt and payment outcomes into decayed counter updates and keeps
an immutable :class:`~gateway.routing.stats.StatsSnapshot` fresh. Writes are fire-and-forget
(tracked, bounded): a slow or failing store never delays or fails a checkout; every failure is
counted in the shared ``counters`` (the metrics hook) and logged.

Outcomes are summed in memory per set of segments and written together every
``batch_seconds`` (one store call per set instead of one per checkout); with half-lives of
minutes to hours, stamping a batch with its write time changes the decayed counts by a factor
of at most ``0.5 ** (batch_seconds / half_life)``. With volume forgetting a batch of ``n``
outcomes is added at once: the old evidence is discounted by ``n`` outcomes, the batch's own
outcomes are not discounted against each other (a batch is a fraction of a window).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from redis.exceptions import RedisError

from gateway.routing.stats import (
    Counters,
    Forgetting,
    MemoryStatsStore,
    SegmentKey,
    StatsSnapshot,
    StatsStore,
    creation_delta,
    payment_delta,
    segments_for,
)
from gateway.store.base import StoreUnavailable

__all__ = ["OutcomeFeed"]

log = logging.getLogger("gateway.routing")
_MAX_PENDING_WRITES = 1000
#: what one batch entry sums: the same segments, half-life and forgetting
_Slot = tuple[tuple[SegmentKey, ...], float, Forgetting | None]


class OutcomeFeed:
    """Counts outcomes into ``store`` and serves the latest snapshot of it."""

    def __init__(
        self,
        store: StatsStore | None,
        *,
        owns_store: bool,
        clock: Callable[[], float],
        counters: Counter[str],
        batch_seconds: float = 0.25,
    ) -> None:
        self.store: StatsStore = store if store is not None else MemoryStatsStore()
        self._batch_s = batch_seconds
        self._batch: dict[_Slot, Counters] = {}
        self._batch_task: asyncio.Task[None] | None = None
        self._flush_now = asyncio.Event()
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
        *,
        method: str | None = None,
        forgetting: Forgetting | None = None,
    ) -> None:
        """Count one session-creation attempt; outcomes that are not the provider's fault
        (a rejection of our request, an unsupported flow) are skipped."""
        delta = creation_delta(outcome, latency_ms)
        if delta is None:
            self._counters["outcome_not_counted"] += 1
            return
        segments = segments_for(provider, currency, country, method)
        self._add(segments, delta, half_life_s, forgetting)

    def payment(
        self,
        provider: str,
        success: bool,
        currency: str | None,
        country: str | None,
        half_life_s: float,
        *,
        method: str | None = None,
        forgetting: Forgetting | None = None,
    ) -> None:
        """Count one payment outcome reported by a provider webhook."""
        segments = segments_for(provider, currency, country, method)
        self._add(segments, payment_delta(success), half_life_s, forgetting)

    def _add(
        self,
        segments: list[SegmentKey],
        delta: Counters,
        half_life_s: float,
        forgetting: Forgetting | None,
    ) -> None:
        slot = (tuple(segments), half_life_s, forgetting)
        current = self._batch.get(slot)
        self._batch[slot] = delta if current is None else current.plus(delta)
        if self._batch_task is None or self._batch_task.done():
            self._batch_task = asyncio.create_task(self._write_batch_later())

    async def _write_batch_later(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flush_now.wait(), self._batch_s)
        self._flush_now.clear()
        batch, self._batch = self._batch, {}
        now = self._clock()
        for (segments, half_life_s, forgetting), delta in batch.items():
            self._write(
                self.store.add(
                    list(segments), delta, now=now, half_life_s=half_life_s, forgetting=forgetting
                )
            )

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
        except Exception as exc:  # a stats failure must never surface in a checkout
            self._counters["stats_write_failed"] += 1
            _log_failure("routing statistics write failed", exc)

    async def flush(self) -> None:
        """Write the current batch now and wait for the writes in flight."""
        if self._batch_task is not None and not self._batch_task.done():
            self._flush_now.set()
            await self._batch_task
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def refresh(self, providers: Sequence[str], half_life_s: float) -> StatsSnapshot:
        """Load the shared counters into a new snapshot (the old one stays on failure)."""
        now = self._clock()
        try:
            raw = await self.store.load(providers=providers, now=now, half_life_s=half_life_s)
        except Exception as exc:
            self._counters["stats_refresh_failed"] += 1
            _log_failure("routing statistics refresh failed", exc)
            return self.snapshot
        self.snapshot = StatsSnapshot.of(raw, now)
        return self.snapshot

    async def close(self) -> None:
        """Finish pending writes; close the store when this feed owns it."""
        await self.flush()
        if self._owns:
            await self.store.close()


def _log_failure(message: str, exc: Exception) -> None:
    """One line for a store outage (it repeats every batch while it lasts); the traceback only
    for anything else, which is a bug."""
    cause = exc.__cause__ if isinstance(exc, StoreUnavailable) and exc.__cause__ else exc
    outage = isinstance(exc, StoreUnavailable | RedisError | OSError)
    log.warning(
        message,
        extra={"exception_type": type(cause).__name__},
        exc_info=None if outage else exc,
    )
