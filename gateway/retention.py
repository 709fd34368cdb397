"""The retention task: removes records past their retention from a store that keeps them
until told (PostgreSQL), in bounded batches, so no statement ever scans or locks a whole
table. Stores whose records expire by themselves (memory, Redis) purge nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.store.base import RetentionStore, StoreUnavailable

__all__ = ["run_retention"]

log = logging.getLogger("gateway.retention")

#: batches one round deletes at most before it waits for the next interval
_MAX_BATCHES = 100


async def run_retention(
    store: RetentionStore, stop: asyncio.Event, *, interval_s: float, batch: int
) -> None:
    """Until ``stop`` is set: every ``interval_s``, purge in batches of ``batch`` rows while a
    batch comes back full (at most :data:`_MAX_BATCHES` per round). An unreachable store is
    logged and tried again at the next interval."""
    while not stop.is_set():
        try:
            await purge_round(store, batch=batch)
        except StoreUnavailable as exc:
            log.warning("retention purge failed, trying again later: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def purge_round(store: RetentionStore, *, batch: int) -> int:
    """One round: batches of at most ``batch`` deletions until one comes back short; the
    number of records deleted."""
    total = 0
    for _ in range(_MAX_BATCHES):
        deleted = await store.purge(now=time.time(), limit=batch)
        total += deleted
        if deleted < batch:
            break
    if total:
        log.info("retention purged %d records", total)
    return total
