"""Completing approved payments: the provider call that moves the money after the payer approved.

PayPal (Orders v2) charges nothing when the payer presses Pay on its page: it reports
``CHECKOUT.ORDER.APPROVED`` and waits for the merchant's server to capture the order
(``captureMethod`` automatic) or authorize it (manual). Adapters of such providers implement
:class:`providers.base.ApprovalCompleter`; this module makes the call for them::

    approval webhook ─▶ schedule (sweeper index, due after a grace) ─▶ move to PROCESSING with
    pendingCompletion=<intent> (one compare-and-set) ─▶ answer 200 ─▶ background task: call
    ─▶ apply the outcome as a transition (source gateway:capture | gateway:authorize)

* **Durable before the answer.** The webhook is answered only after the session is in the
  sweeper's index and the owed call is recorded on the session, so a crash of this process
  after the answer loses nothing: any gateway process's sweeper finds the session once the
  grace (twice the provider timeout, plus a second) passes and makes the call. A failure
  before the answer makes the webhook fail and PayPal resends it.
* **Fast answer.** The call itself runs in a background task per approval.
* **Idempotent.** The idempotency key is derived from the order id and the intent, so every
  retry, from any process, sends the same ``PayPal-Request-Id`` and never captures twice; the
  outcome is applied with compare-and-set and the move's own duplicate rules.
* **Retries.** A retryable failure (timeout, 5xx, 429, the same request still in flight) is
  retried by the sweeper after ``min(60 s, max(1 s, time since the approval))`` (so the waits
  double), for up to three hours: PayPal's default window, after which it reverses an uncaptured
  approval (``CHECKOUT.PAYMENT-APPROVAL.REVERSED``, which fails the session). A refusal (4xx)
  is logged as an error for reconciliation; the session stays PROCESSING until the provider's
  webhook decides.
* **Same effects as a webhook.** The outcome moves the session, notifies the merchant and feeds
  routing exactly like a provider verdict; the provider's own capture webhook that follows then
  changes nothing. Like a webhook, an answer whose amount or currency is not the session's
  never completes it (:mod:`gateway.reconciliation`): it is recorded as ``amountMismatch``,
  the merchant is notified, and the call is not made again.

An approval for a session that can no longer move to PROCESSING (expired, cancelled, already
final) records nothing and is never captured: the payer's approval lapses at PayPal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from gateway.authorizations import warning_at
from gateway.background import drain
from gateway.domain.lifecycle import can_move
from gateway.domain.session import AmountMismatch, SessionRecord, SessionStatus
from gateway.reconciliation import mismatch
from gateway.store.base import SessionLifecycleStore, StoreUnavailable
from providers.base import (
    AUTHORIZE,
    CAPTURE,
    VAULT,
    ApprovalCompleter,
    ProviderAdapter,
    ProviderError,
    ProviderEvent,
    ProviderRateLimited,
)

if TYPE_CHECKING:
    from gateway.adapter_boundary import AdapterBoundary
    from gateway.lifecycle import Moved
    from gateway.settings import Settings

__all__ = [
    "COMPLETION_SOURCES",
    "Completions",
    "MismatchRecorder",
    "completion_key",
    "intent_for",
    "retry_delay",
]

log = logging.getLogger("gateway.completion")

#: the transition sources of a completion's outcome
COMPLETION_SOURCES = frozenset({f"gateway:{i}" for i in (CAPTURE, AUTHORIZE, VAULT)})
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 60.0
#: PayPal reverses an approval nobody captured after three hours by default
_GIVE_UP = timedelta(hours=3)
_CAS_TRIES = 16


class Mover(Protocol):
    """:meth:`gateway.lifecycle.LifecycleService.move`."""

    def __call__(
        self,
        session_id: str,
        status: SessionStatus,
        *,
        source: str,
        event_id: str | None = None,
        changes: Mapping[str, Any] | None = None,
    ) -> Awaitable[Moved]: ...


def intent_for(record: SessionRecord) -> str:
    """Vault for a setup session (it saves a method and charges nothing), else capture for
    automatic capture, authorize for manual capture."""
    if record.sessionType == "setup":
        return VAULT
    return AUTHORIZE if record.captureMethod == "manual" else CAPTURE


def completion_key(record: SessionRecord, intent: str) -> str:
    """The idempotency key of completing ``record``: the same on every retry, in any process."""
    return f"{intent}-{record.providerSessionId}"


def retry_delay(elapsed_s: float) -> float:
    """Seconds until the next try, ``elapsed_s`` after the approval (the waits double)."""
    return min(_RETRY_MAX_S, max(_RETRY_MIN_S, elapsed_s))


def _approved_at(record: SessionRecord) -> datetime:
    for transition in reversed(record.transitions):
        if transition.status is SessionStatus.PROCESSING:
            return transition.at
    return record.updatedAt


def event_changes(event: ProviderEvent) -> dict[str, Any]:
    """What a provider event records on its session besides the status: the saved-method
    references, the payment id, the capture id and, for a failure, its reason."""
    return {
        key: value
        for key, value in (
            ("customerId", event.customer_id),
            ("paymentMethodId", event.payment_method_id),
            ("paymentId", event.payment_id),
            ("captureId", event.capture_id),
            (
                "failureReason",
                event.failure_reason if event.status is SessionStatus.FAILED else None,
            ),
        )
        if value
    }


class MismatchRecorder(Protocol):
    """:meth:`gateway.lifecycle.LifecycleService.record_mismatch`."""

    def __call__(
        self,
        session_id: str,
        found: AmountMismatch,
        changes: Mapping[str, Any] | None = None,
    ) -> Awaitable[None]: ...


class Completions:
    """Makes the owed completion calls: at once in the background, and from the sweeper."""

    def __init__(
        self,
        settings: Settings,
        store: SessionLifecycleStore,
        adapters: Mapping[str, ProviderAdapter],
        boundary: AdapterBoundary,
        move: Mover,
        record_mismatch: MismatchRecorder,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.store = store
        self.adapters = adapters
        self.boundary = boundary
        self._move = move
        self._record_mismatch = record_mismatch
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def grace_s(self) -> float:
        """How long the background call has before the sweeper takes over."""
        return 2 * self.settings.provider_timeout_seconds + 1.0

    def owed_for(self, record: SessionRecord, event: ProviderEvent) -> str | None:
        """The intent ``event`` makes the gateway owe for ``record``, or None."""
        if not event.awaits_completion or event.status is None:
            return None
        if not isinstance(self.adapters.get(record.provider), ApprovalCompleter):
            return None
        if not can_move(record.status, event.status):
            return None
        return intent_for(record)

    async def schedule(self, session_id: str) -> None:
        """Make the sweeper try the session once the grace has passed (durable)."""
        due = self._clock().timestamp() + self.grace_s
        await self.store.schedule_expiry(session_id, due)

    @staticmethod
    def owes(record: SessionRecord) -> bool:
        """True when a completion call is still owed for ``record``."""
        return record.pendingCompletion is not None and record.status is SessionStatus.PROCESSING

    def start(self, session_id: str) -> None:
        """Try the owed call now, in a background task (the sweeper retries on any failure)."""
        task = asyncio.get_running_loop().create_task(
            self._run(session_id), name=f"complete-{session_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, session_id: str) -> None:
        try:
            record = await self.store.get_session(session_id)
            if record is not None and self.owes(record):
                await self.attempt(record)
        except StoreUnavailable:
            log.warning("completion deferred to the sweeper: store unavailable")
        except Exception:
            log.exception(
                "completion failed; the sweeper retries", extra={"session_id": session_id}
            )

    async def close(self, timeout: float) -> None:
        """Let running calls finish for up to ``timeout`` seconds, then cancel the rest (the
        sweeper of whichever process runs next retries them)."""
        await drain(list(self._tasks), timeout)

    async def attempt(self, record: SessionRecord) -> bool:
        """Make the owed call for ``record`` once and apply its outcome.

        Returns False when it failed retryably and was rescheduled, True when nothing more is
        owed (applied, refused, or given up); then the session leaves the sweeper's index.
        """
        intent = record.pendingCompletion or intent_for(record)
        # only allow-listed fields reach the JSON logs (gateway.logs): the rest is in the text
        context = {"session_id": record.sessionId, "provider": record.provider}
        adapter = self.adapters.get(record.provider)
        if not isinstance(adapter, ApprovalCompleter):
            log.error("no adapter can %s this approved payment; reconcile", intent, extra=context)
            await self._settle(record.sessionId, {"pendingCompletion": None})
            await self.store.drop_expiry(record.sessionId)
            return True
        try:
            event = await self.boundary.call(
                record.provider,
                "complete_approved",
                lambda: adapter.complete_approved(
                    record.providerSessionId,
                    intent=intent,
                    idempotency_key=completion_key(record, intent),
                    timeout=self.settings.provider_timeout_seconds,
                ),
            )
        except ProviderError as exc:
            if exc.retryable and await self._retry_later(record, exc, context):
                return False
            if not exc.retryable:
                log.error(
                    "provider refused to %s the approved payment; reconcile: %s",
                    intent,
                    exc.reason,
                    extra={**context, "outcome": exc.outcome},
                )
            await self._settle(record.sessionId, {"pendingCompletion": None})
            await self.store.drop_expiry(record.sessionId)
            return True
        await self._apply(record, intent, event, context)
        await self._leave_index(record.sessionId)
        return True

    async def _leave_index(self, session_id: str) -> None:
        """Out of the sweeper's index, unless the completion authorized the payment: then
        indexed for the warning before the authorization lapses (:mod:`gateway.authorizations`)."""
        current = await self.store.get_session(session_id)
        warn_at = warning_at(current) if current is not None else None
        if warn_at is None:
            await self.store.drop_expiry(session_id)
        else:
            await self.store.schedule_expiry(session_id, warn_at.timestamp())

    async def _retry_later(
        self, record: SessionRecord, exc: ProviderError, context: dict[str, Any]
    ) -> bool:
        """Reschedule after a retryable failure; False once the window has passed."""
        now = self._clock()
        elapsed = now - _approved_at(record)
        if elapsed > _GIVE_UP:
            log.error(
                "gave up trying to %s the approved payment after %s; reconcile at the provider",
                record.pendingCompletion,
                elapsed,
                extra={**context, "outcome": exc.outcome},
            )
            return False
        delay = retry_delay(elapsed.total_seconds())
        if isinstance(exc, ProviderRateLimited) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        await self.store.schedule_expiry(record.sessionId, now.timestamp() + delay)
        log.warning(
            "could not %s the approved payment; retrying in %.3g s",
            record.pendingCompletion,
            delay,
            extra={**context, "outcome": exc.outcome},
        )
        return True

    async def _apply(
        self,
        record: SessionRecord,
        intent: str,
        event: ProviderEvent | None,
        context: dict[str, Any],
    ) -> None:
        if event is None or event.status is None:
            log.info(
                "the %s settled nothing; the provider's webhooks decide", intent, extra=context
            )
            await self._settle(record.sessionId, {"pendingCompletion": None})
            return
        found = mismatch(record, event, source=intent, at=self._clock())
        if found is not None:
            # the call was made: never repeat it; the amount is for a person to settle
            await self._record_mismatch(record.sessionId, found, {"pendingCompletion": None})
            return
        changes = {**event_changes(event), "pendingCompletion": None}
        moved = await self._move(
            record.sessionId,
            event.status,
            source=f"gateway:{intent}",
            event_id=event.event_id or None,
            changes=changes,
        )
        if not moved.applied:  # still pending at the provider, or decided meanwhile
            await self._settle(
                record.sessionId,
                {
                    k: v
                    for k, v in changes.items()
                    if k in ("paymentId", "customerId", "paymentMethodId")
                },
            )
        log.info(
            "approved payment: %s answered %s (%s)",
            intent,
            event.status.value,
            "applied" if moved.applied else "no change",
            extra={**context, "outcome": event.status.value.lower()},
        )

    async def _settle(self, session_id: str, changes: Mapping[str, Any]) -> None:
        """Clear ``pendingCompletion`` without a status change, with ``changes`` too while the
        session is PROCESSING (compare-and-set, retried on a fresh read)."""
        for _ in range(_CAS_TRIES):
            record = await self.store.get_session(session_id)
            if record is None or record.pendingCompletion is None:
                return
            update = dict(changes) if record.status is SessionStatus.PROCESSING else {}
            update.update(pendingCompletion=None, version=record.version + 1)
            updated = record.model_copy(update=update)
            if await self.store.update_session(updated, expected_version=record.version):
                return
        raise StoreUnavailable(f"session {session_id} kept changing; gave up after retries")
