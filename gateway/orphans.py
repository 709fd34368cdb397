"""Provider sessions left behind by a failover, made unpayable where the provider allows.

A try that timed out (or got a refused key) at provider A may still have created a session
there; when the gateway then created the session at B, A's session is an *orphan*. The create
records each one on the gateway session (``orphans``, state ``open``) and, for a provider whose
adapter can cancel sessions (``Capabilities.cancels_sessions``: Stripe's expire), enqueues an
:class:`~gateway.store.base.OrphanJob` in the store's durable orphan queue, in the same commit
as the session. The job holds the exact create sent to A under the derived key.

Any gateway process works the queue (:meth:`OrphanCleanup.run`; the process that answered
nudges it at once): it leases a due job (postponed while the provider's circuit is open),
re-sends A the pinned create (A replays its session, or creates it now if the first call never
arrived), expires that session and records the outcome on the gateway session. A failure that
may pass (timeout, 5xx, 429, A still working on the first request) makes the job due again
with exponential backoff; a crashed worker's job comes back when its lease ends. Final
outcomes (the orphan's ``status``):

- ``expired``: expired at A, the hosted page refuses payment;
- ``not_expirable``: A refused to expire it (no longer open: lapsed, or paid: a payment
  webhook for it is logged and counted as ``paid``), or A refused the key itself;
- ``absent``: A refused the pinned create as too old (:class:`~providers.base.RequestExpired`):
  it holds no session for the key and never will;
- ``lapsed``: still failing a day after the first attempt; A's session (every one expires
  within 24 h of the pinned creation time) can no longer be paid.

Providers without a cancel call (Adyen, PayPal) keep the orphan ``open``: it lapses at its
expiry, and a payment webhook for it is never applied to the gateway session (it names another
provider session) but logged and counted as ``paid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

import orjson

from gateway.adapter_boundary import AdapterBoundary
from gateway.background import drain
from gateway.domain.models import CheckoutRequest
from gateway.domain.session import OrphanSession
from gateway.metrics import ORPHAN_SESSIONS
from gateway.store.base import (
    OrphanJob,
    OrphanQueueStore,
    SessionLifecycleStore,
    StoreUnavailable,
)
from providers.base import (
    CreateSessionInput,
    ProviderAdapter,
    ProviderError,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderSession,
    RequestExpired,
)

__all__ = ["OrphanCleanup", "OrphanCleanupStore", "decode_input", "encode_input"]

log = logging.getLogger("gateway.orphans")

_UPDATE_TRIES = 5
_BATCH = 50
#: every provider session of a key expires within this long after the pinned creation time
_HORIZON = timedelta(hours=24, minutes=5)


def encode_input(data: CreateSessionInput) -> bytes:
    """The stored form of a pinned create (it holds the order's personal data: the queue
    keeps it only until the orphan is settled)."""
    return orjson.dumps(
        {
            "session": data.session_id,
            "merchant": data.merchant_id,
            "key": data.idempotency_key,
            "request": data.request.model_dump(mode="json"),
            "expires": data.expires_at.isoformat(),
            "rid": data.request_id,
            "created": data.created_at.isoformat() if data.created_at else None,
            "return": data.return_url,
        }
    )


def decode_input(raw: bytes) -> CreateSessionInput:
    """:func:`encode_input` back: the same request, field for field."""
    data: dict[str, Any] = orjson.loads(raw)
    request = CheckoutRequest.model_validate(
        data["request"], context={"allow_http_localhost": True}
    )
    created = data["created"]
    return CreateSessionInput(
        session_id=data["session"],
        merchant_id=data["merchant"],
        idempotency_key=data["key"],
        request=request,
        expires_at=datetime.fromisoformat(data["expires"]),
        request_id=data["rid"],
        created_at=datetime.fromisoformat(created) if created else None,
        return_url=data["return"],
    )


class OrphanCleanupStore(OrphanQueueStore, SessionLifecycleStore, Protocol):
    """What the clean-up needs of the records: the orphan queue, and the sessions it notes
    the outcome on."""


class OrphanCleanup:
    """Works the durable orphan queue: expires orphans at providers that allow it."""

    def __init__(
        self,
        store: OrphanCleanupStore,
        adapters: Mapping[str, ProviderAdapter],
        *,
        boundary: AdapterBoundary,
        timeout_s: float,
        backoff_s: float = 1.0,
        backoff_max_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.adapters = adapters
        #: every adapter call goes through it (typed errors, the provider's circuit); a
        #: provider whose circuit is open is not called, its jobs wait (backoff)
        self.boundary = boundary
        self.circuits = boundary.circuits
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        #: one job's work is a create and an expire call, each bounded by the timeout
        self.lease_s = 2 * timeout_s + 5.0
        self._tasks: set[asyncio.Task[int]] = set()

    def cancellable(self, provider: str) -> bool:
        """Can the orphans of ``provider`` be made unpayable?"""
        adapter = self.adapters.get(provider)
        return adapter is not None and adapter.capabilities.cancels_sessions

    def jobs(
        self,
        session_id: str,
        orphans: Sequence[OrphanSession],
        inputs: Callable[[str], CreateSessionInput],
    ) -> list[OrphanJob]:
        """The queue jobs for the cancellable ``orphans`` (committed with the session)."""
        return [
            OrphanJob(
                id=f"{session_id}:{o.provider}",
                session_id=session_id,
                provider=o.provider,
                request=encode_input(inputs(o.provider)),
            )
            for o in orphans
            if self.cancellable(o.provider)
        ]

    def start(self, session_id: str, orphans: Sequence[OrphanSession]) -> None:
        """Count and log the committed ``orphans``; work the queue now in the background."""
        for orphan in orphans:
            ORPHAN_SESSIONS.labels(orphan.provider, "recorded").inc()
            log.warning(
                "provider session left behind by a failover",
                extra={"session_id": session_id, "provider": orphan.provider},
            )
            if not self.cancellable(orphan.provider):
                ORPHAN_SESSIONS.labels(orphan.provider, "left_open").inc()
        if not any(self.cancellable(o.provider) for o in orphans):
            return
        task = asyncio.get_running_loop().create_task(self._quietly(), name=f"orphans-{session_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Work the queue every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            while await self._quietly() >= _BATCH:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def close(self, timeout: float) -> None:
        """Let running clean-ups finish for up to ``timeout`` seconds, cancel the rest (their
        jobs come back to the queue when the lease ends)."""
        await drain(list(self._tasks), timeout)

    async def _quietly(self) -> int:
        try:
            return await self.run_once()
        except StoreUnavailable:
            log.warning("orphan clean-up skipped: store unavailable")
        except Exception:
            log.exception("orphan clean-up failed")
        return 0

    async def run_once(self) -> int:
        """Lease the due jobs and work each once; returns how many were leased."""
        jobs = await self.store.orphan_claim(now=self._clock(), lease_s=self.lease_s, limit=_BATCH)
        if jobs:
            await self.circuits.refresh()
        for job in jobs:
            try:
                await self._work(job)
            except StoreUnavailable:
                raise
            except Exception:
                # one unreadable job must not hold up the rest of the batch
                log.exception("orphan job failed", extra={"provider": job.provider})
                await self._retry(job)
        return len(jobs)

    async def _work(self, job: OrphanJob) -> None:
        adapter = self.adapters.get(job.provider)
        data = decode_input(job.request)
        outcome: tuple[str, str | None] | None = None
        if adapter is None:
            outcome = ("not_expirable", None)
        elif job.provider in self.circuits.unavailable():
            pass  # the provider keeps failing: wait for its circuit, do not add to the load
        else:
            outcome = await self._attempt(adapter, data)
        if outcome is None and data.created_at and self._past_horizon(data.created_at):
            outcome = ("lapsed", None)
        if outcome is None:
            await self._retry(job)
            return
        status, reference = outcome
        ORPHAN_SESSIONS.labels(job.provider, status).inc()
        await self._record(job.session_id, job.provider, reference, status)
        await self.store.orphan_done(job)

    async def _retry(self, job: OrphanJob) -> None:
        delay = min(self.backoff_s * 2**job.attempts, self.backoff_max_s)
        retry = OrphanJob(
            job.id, job.session_id, job.provider, job.request, job.attempts + 1, job.lease
        )
        await self.store.orphan_retry(retry, due=self._clock() + delay)

    def _past_horizon(self, created_at: datetime) -> bool:
        return self._clock() > (created_at + _HORIZON).timestamp()

    async def _attempt(
        self, adapter: ProviderAdapter, data: CreateSessionInput
    ) -> tuple[str, str | None] | None:
        """One try: the final (status, provider session id), or None to retry later."""
        context = {"session_id": data.session_id, "provider": adapter.name}
        create = partial(adapter.create_session, data, timeout=self.timeout_s)
        try:
            session: ProviderSession = await self.boundary.call(
                adapter.name, "create_session", create
            )
        except ProviderError as exc:
            if isinstance(exc, RequestExpired):
                return ("absent", None)
            if isinstance(exc, ProviderKeyConflict) and not exc.in_flight:
                log.error("orphan provider session cannot be found: key refused", extra=context)
                return ("not_expirable", None)
            _log_retry(exc, context)
            return None
        cancel = partial(adapter.cancel_session, session.reference, timeout=self.timeout_s)
        try:
            await self.boundary.call(adapter.name, "cancel_session", cancel)
        except ProviderError as exc:
            if isinstance(exc, ProviderRejected):
                log.warning(
                    "orphan provider session could not be expired (no longer open)",
                    extra=context,
                )
                return ("not_expirable", session.reference)
            _log_retry(exc, context)
            return None
        return ("expired", session.reference)

    async def _record(
        self, session_id: str, provider: str, reference: str | None, status: str
    ) -> None:
        """Record the orphan's final status on the stored session (compare-and-set)."""
        for _ in range(_UPDATE_TRIES):
            record = await self.store.get_session(session_id)
            if record is None:
                return
            orphans = [
                o.model_copy(
                    update={"providerSessionId": reference or o.providerSessionId, "status": status}
                )
                if o.provider == provider
                else o
                for o in record.orphans
            ]
            updated = record.model_copy(update={"orphans": orphans, "version": record.version + 1})
            if await self.store.update_session(updated, expected_version=record.version):
                return
        raise StoreUnavailable(f"session {session_id} kept changing; orphan not recorded yet")


def _log_retry(exc: ProviderError, context: dict[str, Any]) -> None:
    log.warning(
        "orphan provider session not expired yet; will retry",
        extra={**context, "outcome": exc.outcome},
    )
