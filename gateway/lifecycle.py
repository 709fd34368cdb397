"""Moving stored sessions through their lifecycle: provider events, merchant cancels, expiry.

Every change goes through :meth:`LifecycleService.move`: read the session, apply the pure state
machine (:mod:`gateway.domain.lifecycle`), write it back with a compare-and-set on its
``version`` together with the merchant notification it causes, and retry from a fresh read when
another process won the race. So concurrent webhooks, cancels and sweepers in any number of
gateway processes can never lose a transition or move a session backwards.

After a change: the transition is counted, a provider's COMPLETED/FAILED verdict (a webhook, or
the answer of a capture the gateway made) feeds the routing statistics (payment success per
provider, currency and billing country), and a final session leaves the expiry index (except an
expiry: the sweeper still has to cancel it at the provider).

An approval that moves no money by itself (PayPal) is completed by the gateway
(:mod:`gateway.completion`): recorded with the move to PROCESSING, called in the background,
retried by the sweeper.

The provider's word on money wins, but only for the session's money: a verdict whose amount or
currency is not the session's is recorded and notified, never applied
(:mod:`gateway.reconciliation`); a matching report of money taken or moving moves even a
CANCELLED or EXPIRED session (:data:`gateway.domain.lifecycle.MONEY_OVERRIDES`) and notifies
the merchant. Merchant cancels are linearizable through a claim on the session
(:meth:`LifecycleService.cancel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from gateway.adapter_boundary import AdapterBoundary
from gateway.authorizations import expires_at, warning_at
from gateway.circuit import CircuitBreakers
from gateway.completion import COMPLETION_SOURCES, Completions, event_changes
from gateway.domain.errors import ApiError, BadGateway, Conflict, NotFound
from gateway.domain.lifecycle import CANCELLABLE, EXPIRABLE, apply, is_expired
from gateway.domain.session import (
    FINAL_STATUSES,
    AmountMismatch,
    CancelClaim,
    SessionRecord,
    SessionStatus,
    utcnow,
)
from gateway.metrics import (
    AMOUNT_MISMATCHES,
    AUTHORIZATIONS_EXPIRING,
    ORPHAN_SESSIONS,
    PAYMENT_OPERATIONS,
    SESSION_TRANSITIONS,
)
from gateway.notifications.events import AUTHORIZATION_EXPIRING, CREATED, UPDATED, Notifier
from gateway.payment_calls import operations_of, payment_reference, provider_key
from gateway.provider_answers import api_error
from gateway.reconciliation import mismatch, reports_money
from gateway.refunds import refund_event
from gateway.settings import Settings
from gateway.store.base import OutboxItem, SessionLifecycleStore, StoreUnavailable
from providers.base import (
    ApprovalCompleter,
    FlowNotSupported,
    ProviderAdapter,
    ProviderError,
    ProviderEvent,
    ProviderRejected,
)

__all__ = ["EXPIRY", "MERCHANT", "LifecycleService", "Moved", "PaymentRecorder"]

log = logging.getLogger("gateway.lifecycle")

MERCHANT = "merchant"
EXPIRY = "expiry"
_CAS_TRIES = 16
_SWEEP_LEASE_S = 60.0
_SWEEP_BATCH = 100
_PROVIDER_CANCEL_RETRY_S = 30.0
#: after this long past expiresAt the sweeper stops trying to cancel at the provider
_PROVIDER_CANCEL_GIVE_UP = timedelta(days=1)
#: what a provider reports after the gateway cancelled its session there
_CLOSED_AT_PROVIDER = frozenset({SessionStatus.EXPIRED, SessionStatus.CANCELLED})


class PaymentRecorder(Protocol):
    """What the lifecycle tells routing (:class:`gateway.routing.service.Router`)."""

    async def record_payment(
        self,
        provider: str,
        success: bool,
        currency: str | None,
        country: str | None,
        method: str | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Moved:
    """The outcome of one move: the session as it now is (None: unknown) and whether it moved."""

    record: SessionRecord | None
    applied: bool
    previous: SessionStatus | None = None


def _source_kind(source: str) -> str:
    return source.partition(":")[0]


class LifecycleService:
    """Webhook events, cancels and expiry, applied atomically to stored sessions."""

    def __init__(
        self,
        settings: Settings,
        store: SessionLifecycleStore,
        adapters: Mapping[str, ProviderAdapter],
        router: PaymentRecorder,
        notifier: Notifier,
        circuits: CircuitBreakers,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.adapters = adapters
        self.router = router
        self.notifier = notifier
        self._clock = clock
        #: every adapter call of the lifecycle goes through it
        self.boundary = AdapterBoundary(circuits)
        #: the capture/authorize calls owed after a payer's approval
        self.completions = Completions(
            settings, store, adapters, self.boundary, self.move, self.record_mismatch, clock
        )

    def clock(self) -> datetime:
        """The lifecycle's current time (tests move it)."""
        return self._clock()

    def creation_outbox(self, record: SessionRecord) -> list[OutboxItem]:
        """The ``payment_session.created`` notification of a new session."""
        return self.notifier.items(record, CREATED, at=record.createdAt)

    async def move(
        self,
        session_id: str,
        status: SessionStatus,
        *,
        source: str,
        event_id: str | None = None,
        changes: Mapping[str, Any] | None = None,
        money: bool = False,
        guard: Callable[[SessionRecord], bool] | None = None,
        confirmed_by: str | None = None,
        amend: Callable[[SessionRecord], SessionRecord] | None = None,
    ) -> Moved:
        """Apply one transition with compare-and-set, retrying on a concurrent change.

        ``money``: the provider reports money taken or moving (may leave CANCELLED/EXPIRED,
        :func:`gateway.domain.lifecycle.apply`); ``guard``: the move applies only to a record
        for which it is true (checked on every fresh read); ``amend``: what else the same
        write records on the moved session (the answer of the merchant call that moved it:
        :func:`gateway.operation_keys.finished`).
        """
        for _ in range(_CAS_TRIES):
            record = await self.store.get_session(session_id)
            if record is None:
                return Moved(None, False)
            if guard is not None and not guard(record):
                return Moved(record, False)
            now = self._clock()
            moved = apply(
                record,
                status,
                now,
                source,
                event_id,
                changes=self._authorization_changes(record, status, now, changes),
                money=money,
                confirmed_by=confirmed_by,
            )
            if moved is None:
                return Moved(record, False)
            if amend is not None:
                moved = amend(moved)
            outbox = self.notifier.items(moved, UPDATED, at=now, previous=record.status)
            if await self.store.update_session(
                moved, expected_version=record.version, outbox=outbox
            ):
                await self._after(record, moved, source)
                return Moved(moved, True, record.status)
        raise StoreUnavailable(f"session {session_id} kept changing; gave up after retries")

    def _authorization_changes(
        self,
        record: SessionRecord,
        status: SessionStatus,
        now: datetime,
        changes: Mapping[str, Any] | None,
    ) -> Mapping[str, Any] | None:
        """``changes``, with when the authorization lapses for a move to AUTHORIZED (now plus
        the provider's ``authorization_days``)."""
        if status is not SessionStatus.AUTHORIZED or record.status is SessionStatus.AUTHORIZED:
            return changes
        if changes is not None and "authorizationExpiresAt" in changes:
            return changes
        adapter = self.adapters.get(record.provider)
        days = adapter.capabilities.authorization_days if adapter is not None else 7
        return {**dict(changes or {}), "authorizationExpiresAt": expires_at(now, days)}

    async def _after(self, before: SessionRecord, after: SessionRecord, source: str) -> None:
        kind = _source_kind(source)
        SESSION_TRANSITIONS.labels(before.status.value, after.status.value, kind).inc()
        log.info(
            "session status changed",
            extra={
                "session_id": after.sessionId,
                "from_status": before.status.value,
                "to_status": after.status.value,
                "source": source,
            },
        )
        verdict = kind == "webhook" or source in COMPLETION_SOURCES
        if verdict and after.status in (SessionStatus.COMPLETED, SessionStatus.FAILED):
            await self.router.record_payment(
                after.provider,
                after.status is SessionStatus.COMPLETED,
                after.currency,
                after.billingCountry,
                after.paymentMethod,
            )
        if after.status in FINAL_STATUSES and kind != EXPIRY:
            await self.store.drop_expiry(after.sessionId)
        warn_at = warning_at(after)
        if warn_at is not None and before.status is not SessionStatus.AUTHORIZED:
            await self.store.schedule_expiry(after.sessionId, warn_at.timestamp())

    # provider webhooks ---------------------------------------------------------------------
    async def handle_event(self, event: ProviderEvent) -> str:
        """Apply one verified provider event: ``applied``, ``ignored``, ``unknown_session`` or
        ``amount_mismatch`` (recorded on the session, not applied)."""
        context = {"provider": event.provider, "event_id": event.event_id}
        if event.status is None and event.refund is None:
            return "ignored"
        record = await self.store.get_session(event.session_id) if event.session_id else None
        if record is None:
            log.info("webhook event for an unknown session acknowledged", extra=context)
            return "unknown_session"
        if event.refund is not None:
            if record.provider != event.provider:
                log.warning("refund event from another provider than the session's", extra=context)
                return "ignored"
            return await refund_event(self, record.sessionId, event.provider, event.refund)
        if _capture_failed(record, event):
            await self._capture_failed(record.sessionId, event)
            return "applied"
        context["session_id"] = record.sessionId
        foreign = record.provider != event.provider or (
            event.reference is not None and event.reference != record.providerSessionId
        )
        if foreign:
            if _orphan_payment(record, event):
                ORPHAN_SESSIONS.labels(event.provider, "paid").inc()
                log.error(
                    "payment event for an orphan provider session (left by a failover), not "
                    "applied to the session; reconcile (refund) at the provider",
                    extra=context,
                )
                return "ignored"
            log.warning(
                "webhook event does not match the session's provider session", extra=context
            )
            return "ignored"
        found = mismatch(record, event, source="webhook", at=self._clock())
        if found is not None:
            await self.record_mismatch(record.sessionId, found)
            return "amount_mismatch"
        status = event.status
        assert status is not None
        changes = event_changes(event)
        if record.status is SessionStatus.AUTHORIZED and status is SessionStatus.COMPLETED:
            # the provider's capture: what it took (reconciled against the capture asked)
            changes.update(amountCaptured=event.amount, captureRequested=None, failureReason=None)
        source, confirmed_by = f"webhook:{event.provider}", None
        if status in _CLOSED_AT_PROVIDER and record.cancelClaim is not None:
            status = SessionStatus.CANCELLED  # the provider confirms the merchant's cancel
            changes["cancellationReason"] = record.cancelClaim.reason
            source, confirmed_by = MERCHANT, source
        if status in FINAL_STATUSES:
            changes["pendingCompletion"] = None  # the provider decided: nothing more is owed
        owed = self.completions.owed_for(record, event)
        if owed is not None:
            # durable before the move (and so before the webhook's answer): a crash from here
            # on leaves the call to the sweeper of any gateway process
            await self.completions.schedule(record.sessionId)
            changes["pendingCompletion"] = owed
        moved = await self.move(
            record.sessionId,
            status,
            source=source,
            event_id=event.event_id or None,
            changes=changes,
            money=reports_money(event),
            confirmed_by=confirmed_by,
        )
        if moved.applied:
            if owed is not None:
                self.completions.start(record.sessionId)
            if moved.previous in (SessionStatus.CANCELLED, SessionStatus.EXPIRED):
                log.warning(
                    "provider reports money for a session that was %s: recorded as %s, the "
                    "merchant is notified and decides (refund at the provider)",
                    moved.previous.value,
                    status.value,
                    extra=context,
                )
            return "applied"
        current = moved.record
        if event.awaits_completion and current is not None and current.status in FINAL_STATUSES:
            log.info(
                "approval for a %s session is not completed; it lapses at the provider",
                current.status.value,
                extra=context,
            )
        return "ignored"

    async def _capture_failed(self, session_id: str, event: ProviderEvent) -> None:
        """The provider could not capture: the session stays AUTHORIZED (capturable again)
        with ``failureReason``, and the merchant is notified (``payment_session.updated``)."""
        reason = event.failure_reason or "capture_failed"
        for _ in range(_CAS_TRIES):
            record = await self.store.get_session(session_id)
            if record is None or record.status is not SessionStatus.AUTHORIZED:
                return
            if record.captureRequested is None and record.failureReason == reason:
                return  # a duplicate
            now = self._clock()
            updated = record.model_copy(
                update={
                    "captureRequested": None,
                    "failureReason": reason,
                    "updatedAt": max(now, record.updatedAt),
                    "version": record.version + 1,
                }
            )
            outbox = self.notifier.items(updated, UPDATED, at=now, previous=record.status)
            if await self.store.update_session(
                updated, expected_version=record.version, outbox=outbox
            ):
                log.warning(
                    "the provider failed to capture; the session stays AUTHORIZED",
                    extra={"session_id": session_id, "provider": event.provider},
                )
                return
        raise StoreUnavailable(f"session {session_id} kept changing; gave up after retries")

    async def record_mismatch(
        self,
        session_id: str,
        found: AmountMismatch,
        changes: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a provider verdict whose amount or currency is not the session's: on the
        session (with ``changes``, no status change) and in a ``payment_session.updated``
        notification, in one compare-and-set; then count and log it. A redelivered verdict
        (same source and event id) is recorded once."""
        for _ in range(_CAS_TRIES):
            record = await self.store.get_session(session_id)
            if record is None:
                return
            known = record.amountMismatch
            seen = known is not None and (known.source, known.eventId) == (
                found.source,
                found.eventId,
            )
            if seen and found.eventId is not None:
                return
            updated = record.model_copy(
                update={
                    **dict(changes or {}),
                    "amountMismatch": found,
                    "updatedAt": max(found.at, record.updatedAt),
                    "version": record.version + 1,
                }
            )
            outbox = self.notifier.items(updated, UPDATED, at=found.at, previous=record.status)
            if await self.store.update_session(
                updated, expected_version=record.version, outbox=outbox
            ):
                AMOUNT_MISMATCHES.labels(found.provider, found.source).inc()
                log.error(
                    "provider verdict %s does not match the session's amount %s %s (reported "
                    "%s %s); not applied, the merchant is notified: reconcile at the provider",
                    found.reportedStatus.value,
                    record.amount.total,
                    record.currency,
                    found.amount,
                    found.currency,
                    extra={
                        "session_id": session_id,
                        "provider": found.provider,
                        "event_id": found.eventId,
                    },
                )
                return
        raise StoreUnavailable(f"session {session_id} kept changing; gave up after retries")

    # expiry --------------------------------------------------------------------------------
    async def expire_if_due(self, record: SessionRecord) -> SessionRecord:
        """``record``, moved to EXPIRED first when it is past ``expiresAt`` (expire on read)."""
        if not is_expired(record, self._clock()):
            return record
        moved = await self.move(record.sessionId, SessionStatus.EXPIRED, source=EXPIRY)
        return moved.record or record

    async def sweep_once(self) -> int:
        """Expire the due sessions (and cancel them at their provider); returns how many."""
        now = self._clock()
        ids = await self.store.claim_expiries(
            now=now.timestamp(), lease_s=_SWEEP_LEASE_S, limit=_SWEEP_BATCH
        )
        for session_id in ids:
            await self._sweep(session_id, now)
        return len(ids)

    async def _sweep(self, session_id: str, now: datetime) -> None:
        record = await self.store.get_session(session_id)
        if record is None:
            await self.store.drop_expiry(session_id)
            return
        if self.completions.owes(record):
            await self.completions.attempt(record)  # reschedules itself or leaves the index
            return
        if record.status is SessionStatus.AUTHORIZED:
            await self._warn_authorization(record, now)
            return
        if record.status in EXPIRABLE:
            if record.expiresAt > now:
                await self.store.schedule_expiry(session_id, record.expiresAt.timestamp())
                return
            moved = await self.move(session_id, SessionStatus.EXPIRED, source=EXPIRY)
            record = moved.record or record
        last = record.transitions[-1] if record.transitions else None
        expired_here = record.status is SessionStatus.EXPIRED and last and last.source == EXPIRY
        if expired_here and not await self._cancel_at_provider(record, now):
            retry_at = now.timestamp() + _PROVIDER_CANCEL_RETRY_S
            await self.store.schedule_expiry(session_id, retry_at)
            return
        await self.store.drop_expiry(session_id)

    async def _warn_authorization(self, record: SessionRecord, now: datetime) -> None:
        """Notify the merchant once that ``record``'s authorization lapses soon (or re-index
        it for when that is due)."""
        for _ in range(_CAS_TRIES):
            warn_at = warning_at(record)
            if warn_at is None:
                await self.store.drop_expiry(record.sessionId)
                return
            if warn_at > now:
                await self.store.schedule_expiry(record.sessionId, warn_at.timestamp())
                return
            updated = record.model_copy(
                update={"authorizationExpiryNotified": True, "version": record.version + 1}
            )
            outbox = self.notifier.items(updated, AUTHORIZATION_EXPIRING, at=now)
            if await self.store.update_session(
                updated, expected_version=record.version, outbox=outbox
            ):
                AUTHORIZATIONS_EXPIRING.labels(record.provider).inc()
                log.warning(
                    "authorization lapses at the provider soon; the merchant is notified",
                    extra={"session_id": record.sessionId, "provider": record.provider},
                )
                await self.store.drop_expiry(record.sessionId)
                return
            fresh = await self.store.get_session(record.sessionId)
            if fresh is None:
                await self.store.drop_expiry(record.sessionId)
                return
            record = fresh
        raise StoreUnavailable(f"session {record.sessionId} kept changing; gave up after retries")

    async def _cancel_at_provider(self, record: SessionRecord, now: datetime) -> bool:
        """True when nothing more is to be done at the provider for this expired session."""
        adapter = self.adapters.get(record.provider)
        if adapter is None:
            return True
        try:
            await self._cancel_call(adapter, record)
        except (FlowNotSupported, ProviderRejected):
            return True  # nothing to cancel there, or the provider's session is closed already
        except ProviderError as exc:
            give_up = now > record.expiresAt + _PROVIDER_CANCEL_GIVE_UP
            log.warning(
                "could not expire the provider's session%s",
                "; giving up" if give_up else "; will retry",
                extra={
                    "session_id": record.sessionId,
                    "provider": record.provider,
                    "outcome": exc.outcome,
                },
            )
            return give_up
        return True

    async def _cancel_call(self, adapter: ProviderAdapter, record: SessionRecord) -> None:
        """``adapter.cancel_session`` through the adapter boundary (raises ProviderError only)."""
        await self.boundary.call(
            adapter.name,
            "cancel_session",
            lambda: adapter.cancel_session(
                record.providerSessionId, timeout=self.settings.provider_timeout_seconds
            ),
        )

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Sweep every ``expiry_sweep_interval_seconds`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                while await self.sweep_once() >= _SWEEP_BATCH:
                    pass
            except StoreUnavailable:
                log.warning("expiry sweep skipped: store unavailable")
            except Exception:
                log.exception("expiry sweep failed")
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # a client library swallowed our cancellation
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.expiry_sweep_interval_seconds)

    # merchant cancel -----------------------------------------------------------------------
    @property
    def cancel_claim_ttl(self) -> timedelta:
        """How long a cancel in progress keeps others out (then a crashed one is taken over)."""
        return timedelta(seconds=2 * self.settings.provider_timeout_seconds + 1.0)

    async def cancel(
        self,
        merchant_id: str,
        session_id: str,
        reason: str,
        *,
        idempotency_key: str | None = None,
        amend: Callable[[SessionRecord], SessionRecord] | None = None,
    ) -> SessionRecord:
        """Cancel at the provider, then locally. 404 unknown, 409 not cancellable (or another
        cancel of it in progress), 502 when the provider could not be reached (the session is
        left as it was).

        An AUTHORIZED session (manual capture) is voided: the provider releases the held money
        (``void_payment``, with a provider key derived from ``idempotency_key`` when given);
        errors answer per :mod:`gateway.provider_answers`. A provider that only accepts the
        void (Adyen: received) leaves the session AUTHORIZED with the claim held, and returns
        it so: its cancellation webhook then moves it to CANCELLED. ``amend``: what the move's
        write also records (the answer of the merchant's key).

        Linearizable: the cancel first claims the session with a compare-and-set
        (``cancelClaim``), so of concurrent cancels exactly one proceeds and answers 200, the
        others 409. When the provider has no cancel call and its page takes the payer's money
        without the gateway (Adyen), the session records ``payableUntil`` (its provider-side
        expiry): the order stays held until then, and a payment landing meanwhile moves the
        session to where the money is (:data:`gateway.domain.lifecycle.MONEY_OVERRIDES`).
        """
        record = await self.store.get_session(session_id)
        if record is None or record.merchantId != merchant_id:
            raise NotFound("Session not found")
        record = await self.expire_if_due(record)
        claim = CancelClaim(token=uuid.uuid4().hex, reason=reason, at=self._clock())
        # Claim first: the provider's "expired"/"cancelled" webhook that our cancel call
        # triggers may arrive before the call returns, and must mean CANCELLED.
        record = await self._claim_cancel(record, claim)
        adapter = self.adapters.get(record.provider)
        payable_until = confirmed_by = None
        if record.status is SessionStatus.AUTHORIZED:
            confirmed_by = await self._void(record, claim, idempotency_key)
            if confirmed_by is None:
                return record  # accepted: the provider's webhook confirms the void
        elif adapter is not None:
            try:
                await self._cancel_call(adapter, record)
                confirmed_by = f"api:{record.provider}"
            except FlowNotSupported:
                # the provider's session cannot be cancelled; it lapses at its expiry. Until
                # then its page takes money, unless the gateway itself must complete a payment
                # there (PayPal: an approval of a cancelled session is never captured)
                if not isinstance(adapter, ApprovalCompleter):
                    payable_until = record.expiresAt
            except ProviderError as exc:
                await self._release_cancel(session_id, claim)
                if isinstance(exc, ProviderRejected):
                    raise Conflict(
                        details="The provider refused to cancel this session; it may have been "
                        "paid or closed meanwhile",
                        extra={"sessionId": session_id, "providerStatus": exc.status},
                    ) from None
                raise BadGateway(
                    details={"provider": record.provider, "outcome": exc.outcome}
                ) from None
        moved = await self.move(
            session_id,
            SessionStatus.CANCELLED,
            source=MERCHANT,
            changes={"cancellationReason": reason, "payableUntil": payable_until},
            guard=lambda current: _claimed_by(current, claim),
            confirmed_by=confirmed_by,
            amend=amend,
        )
        current = moved.record or record
        if moved.applied or (
            current.status is SessionStatus.CANCELLED and _claimed_by(current, claim)
        ):
            return current  # cancelled by us (or by the provider's webhook confirming it)
        await self._release_cancel(session_id, claim)
        raise _not_cancellable(current)

    async def _void(
        self, record: SessionRecord, claim: CancelClaim, idempotency_key: str | None
    ) -> str | None:
        """Void ``record``'s authorization at its provider: ``api:<provider>`` when it is
        voided, None when the provider accepted the void for later (its webhook confirms). Any
        failure gives the claim up and raises the API's answer."""
        try:
            operations = operations_of(self.adapters, record)
        except ApiError:
            await self._release_cancel(record.sessionId, claim)
            raise
        key = provider_key(record, "cancel", idempotency_key or claim.token)
        reference = payment_reference(record, record.amount.total)
        try:
            outcome = await self.boundary.call(
                record.provider,
                "void_payment",
                lambda: operations.void_payment(
                    reference,
                    idempotency_key=key,
                    timeout=self.settings.provider_timeout_seconds,
                ),
            )
        except ProviderError as exc:
            PAYMENT_OPERATIONS.labels("void", record.provider, exc.outcome).inc()
            await self._release_cancel(record.sessionId, claim)
            raise api_error(exc, session_id=record.sessionId) from None
        PAYMENT_OPERATIONS.labels("void", record.provider, outcome.status.value.lower()).inc()
        if outcome.status is SessionStatus.CANCELLED:
            return f"api:{record.provider}"
        if outcome.status is SessionStatus.PROCESSING:
            return None
        await self._release_cancel(record.sessionId, claim)
        raise Conflict(
            details=f"The provider did not void the authorization: it reports "
            f"{outcome.status.value}",
            extra={"sessionId": record.sessionId, "status": record.status.value},
        )

    async def _claim_cancel(self, record: SessionRecord, claim: CancelClaim) -> SessionRecord:
        """Record ``claim`` on the session (compare-and-set, retried on a fresh read); 409 when
        it cannot be cancelled or another cancel holds a live claim."""
        for _ in range(_CAS_TRIES):
            if record.status not in CANCELLABLE:
                raise _not_cancellable(record)
            held = record.cancelClaim
            now = self._clock()
            if held is not None and held.at + self.cancel_claim_ttl > now:
                raise Conflict(
                    details="Another cancel of this session is in progress",
                    extra={"sessionId": record.sessionId, "status": record.status.value},
                )
            capturing = record.captureRequested is not None or any(
                op.kind == "capture" and op.leaseUntil is not None and op.leaseUntil > now
                for op in record.operations
            )
            if record.status is SessionStatus.AUTHORIZED and capturing:
                raise Conflict(
                    details="A capture of this session is in progress; it can no longer be voided",
                    extra={"sessionId": record.sessionId, "status": record.status.value},
                )
            updated = record.model_copy(
                update={"cancelClaim": claim, "version": record.version + 1}
            )
            if await self.store.update_session(updated, expected_version=record.version):
                return updated
            fresh = await self.store.get_session(record.sessionId)
            if fresh is None:
                raise NotFound("Session not found")
            record = fresh
        raise StoreUnavailable(f"session {record.sessionId} kept changing; gave up after retries")

    async def _release_cancel(self, session_id: str, claim: CancelClaim) -> None:
        """Drop ``claim`` after a failed provider cancel, if it is still on the session."""
        for _ in range(_CAS_TRIES):
            record = await self.store.get_session(session_id)
            if record is None or not _claimed_by(record, claim):
                return
            updated = record.model_copy(update={"cancelClaim": None, "version": record.version + 1})
            if await self.store.update_session(updated, expected_version=record.version):
                return
        raise StoreUnavailable(f"session {session_id} kept changing; gave up after retries")


def _claimed_by(record: SessionRecord, claim: CancelClaim) -> bool:
    return record.cancelClaim is not None and record.cancelClaim.token == claim.token


def _not_cancellable(record: SessionRecord) -> Conflict:
    return Conflict(
        details=f"The session is {record.status.value} and can no longer be cancelled",
        extra={"sessionId": record.sessionId, "status": record.status.value},
    )


def _capture_failed(record: SessionRecord, event: ProviderEvent) -> bool:
    """Is ``event`` the provider's failure of a capture of an AUTHORIZED session (a FAILED
    report, or an AUTHORIZED one with a failure reason: an authorization that lapses or is
    voided is reported CANCELLED)? It leaves the session AUTHORIZED: the authorization still
    holds the money, and the merchant may capture again."""
    if record.status is not SessionStatus.AUTHORIZED:
        return False
    if event.status is SessionStatus.FAILED:
        return True
    return event.status is SessionStatus.AUTHORIZED and event.failure_reason is not None


def _orphan_payment(record: SessionRecord, event: ProviderEvent) -> bool:
    """Is ``event`` a payment on one of ``record``'s orphan provider sessions?"""
    if event.status not in (SessionStatus.PROCESSING, SessionStatus.COMPLETED):
        return False
    return any(
        o.provider == event.provider and o.providerSessionId in (None, event.reference)
        for o in record.orphans
    )
