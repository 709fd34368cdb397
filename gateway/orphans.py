"""Provider sessions left behind by a failover, made unpayable where the provider allows.

A try that timed out (or got a 5xx, or a refused key) at provider A may still have created a
session there; when the gateway then created the session at B, A's session is an *orphan*. The
create records each one on the gateway session (``orphans``, state ``open``). Then, in the
background, for a provider whose adapter can cancel sessions (``Capabilities.cancels_sessions``:
Stripe's expire), this module re-sends A the pinned create under the same derived key (A
replays its session, or creates it now if the first call never arrived), cancels that session
and records it as ``expired``. Providers without a cancel call (Adyen, PayPal) keep the orphan
``open``: it lapses at its expiry, and a payment webhook for it is never applied to the gateway
session (it names another provider session) but logged and counted as ``paid``.

The background work lives in this process: a crash before it finishes leaves the orphan
``open`` on the record (visible on GET for reconciliation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from gateway.adapter_boundary import AdapterBoundary
from gateway.domain.session import OrphanSession
from gateway.metrics import ORPHAN_SESSIONS
from gateway.store.base import Store, StoreUnavailable
from providers.base import (
    CreateSessionInput,
    ProviderAdapter,
    ProviderError,
    ProviderKeyConflict,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = ["OrphanCleanup"]

log = logging.getLogger("gateway.orphans")

_RETRYABLE = (ProviderTimeout, ProviderUnavailable, ProviderRateLimited)
_UPDATE_TRIES = 5


class OrphanCleanup:
    """Expires orphans at providers that allow it, in background tasks of this process."""

    def __init__(
        self,
        store: Store,
        adapters: Mapping[str, ProviderAdapter],
        *,
        boundary: AdapterBoundary,
        timeout_s: float,
        tries: int = 8,
        backoff_s: float = 0.5,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.store = store
        self.adapters = adapters
        self.boundary = boundary
        self.timeout_s = timeout_s
        self.tries = tries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._tasks: set[asyncio.Task[None]] = set()

    def cancellable(self, provider: str) -> bool:
        """Can the orphans of ``provider`` be made unpayable?"""
        adapter = self.adapters.get(provider)
        return adapter is not None and adapter.capabilities.cancels_sessions

    def start(
        self,
        session_id: str,
        orphans: Sequence[OrphanSession],
        inputs: Callable[[str], CreateSessionInput],
    ) -> None:
        """Expire the cancellable ``orphans`` of ``session_id`` in the background."""
        for orphan in orphans:
            ORPHAN_SESSIONS.labels(orphan.provider, "recorded").inc()
            log.warning(
                "provider session left behind by a failover",
                extra={"session_id": session_id, "provider": orphan.provider},
            )
        todo = [o for o in orphans if self.cancellable(o.provider)]
        for orphan in orphans:
            if orphan not in todo:
                ORPHAN_SESSIONS.labels(orphan.provider, "left_open").inc()
        if not todo:
            return
        task = asyncio.get_running_loop().create_task(
            self._run(session_id, todo, inputs), name=f"orphans-{session_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, timeout: float) -> None:
        """Let running clean-ups finish for up to ``timeout`` seconds, cancel the rest."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(
        self,
        session_id: str,
        orphans: Sequence[OrphanSession],
        inputs: Callable[[str], CreateSessionInput],
    ) -> None:
        for orphan in orphans:
            adapter = self.adapters[orphan.provider]
            try:
                expired = await self._expire(adapter, inputs(orphan.provider))
            except Exception:
                log.exception("orphan clean-up failed", extra={"provider": orphan.provider})
                expired = None
            if expired is None:
                ORPHAN_SESSIONS.labels(orphan.provider, "left_open").inc()
                continue
            ORPHAN_SESSIONS.labels(orphan.provider, "expired").inc()
            await self._record(session_id, orphan.provider, expired)

    async def _expire(self, adapter: ProviderAdapter, data: CreateSessionInput) -> str | None:
        """The provider's session for ``data``'s key, expired; None when that failed."""
        delay = self.backoff_s
        for attempt in range(self.tries):
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
            create = partial(adapter.create_session, data, timeout=self.timeout_s)
            try:
                session = await self.boundary.call(adapter.name, "create_session", create)
            except ProviderKeyConflict as exc:
                if exc.in_flight:
                    continue  # the first request is still running there: its answer comes
                return None
            except _RETRYABLE:
                continue
            except ProviderError:
                return None
            cancel = partial(adapter.cancel_session, session.reference, timeout=self.timeout_s)
            try:
                await self.boundary.call(adapter.name, "cancel_session", cancel)
            except ProviderRejected:
                log.warning(
                    "orphan provider session could not be expired (no longer open)",
                    extra={"provider": adapter.name},
                )
                return None
            except _RETRYABLE:
                continue
            except ProviderError:  # an adapter fault included: left open, never retried
                return None
            return session.reference
        return None

    async def _record(self, session_id: str, provider: str, reference: str) -> None:
        """Mark the orphan of ``provider`` expired on the stored session (compare-and-set)."""
        for _ in range(_UPDATE_TRIES):
            try:
                record = await self.store.get_session(session_id)
                if record is None:
                    return
                orphans = [
                    o.model_copy(update={"providerSessionId": reference, "status": "expired"})
                    if o.provider == provider
                    else o
                    for o in record.orphans
                ]
                updated = record.model_copy(
                    update={"orphans": orphans, "version": record.version + 1}
                )
                if await self.store.update_session(updated, expected_version=record.version):
                    return
            except StoreUnavailable:
                log.warning("could not record an expired orphan", extra={"provider": provider})
                return
        log.warning("could not record an expired orphan: session kept changing")
