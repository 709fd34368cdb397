"""Refunds of a COMPLETED session's captured money.

::

    claim the key AND reserve the refund (PENDING, on the session) in one compare-and-set,
    with refund.created ─▶ refund_payment at the provider (the gateway refund id and a key
    derived from the merchant's go along) ─▶ record the outcome (provider refund id, status;
    refund.updated when it moved) with the key's answer, 201

* **Never more than captured.** The reservation is written before the provider is asked, and
  only while ``amount <= refundable`` (captured minus every refund that has not FAILED) holds on
  the version it is written over: of racing refunds whose sum exceeds the captured amount, the
  later ones answer 422 ``REFUND_AMOUNT_EXCEEDED`` on every store.
* **Exactly once at the provider.** The refund id derives from (session, key): a retry of the
  key finds its refund (even after its key was dropped from the session's bounded list) and
  re-sends the call only while it was never acknowledged, with the same provider key.
* **Outcomes.** A definite rejection (4xx) makes the refund FAILED (its amount is released) and
  answers 422 ``PROVIDER_REJECTED`` (stored for the key). An unknown outcome (timeout, 5xx)
  leaves it PENDING, unsubmitted: its amount stays held until the retry of the same key (or
  the provider's webhook) settles it.
* **Webhooks** (:func:`refund_event`) move a PENDING refund to SUCCEEDED or FAILED, never back;
  duplicates and late events change nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.domain.errors import Conflict, NotFound, Unprocessable
from gateway.domain.money import format_amount
from gateway.domain.session import Refund, RefundStatus, SessionRecord, SessionStatus
from gateway.metrics import PAYMENT_OPERATIONS
from gateway.notifications.events import REFUND_CREATED, REFUND_UPDATED
from gateway.operation_keys import (
    Claimed,
    OperationKeys,
    Prepared,
    Replay,
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
from gateway.store.base import OutboxItem, StoreUnavailable
from providers.base import (
    FlowNotSupported,
    ProviderError,
    ProviderRejected,
    RefundInput,
    RefundOutcome,
    RefundUpdate,
)

if TYPE_CHECKING:
    from gateway.lifecycle import LifecycleService

__all__ = ["MAX_REFUNDS", "REFUND", "Refunds", "refund_event", "refund_id_for"]

log = logging.getLogger("gateway.refunds")

REFUND = "refund"
#: refunds a session keeps (FAILED ones included); one more answers 422 REFUND_LIMIT_REACHED
MAX_REFUNDS = 100
_REFUND_NAMESPACE = uuid.UUID("0b6f3d1e-8a54-4f7e-9d1c-2f7a6c3e5b90")
_CAS_TRIES = 16


def refund_id_for(session_id: str, key: str) -> str:
    """The gateway's refund id of ``key`` on the session: the same on every retry."""
    return str(uuid.uuid5(_REFUND_NAMESPACE, f"{session_id}\x00{key}"))


class Refunds:
    """``POST`` and ``GET /api/v1/sessions/{id}/refunds``."""

    def __init__(self, lifecycle: LifecycleService) -> None:
        self.lifecycle = lifecycle
        self.keys = OperationKeys(
            lifecycle.store, lease=lifecycle.cancel_claim_ttl, clock=lifecycle.clock
        )

    async def refund(
        self,
        merchant_id: str,
        session_id: str,
        key: str,
        amount: Decimal,
        reason: str | None,
        *,
        request_id: str,
        places: Callable[[str], None] = lambda currency: None,
    ) -> Answer:
        """Refund ``amount`` of the session's captured money."""
        lifecycle = self.lifecycle
        refund_id = refund_id_for(session_id, key)

        def prepare(record: SessionRecord, resumed: bool) -> Prepared:
            existing = _find(record.refunds, refund_id, None)
            if existing is not None:
                return Prepared()  # a retry of this key: its refund is reserved already
            places(record.currency)
            refundable_now(record, amount)
            operations_of(lifecycle.adapters, record)
            now = lifecycle.clock()
            refund = Refund(
                refundId=refund_id,
                amount=amount,
                currency=record.currency,
                reason=reason,
                createdAt=now,
                updatedAt=now,
            )
            refunds = [*record.refunds, refund]
            written = record.model_copy(
                update={"refunds": refunds, "updatedAt": max(now, record.updatedAt)}
            )
            outbox = lifecycle.notifier.refund_items(
                written.model_copy(update={"version": record.version + 1}),
                refund,
                REFUND_CREATED,
                at=now,
            )
            return Prepared({"refunds": refunds, "updatedAt": written.updatedAt}, outbox)

        fingerprint = operation_fingerprint(REFUND, {"amount": amount, "reason": reason})
        claimed = await self.keys.claim(merchant_id, session_id, key, REFUND, fingerprint, prepare)
        if isinstance(claimed, Replay):
            return Answer(claimed.status, claimed.body, replayed=True)
        record = claimed.record
        refund = _find(record.refunds, refund_id, None)
        assert refund is not None
        if refund.submitted or refund.status is not RefundStatus.PENDING:
            # the provider has it (acknowledged, or its webhook told): never sent twice
            return await self._answer(claimed, refund_id)
        adapter = operations_of(lifecycle.adapters, record)
        data = RefundInput(
            payment=payment_reference(record, record.amountCaptured),
            refund_id=refund_id,
            session_id=session_id,
            amount=refund.amount,
            currency=refund.currency,
            reason=refund.reason,
            idempotency_key=provider_key(record, REFUND, key),
        )
        try:
            outcome = await lifecycle.boundary.call(
                record.provider,
                "refund_payment",
                lambda: adapter.refund_payment(
                    data, timeout=lifecycle.settings.provider_timeout_seconds
                ),
            )
        except ProviderError as exc:
            return await self._failed(claimed, refund_id, exc, request_id)
        PAYMENT_OPERATIONS.labels(REFUND, record.provider, outcome.status.value.lower()).inc()
        body = await self.keys.finish(
            claimed,
            201,
            lambda r: _view(r, refund_id),
            change=lambda r: self._outcome(r, refund_id, outcome),
        )
        return Answer(201, body)

    async def _failed(
        self, claimed: Claimed, refund_id: str, exc: ProviderError, request_id: str
    ) -> Answer:
        """A provider call that raised: FAILED and 422 for a definite rejection (stored), the
        refund left PENDING and the key free for its retry otherwise."""
        provider = claimed.record.provider
        error = api_error(exc, session_id=claimed.record.sessionId)
        if not isinstance(exc, ProviderRejected | FlowNotSupported):
            PAYMENT_OPERATIONS.labels(REFUND, provider, "unknown").inc()
            await self.keys.release(claimed, forget=False)
            raise error
        PAYMENT_OPERATIONS.labels(REFUND, provider, "rejected").inc()
        answer = error_answer(error, request_id)
        rejected = RefundOutcome(
            provider=provider, status=RefundStatus.FAILED, failure_reason=exc.outcome
        )
        await self.keys.finish(
            claimed,
            answer.status,
            answer.body,
            change=lambda r: self._outcome(r, refund_id, rejected),
        )
        log.warning(
            "the provider rejected a refund; it is FAILED and its amount released",
            extra={"session_id": claimed.record.sessionId, "provider": provider},
        )
        return answer

    def _outcome(
        self, record: SessionRecord, refund_id: str, outcome: RefundOutcome
    ) -> tuple[Mapping[str, Any], Sequence[OutboxItem]]:
        """The provider's answer recorded on the refund (a webhook that came first wins)."""
        now = self.lifecycle.clock()
        refund = _find(record.refunds, refund_id, None)
        if refund is None:
            return {}, ()
        update: dict[str, Any] = {"submitted": True, "updatedAt": now}
        if outcome.provider_refund_id and refund.providerRefundId is None:
            update["providerRefundId"] = outcome.provider_refund_id
        moves = refund.status is RefundStatus.PENDING and outcome.status is not RefundStatus.PENDING
        if moves:
            update["status"] = outcome.status
            if outcome.status is RefundStatus.FAILED:
                update["failureReason"] = outcome.failure_reason or "provider_failed"
        changed = refund.model_copy(update=update)
        refunds = [changed if r.refundId == refund_id else r for r in record.refunds]
        changes = {"refunds": refunds, "updatedAt": max(now, record.updatedAt)}
        if not moves:
            return changes, ()
        written = record.model_copy(update={**changes, "version": record.version + 1})
        return changes, self.lifecycle.notifier.refund_items(
            written, changed, REFUND_UPDATED, at=now
        )

    async def _answer(self, claimed: Claimed, refund_id: str) -> Answer:
        """201 with the refund as it is now (stored for the key unless stored already)."""
        body = await self.keys.finish(claimed, 201, lambda r: _view(r, refund_id))
        return Answer(201, body)

    async def listed(self, merchant_id: str, session_id: str) -> list[dict[str, Any]]:
        """The session's refunds, oldest first (404 unknown or another merchant's)."""
        record = await self.lifecycle.store.get_session(session_id)
        if record is None or record.merchantId != merchant_id:
            raise NotFound("Session not found")
        return [r.public(session_id) for r in record.refunds]


def refundable_now(record: SessionRecord, amount: Decimal) -> None:
    """409 unless the session is COMPLETED with money captured; 422 for more than is
    refundable, or past :data:`MAX_REFUNDS`."""
    if record.status is not SessionStatus.COMPLETED or record.amountCaptured <= 0:
        raise Conflict(
            details=f"The session is {record.status.value} with "
            f"{format_amount(record.amountCaptured, record.currency)} captured; only the "
            "captured money of a COMPLETED session can be refunded",
            extra={"sessionId": record.sessionId, "status": record.status.value},
        )
    if amount > record.refundable:
        raise Unprocessable(
            f"At most {format_amount(record.refundable, record.currency)} {record.currency} "
            "can be refunded (captured minus what is refunded or being refunded)",
            code="REFUND_AMOUNT_EXCEEDED",
            details={
                "sessionId": record.sessionId,
                "amountCaptured": format_amount(record.amountCaptured, record.currency),
                "amountRefunded": format_amount(record.amount_refunded, record.currency),
            },
        )
    if len(record.refunds) >= MAX_REFUNDS:
        raise Unprocessable(
            f"A session takes at most {MAX_REFUNDS} refunds",
            code="REFUND_LIMIT_REACHED",
            details={"sessionId": record.sessionId},
        )


async def refund_event(
    lifecycle: LifecycleService, session_id: str, provider: str, update: RefundUpdate
) -> str:
    """Apply a provider's refund webhook: ``applied`` (the refund moved), or ``ignored``
    (unknown refund, a duplicate, or a move backwards)."""
    context = {"session_id": session_id, "provider": provider}
    for _ in range(_CAS_TRIES):
        record = await lifecycle.store.get_session(session_id)
        if record is None:
            return "unknown_session"
        refund = _find(record.refunds, update.refund_id, update.provider_refund_id)
        if refund is None:
            log.warning("refund event for a refund the gateway did not make", extra=context)
            return "ignored"
        agreed = (update.amount is None or update.amount == refund.amount) and (
            update.currency is None or update.currency.upper() == refund.currency
        )
        if not agreed:
            log.error(
                "refund event of another amount or currency than the refund; not applied",
                extra=context,
            )
            return "ignored"
        now = lifecycle.clock()
        change: dict[str, Any] = {}
        if refund.providerRefundId is None and update.provider_refund_id:
            change["providerRefundId"] = update.provider_refund_id
        moves = refund.status is RefundStatus.PENDING and update.status is not RefundStatus.PENDING
        if moves:
            change["status"] = update.status
            if update.status is RefundStatus.FAILED:
                change["failureReason"] = update.failure_reason or "provider_failed"
        if not change:
            return "ignored"
        changed = refund.model_copy(update={**change, "submitted": True, "updatedAt": now})
        refunds = [changed if r.refundId == refund.refundId else r for r in record.refunds]
        updated = record.model_copy(
            update={
                "refunds": refunds,
                "updatedAt": max(now, record.updatedAt),
                "version": record.version + 1,
            }
        )
        outbox = (
            lifecycle.notifier.refund_items(updated, changed, REFUND_UPDATED, at=now)
            if moves
            else []
        )
        if await lifecycle.store.update_session(
            updated, expected_version=record.version, outbox=outbox
        ):
            if moves:
                log.info("refund %s by the provider's webhook", update.status.value, extra=context)
            return "applied" if moves else "ignored"
    raise StoreUnavailable(f"session {session_id} kept changing; gave up after retries")


def _find(
    refunds: Sequence[Refund], refund_id: str | None, provider_refund_id: str | None
) -> Refund | None:
    if refund_id is not None:
        found = next((r for r in refunds if r.refundId == refund_id), None)
        if found is not None:
            return found
    if provider_refund_id is not None:
        return next((r for r in refunds if r.providerRefundId == provider_refund_id), None)
    return None


def _view(record: SessionRecord, refund_id: str) -> bytes:
    refund = _find(record.refunds, refund_id, None)
    assert refund is not None
    return Answer.of(201, refund.public(record.sessionId)).body
