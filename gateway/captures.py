"""The merchant's capture of an AUTHORIZED session (``captureMethod`` manual).

::

    claim the key and record the capture asked (captureRequested) ─▶ capture_payment at the
    provider with a key derived from the merchant's ─▶ COMPLETED: move to COMPLETED with
    amountCaptured, the answer stored in the same write (200)
                                                   ─▶ PROCESSING (Adyen: modification received):
    the session stays AUTHORIZED, 202; the provider's capture webhook completes it
                                                   ─▶ FAILED: stays AUTHORIZED with failureReason

One capture or void runs at a time on a session (:data:`gateway.operation_keys.EXCLUSIVE_KINDS`,
and a merchant cancel's claim), so concurrent captures reach the provider once. A provider
rejection forgets the key (nothing was captured); an unknown outcome (timeout, 5xx) keeps the
capture asked and the key, and the retry with the same key re-sends the same provider call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.domain.errors import Conflict, Unprocessable
from gateway.domain.money import format_amount
from gateway.domain.session import SessionRecord, SessionStatus
from gateway.metrics import PAYMENT_OPERATIONS
from gateway.notifications.events import UPDATED
from gateway.operation_keys import (
    Claimed,
    OperationKeys,
    Prepared,
    Replay,
    finished,
    holds,
    operation_fingerprint,
)
from gateway.payment_calls import (
    Answer,
    error_answer,
    operations_of,
    payment_reference,
    provider_key,
)
from gateway.provider_answers import api_error
from gateway.store.base import OutboxItem
from providers.base import FlowNotSupported, PaymentOutcome, ProviderError, ProviderRejected

if TYPE_CHECKING:
    from gateway.lifecycle import LifecycleService

__all__ = ["CAPTURE", "Captures"]

log = logging.getLogger("gateway.captures")

CAPTURE = "capture"


class Captures:
    """``POST /api/v1/sessions/{id}/capture``."""

    def __init__(self, lifecycle: LifecycleService) -> None:
        self.lifecycle = lifecycle
        self.keys = OperationKeys(
            lifecycle.store, lease=lifecycle.cancel_claim_ttl, clock=lifecycle.clock
        )

    async def capture(
        self,
        merchant_id: str,
        session_id: str,
        key: str,
        amount: Decimal | None,
        *,
        request_id: str,
        places: Callable[[str], None] = lambda currency: None,
    ) -> Answer:
        """Capture ``amount`` (default: all) of the session's authorization."""
        lifecycle = self.lifecycle

        def prepare(record: SessionRecord, resumed: bool) -> Prepared:
            if resumed and record.status is SessionStatus.COMPLETED:
                return Prepared()  # this key's capture reached the provider: its webhook told
            if record.status is not SessionStatus.AUTHORIZED:
                raise Conflict(
                    details=f"The session is {record.status.value} and cannot be captured; "
                    "only an AUTHORIZED session can",
                    extra={"sessionId": record.sessionId, "status": record.status.value},
                )
            held = record.cancelClaim
            if held is not None and held.at + lifecycle.cancel_claim_ttl > lifecycle.clock():
                raise Conflict(
                    details="A cancel of this session is in progress",
                    headers={"Retry-After": "1"},
                    extra={"sessionId": record.sessionId, "status": record.status.value},
                )
            if record.captureRequested is not None and not resumed:
                raise Conflict(
                    details="A capture of this session was asked of the provider and awaits "
                    "its confirmation; retry that capture with its Idempotency-Key",
                    extra={"sessionId": record.sessionId, "status": record.status.value},
                )
            places(record.currency)
            wanted = record.amount.total if amount is None else amount
            check_amount(record, wanted)
            operations_of(lifecycle.adapters, record)  # 422 unless the adapter can capture
            partial = lifecycle.adapters[record.provider].capabilities.partial_capture
            if wanted < record.amount.total and not partial:
                raise api_error(
                    FlowNotSupported(record.provider, "partial capture"),
                    session_id=record.sessionId,
                )
            return Prepared({"captureRequested": wanted})

        fingerprint = operation_fingerprint(CAPTURE, {"amount": amount})
        claimed = await self.keys.claim(merchant_id, session_id, key, CAPTURE, fingerprint, prepare)
        if isinstance(claimed, Replay):
            return Answer(claimed.status, claimed.body, replayed=True)
        record = claimed.record
        if record.status is SessionStatus.COMPLETED:
            return await self._answer_current(claimed, 200)
        wanted = record.captureRequested
        assert wanted is not None
        adapter = operations_of(lifecycle.adapters, record)
        reference = payment_reference(record, record.amount.total)
        try:
            outcome = await lifecycle.boundary.call(
                record.provider,
                "capture_payment",
                lambda: adapter.capture_payment(
                    reference,
                    wanted,
                    idempotency_key=provider_key(record, CAPTURE, key),
                    timeout=lifecycle.settings.provider_timeout_seconds,
                ),
            )
        except ProviderError as exc:
            definite = isinstance(exc, ProviderRejected | FlowNotSupported)
            outcome_label = "rejected" if definite else "unknown"
            PAYMENT_OPERATIONS.labels(CAPTURE, record.provider, outcome_label).inc()
            if definite:
                error = api_error(exc, session_id=session_id)
                await self.keys.release(
                    claimed, forget=True, change=lambda r: ({"captureRequested": None}, ())
                )
            else:  # unknown outcome: the retry of this key re-sends the same call
                await self.keys.release(claimed, forget=False)
                error = api_error(exc, session_id=session_id)
            raise error from None
        PAYMENT_OPERATIONS.labels(CAPTURE, record.provider, outcome.status.value.lower()).inc()
        return await self._apply(claimed, outcome, wanted, request_id)

    async def _apply(
        self, claimed: Claimed, outcome: PaymentOutcome, wanted: Decimal, request_id: str
    ) -> Answer:
        lifecycle = self.lifecycle
        record = claimed.record
        session_id = record.sessionId
        context = {"session_id": session_id, "provider": record.provider}
        if outcome.status is SessionStatus.COMPLETED:
            captured = outcome.amount if outcome.amount is not None else wanted
            if captured != wanted:
                log.error(
                    "the provider captured %s, not the %s asked; recorded as it says",
                    captured,
                    wanted,
                    extra=context,
                )
            moved = await lifecycle.move(
                session_id,
                SessionStatus.COMPLETED,
                source="merchant",
                confirmed_by=f"api:{record.provider}",
                changes={
                    "amountCaptured": captured,
                    "captureRequested": None,
                    "failureReason": None,
                    **({"captureId": outcome.capture_id} if outcome.capture_id else {}),
                    **({"paymentId": outcome.payment_id} if outcome.payment_id else {}),
                },
                guard=lambda current: holds(current, claimed),
                amend=lambda moved: _answered(moved, claimed, 200),
            )
            if moved.applied and moved.record is not None:
                return Answer.of(200, moved.record.public())
            return await self._answer_current(claimed, 200)
        if outcome.status is SessionStatus.PROCESSING:
            log.info("capture accepted by the provider; its webhook completes it", extra=context)
            return await self._answer_current(claimed, 202)
        if outcome.status is SessionStatus.FAILED:
            reason = outcome.failure_reason or "capture_failed"
            error = Unprocessable(
                "The provider declined the capture; the session stays AUTHORIZED",
                code="CAPTURE_FAILED",
                details={"sessionId": session_id, "failureReason": reason},
            )
            answer = error_answer(error, request_id)

            def declined(current: SessionRecord) -> tuple[dict[str, Any], list[OutboxItem]]:
                changes = {"captureRequested": None, "failureReason": reason}
                noted = current.model_copy(update={**changes, "version": current.version + 1})
                items = lifecycle.notifier.items(
                    noted, UPDATED, at=lifecycle.clock(), previous=current.status
                )
                return changes, items

            await self.keys.finish(claimed, answer.status, answer.body, change=declined)
            return answer
        # the authorization is gone at the provider (voided, lapsed): the session follows it
        await lifecycle.move(
            session_id,
            outcome.status,
            source=f"api:{record.provider}",
            changes={"captureRequested": None},
            guard=lambda current: holds(current, claimed),
        )
        gone = Conflict(
            details=f"The provider reports the authorization {outcome.status.value}; it "
            "cannot be captured",
            extra={"sessionId": session_id, "status": outcome.status.value},
        )
        answer = error_answer(gone, request_id)
        await self.keys.finish(claimed, answer.status, answer.body)
        return answer

    async def _answer_current(self, claimed: Claimed, status: int) -> Answer:
        """Answer ``status`` with the session as it is now, stored for the key."""
        body = await self.keys.finish(claimed, status, lambda r: Answer.of(status, r.public()).body)
        return Answer(status, body)


def check_amount(record: SessionRecord, wanted: Decimal) -> None:
    """422 ``CAPTURE_AMOUNT_EXCEEDED`` for more than the authorization holds."""
    if wanted > record.amount.total:
        raise Unprocessable(
            f"At most {format_amount(record.amount.total, record.currency)} "
            f"{record.currency} can be captured (the authorized amount)",
            code="CAPTURE_AMOUNT_EXCEEDED",
            details={"sessionId": record.sessionId},
        )


def _answered(moved: SessionRecord, claimed: Claimed, status: int) -> SessionRecord:
    """``moved`` with the key's answer (the moved session's view) recorded."""
    body = Answer.of(status, moved.public()).body
    return finished(moved, claimed.key, claimed.token, status, body)
