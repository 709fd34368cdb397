"""The session state machine as data, and the one pure function that moves a session.

::

    PENDING ──▶ REQUIRES_ACTION ──▶ PROCESSING ──▶ COMPLETED | FAILED
       │               │                               (final)
       └───────────────┴──▶ COMPLETED | FAILED | EXPIRED | CANCELLED (final)

Rules, all enforced by :func:`apply`:

* only the moves in :data:`ALLOWED` happen; everything else is ignored (``None``);
* a status never moves to a lower :data:`RANK` (an out-of-order ``PROCESSING`` after
  ``COMPLETED`` changes nothing), nor to itself (a duplicate event changes nothing);
* final statuses are absorbing: nothing leaves ``COMPLETED``, ``FAILED``, ``EXPIRED`` or
  ``CANCELLED``;
* ``PROCESSING`` (money is moving) neither expires nor is cancelled by the merchant: only the
  provider's verdict ends it.

Every applied move appends a :class:`~gateway.domain.session.Transition` (time, source, event id)
and bumps ``version``, the compare-and-set token of the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from gateway.domain.session import FINAL_STATUSES, SessionRecord, SessionStatus, Transition

__all__ = [
    "ALLOWED",
    "CANCELLABLE",
    "EXPIRABLE",
    "RANK",
    "apply",
    "can_move",
    "is_expired",
]

S = SessionStatus

#: How far along the lifecycle a status is; a move never lowers it.
RANK: Mapping[SessionStatus, int] = MappingProxyType(
    {
        S.PENDING: 0,
        S.REQUIRES_ACTION: 1,
        S.PROCESSING: 2,
        S.COMPLETED: 3,
        S.FAILED: 3,
        S.EXPIRED: 3,
        S.CANCELLED: 3,
    }
)

#: Every legal move: from -> the statuses it may go to.
ALLOWED: Mapping[SessionStatus, frozenset[SessionStatus]] = MappingProxyType(
    {
        S.PENDING: frozenset(
            {S.REQUIRES_ACTION, S.PROCESSING, S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED}
        ),
        S.REQUIRES_ACTION: frozenset({S.PROCESSING, S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED}),
        S.PROCESSING: frozenset({S.COMPLETED, S.FAILED}),
        S.COMPLETED: frozenset(),
        S.FAILED: frozenset(),
        S.EXPIRED: frozenset(),
        S.CANCELLED: frozenset(),
    }
)

#: Statuses a session may expire from (the customer has not paid yet).
EXPIRABLE = frozenset(s for s, targets in ALLOWED.items() if S.EXPIRED in targets)
#: Statuses the merchant may cancel from.
CANCELLABLE = frozenset(s for s, targets in ALLOWED.items() if S.CANCELLED in targets)


def can_move(current: SessionStatus, target: SessionStatus) -> bool:
    """Whether ``current -> target`` is a legal, forward move."""
    return target in ALLOWED[current] and RANK[target] > RANK[current]


def is_expired(record: SessionRecord, now: datetime) -> bool:
    """True when the session is past ``expiresAt`` and may still expire."""
    return record.status in EXPIRABLE and record.expiresAt <= now


def apply(
    record: SessionRecord,
    status: SessionStatus,
    at: datetime,
    source: str,
    event_id: str | None = None,
    *,
    changes: Mapping[str, Any] | None = None,
) -> SessionRecord | None:
    """The record after moving to ``status``, or ``None`` when the move does not apply.

    ``changes`` sets other fields together with the move (provider customer and payment method
    ids, a failure or cancellation reason); they are dropped with the move when it does not
    apply. The input record is never modified.
    """
    if record.status in FINAL_STATUSES or not can_move(record.status, status):
        return None
    if event_id is not None and any(t.eventId == event_id for t in record.transitions):
        return None
    transition = Transition(status=status, at=at, source=source, eventId=event_id)
    update: dict[str, Any] = dict(changes or {})
    update.update(
        status=status,
        updatedAt=max(at, record.updatedAt),
        transitions=[*record.transitions, transition],
        version=record.version + 1,
    )
    return record.model_copy(update=update)
