"""Idempotency of the merchant's POSTs on a session (capture, cancel, refunds), on every store.

The keys live on the session itself (:attr:`SessionRecord.operations`), changed only by the
store's compare-and-set (``update_session`` with ``expected_version``), so no store needs a key
space of its own and a claim is exactly as atomic as any lifecycle move. The semantics are the
ones of session creation:

* same key, same body (``fingerprint``): the stored answer is replayed byte for byte with
  ``Idempotent-Replayed: true``;
* same key, another body (or another call): 422 ``IDEMPOTENCY_KEY_MISMATCH``;
* same key while its first request still runs: 409 with ``Retry-After`` (the seconds left of
  its lease). A holder that died frees the key when its lease (twice the provider timeout plus a
  second) ends, and the next retry takes it over;
* an answer is stored only for a call that changed something (a capture, a void, a refund,
  including a refund the provider refused: it exists, FAILED). A call refused before anything
  was asked of the provider (wrong state, amount too high) forgets its key, so a retry is judged
  afresh; a provider call whose outcome is unknown (timeout, 5xx) keeps the key without an
  answer, and the retry of the same key re-sends the call with the same provider key.

Bound: a session keeps at most :data:`MAX_OPERATIONS` keys. Adding one to a full list drops the
oldest one that is not in flight; a retry of a dropped key is judged afresh (a capture of a
captured session answers 409; a refund's id derives from its key, so its retry finds the refund
and never refunds twice).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from gateway.domain.errors import Conflict, NotFound, Unprocessable
from gateway.domain.money import MONEY_CONTEXT
from gateway.domain.session import Operation, SessionRecord
from gateway.metrics import IDEMPOTENCY
from gateway.store.base import LifecycleStore, OutboxItem, SessionStore, StoreUnavailable

__all__ = [
    "EXCLUSIVE_KINDS",
    "MAX_OPERATIONS",
    "Claimed",
    "OperationKeys",
    "Prepared",
    "Replay",
    "finished",
    "holds",
    "operation_fingerprint",
]

#: how many keyed calls a session remembers (see the module docstring)
MAX_OPERATIONS = 128
#: calls of which one at a time may run on a session, whatever their keys: they move the
#: authorization (a capture and a void must never both reach the provider)
EXCLUSIVE_KINDS = frozenset({"capture", "cancel"})
#: compare-and-set attempts per write: many concurrent calls on one session (refunds) each
#: win a round after a short random pause (:func:`_backoff`)
_CAS_TRIES = 64


class _Store(SessionStore, LifecycleStore):
    """What the keys need of the records."""


def _decimal(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(MONEY_CONTEXT), "f")
    raise TypeError(f"not canonical JSON: {type(value).__name__}")


def operation_fingerprint(kind: str, body: Mapping[str, Any]) -> str:
    """SHA-256 of the call and its canonical body: sorted keys, normalised decimals (``40.0``
    and ``40.00`` agree), nulls dropped (an absent and a null field agree)."""
    canonical = {"kind": kind, "body": {k: v for k, v in body.items() if v is not None}}
    raw = orjson.dumps(canonical, default=_decimal, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored answer of an earlier request with the same key and body."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key is ours: ``record`` is the session as written with the claim (and whatever
    :class:`Prepared` added); ``resumed`` when the key was known without an answer (an earlier
    attempt's provider call ended without a known outcome, or its holder died)."""

    record: SessionRecord
    key: str
    token: str
    resumed: bool


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the caller writes together with the claim (a refund's reservation, the capture
    asked for) and the notifications of it."""

    changes: Mapping[str, Any] = field(default_factory=dict)
    outbox: Sequence[OutboxItem] = ()


#: what a write of the keys also changes on the fresh session, and the notifications of it
Change = Callable[[SessionRecord], tuple[Mapping[str, Any], Sequence[OutboxItem]]]

#: checks the session (raising an ApiError refuses the call: nothing is written) and says what
#: to write with the claim; called again on every fresh read
Preparer = Callable[[SessionRecord, bool], Prepared]


def finished(
    record: SessionRecord, key: str, token: str, status: int, body: bytes
) -> SessionRecord:
    """``record`` with the answer of ``key`` stored, if ``token`` still holds the key (pure:
    written by the caller, in the same compare-and-set as the change it answers)."""
    operations = [
        op.model_copy(update={"leaseUntil": None, "status": status, "body": body.decode()})
        if op.key == key and op.token == token and op.status is None
        else op
        for op in record.operations
    ]
    return record.model_copy(update={"operations": operations})


class OperationKeys:
    """Claims, answers and releases ``Idempotency-Key`` s of calls on one session."""

    def __init__(
        self, store: _Store | Any, *, lease: timedelta, clock: Callable[[], datetime]
    ) -> None:
        self.store = store
        self.lease = lease
        self._clock = clock

    async def claim(
        self,
        merchant_id: str,
        session_id: str,
        key: str,
        kind: str,
        fingerprint: str,
        prepare: Preparer,
    ) -> Claimed | Replay:
        """Claim ``key`` for this call (404 unknown session or another merchant's, 422
        mismatch, 409 in flight), writing what ``prepare`` returns in the same write."""
        for attempt in range(_CAS_TRIES):
            record = await self.store.get_session(session_id)
            if record is None or record.merchantId != merchant_id:
                raise NotFound("Session not found")
            now = self._clock()
            known = next((op for op in record.operations if op.key == key), None)
            if known is not None:
                if known.kind != kind or known.fingerprint != fingerprint:
                    IDEMPOTENCY.labels("mismatch").inc()
                    raise Unprocessable.idempotency_mismatch()
                if known.status is not None and known.body is not None:
                    IDEMPOTENCY.labels("replay").inc()
                    return Replay(known.status, known.body.encode())
                if _live(known, now):
                    IDEMPOTENCY.labels("in_flight").inc()
                    raise _in_flight(known, now)
            if kind in EXCLUSIVE_KINDS:
                busy = next(
                    (
                        op
                        for op in record.operations
                        if op.key != key and op.kind in EXCLUSIVE_KINDS and _live(op, now)
                    ),
                    None,
                )
                if busy is not None:
                    raise Conflict(
                        details=f"Another {busy.kind} of this session is in progress",
                        headers={"Retry-After": str(_seconds_left(busy, now))},
                        extra={"sessionId": session_id, "status": record.status.value},
                    )
            prepared = prepare(record, known is not None)
            token = os.urandom(16).hex()
            op = Operation(
                key=key,
                kind=kind,
                fingerprint=fingerprint,
                token=token,
                leaseUntil=now + self.lease,
                at=known.at if known is not None else now,
            )
            operations = _with(record.operations, op, now)
            updated = record.model_copy(
                update={
                    **dict(prepared.changes),
                    "operations": operations,
                    "version": record.version + 1,
                }
            )
            if await self.store.update_session(
                updated, expected_version=record.version, outbox=prepared.outbox
            ):
                IDEMPOTENCY.labels("resumed" if known is not None else "new").inc()
                return Claimed(updated, key, token, known is not None)
            await _backoff(attempt)
        raise StoreUnavailable(f"session {session_id} kept changing; gave up after retries")

    async def finish(
        self,
        claimed: Claimed,
        status: int,
        body: bytes | Callable[[SessionRecord], bytes],
        change: Change | None = None,
    ) -> bytes:
        """Store the answer of ``claimed`` (``body``, or what it makes of the session as
        written), with what ``change`` makes of the fresh record, in one write; returns the
        body answered. When the key is no longer ours (its lease ran out and a retry took it
        over: that retry's answer is stored) nothing is written and the body is made of the
        session as it is."""
        answered = b""

        def mark(record: SessionRecord) -> SessionRecord:
            nonlocal answered
            answered = body(record) if callable(body) else body
            return finished(record, claimed.key, claimed.token, status, answered)

        written = await self._write(claimed, mark, change)
        if written is None:
            current = await self.store.get_session(claimed.record.sessionId) or claimed.record
            mine = next(
                (
                    o
                    for o in current.operations
                    if o.key == claimed.key and o.token == claimed.token
                ),
                None,
            )
            if mine is not None and mine.body is not None:
                return mine.body.encode()  # answered already (in the write of its move)
            answered = body(current) if callable(body) else body
        return answered

    async def release(
        self,
        claimed: Claimed,
        *,
        forget: bool,
        change: Change | None = None,
    ) -> None:
        """Give the key up: ``forget`` drops it (nothing was asked of the provider), otherwise
        it stays known without an answer, free for the retry at once."""

        def released(record: SessionRecord) -> SessionRecord:
            kept = []
            for op in record.operations:
                if op.key == claimed.key and op.token == claimed.token and op.status is None:
                    if forget:
                        continue
                    op = op.model_copy(update={"token": None, "leaseUntil": None})
                kept.append(op)
            return record.model_copy(update={"operations": kept})

        await self._write(claimed, released, change)

    async def _write(
        self,
        claimed: Claimed,
        mark: Callable[[SessionRecord], SessionRecord],
        change: Change | None,
    ) -> SessionRecord | None:
        session_id = claimed.record.sessionId
        for attempt in range(_CAS_TRIES):
            record = await self.store.get_session(session_id)
            if record is None or not holds(record, claimed):
                return None
            changes: Mapping[str, Any] = {}
            outbox: Sequence[OutboxItem] = ()
            if change is not None:
                changes, outbox = change(record)
            updated = mark(
                record.model_copy(update={**dict(changes), "version": record.version + 1})
            )
            if await self.store.update_session(
                updated, expected_version=record.version, outbox=outbox
            ):
                return updated
            await _backoff(attempt)
        raise StoreUnavailable(f"session {session_id} kept changing; gave up after retries")


async def _backoff(attempt: int) -> None:
    """A short random pause after a lost compare-and-set (growing up to 20 ms), so writers
    racing on one session do not keep colliding."""
    await asyncio.sleep(random.uniform(0, min(0.02, 0.001 * 2**attempt)))


def holds(record: SessionRecord, claimed: Claimed) -> bool:
    """Whether ``claimed``'s token still holds its key on ``record``."""
    return any(
        op.key == claimed.key and op.token == claimed.token and op.status is None
        for op in record.operations
    )


def _live(op: Operation, now: datetime) -> bool:
    return op.status is None and op.leaseUntil is not None and op.leaseUntil > now


def _seconds_left(op: Operation, now: datetime) -> int:
    left = (op.leaseUntil - now).total_seconds() if op.leaseUntil else 1.0
    return max(1, math.ceil(left))


def _in_flight(op: Operation, now: datetime) -> Conflict:
    return Conflict(
        details="A request with this Idempotency-Key is still being processed",
        headers={"Retry-After": str(_seconds_left(op, now))},
    )


def _with(operations: list[Operation], op: Operation, now: datetime) -> list[Operation]:
    """``operations`` with ``op`` in place of its key's entry (or appended), bounded by
    :data:`MAX_OPERATIONS` (the oldest entries not in flight make room)."""
    kept = [o for o in operations if o.key != op.key]
    while len(kept) >= MAX_OPERATIONS:
        oldest = next((o for o in kept if not _live(o, now)), None)
        if oldest is None:
            raise Conflict(
                details="Too many calls on this session are in progress",
                headers={"Retry-After": "1"},
            )
        kept.remove(oldest)
    kept.append(op)
    return kept
