"""The session state machine as data, and the one pure function that moves a session.

::

    PENDING ──▶ REQUIRES_ACTION ──▶ PROCESSING ──▶ COMPLETED | FAILED
       │               │                  │            (final)
       │               │                  ▼
       │               │              AUTHORIZED ──▶ COMPLETED (captured) | CANCELLED (voided)
       │               │                  ▲              | FAILED
       ├───────────────┴──────────────────┘
       └───────────────┴──▶ COMPLETED | FAILED | EXPIRED | CANCELLED (final)

    CANCELLED | EXPIRED ──(provider reports money)──▶ PROCESSING | AUTHORIZED | COMPLETED

Rules, all enforced by :func:`apply`:

* only the moves in :data:`ALLOWED` happen; everything else is ignored (``None``);
* a status never moves to a lower :data:`RANK` (an out-of-order ``PROCESSING`` after
  ``COMPLETED`` changes nothing), nor to itself (a duplicate event changes nothing);
* final statuses are absorbing, with one exception: nothing leaves ``COMPLETED`` or
  ``FAILED``, and ``CANCELLED`` or ``EXPIRED`` are left only by the provider's word on money
  (:data:`MONEY_OVERRIDES`);
* **money overrides a closed session**: a signed provider report that the payer's money was
  taken (``COMPLETED``) or is moving (``PROCESSING``) moves a ``CANCELLED`` or ``EXPIRED``
  session there (``apply(..., money=True)``, only for such reports: never for an approval that
  still awaits the gateway's capture). Providers without a cancel call (Adyen, PayPal) keep
  their hosted page open after a cancel at the gateway, and a payment started just before an
  expiry can land after it: the money is there, so the session says so (and the merchant is
  notified) rather than swallow it. Such a move clears ``cancellationReason`` and
  ``payableUntil``; the ``CANCELLED``/``EXPIRED`` transition stays in the history;
* ``PROCESSING`` (money is moving) neither expires nor is cancelled by the merchant: only the
  provider's verdict ends it;
* ``AUTHORIZED`` (``captureMethod`` manual: the money is held, not taken) does not expire with
  the session; the merchant captures it (COMPLETED) or voids it (CANCELLED), and a provider
  that lets the authorization lapse reports it cancelled. A report of an authorization never
  reopens a session that was AUTHORIZED before (a late duplicate after a void);
* a move to ``COMPLETED`` records ``amountCaptured`` (the total unless the move sets it).

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
    "MONEY_OVERRIDES",
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
        S.AUTHORIZED: 3,
        S.COMPLETED: 4,
        S.FAILED: 4,
        S.EXPIRED: 4,
        S.CANCELLED: 4,
    }
)

#: Every legal move: from -> the statuses it may go to.
ALLOWED: Mapping[SessionStatus, frozenset[SessionStatus]] = MappingProxyType(
    {
        S.PENDING: frozenset(
            {
                S.REQUIRES_ACTION,
                S.PROCESSING,
                S.AUTHORIZED,
                S.COMPLETED,
                S.FAILED,
                S.EXPIRED,
                S.CANCELLED,
            }
        ),
        S.REQUIRES_ACTION: frozenset(
            {S.PROCESSING, S.AUTHORIZED, S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED}
        ),
        S.PROCESSING: frozenset({S.AUTHORIZED, S.COMPLETED, S.FAILED}),
        S.AUTHORIZED: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED}),
        S.COMPLETED: frozenset(),
        S.FAILED: frozenset(),
        S.EXPIRED: frozenset(),
        S.CANCELLED: frozenset(),
    }
)

#: The only moves out of a final status: the provider's report of money (``money=True``).
MONEY_OVERRIDES: Mapping[SessionStatus, frozenset[SessionStatus]] = MappingProxyType(
    {
        S.CANCELLED: frozenset({S.PROCESSING, S.AUTHORIZED, S.COMPLETED}),
        S.EXPIRED: frozenset({S.PROCESSING, S.AUTHORIZED, S.COMPLETED}),
    }
)

#: Statuses a session may expire from (the customer has not paid yet).
EXPIRABLE = frozenset(s for s, targets in ALLOWED.items() if S.EXPIRED in targets)
#: Statuses the merchant may cancel from (AUTHORIZED: a void of the authorization).
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
    money: bool = False,
    confirmed_by: str | None = None,
) -> SessionRecord | None:
    """The record after moving to ``status``, or ``None`` when the move does not apply.

    ``changes`` sets other fields together with the move (provider customer and payment method
    ids, a failure or cancellation reason); they are dropped with the move when it does not
    apply. ``confirmed_by`` names who confirmed a move ``source`` asked for. ``money`` says
    the move is the provider's report that money was taken or is moving (it may then leave
    CANCELLED or EXPIRED: :data:`MONEY_OVERRIDES`). The input record is never modified.
    """
    overrides = money and status in MONEY_OVERRIDES.get(record.status, frozenset())
    if overrides and status is S.AUTHORIZED and _was_authorized(record):
        return None
    if not overrides and (record.status in FINAL_STATUSES or not can_move(record.status, status)):
        return None
    if event_id is not None and any(t.eventId == event_id for t in record.transitions):
        return None
    transition = Transition(
        status=status, at=at, source=source, eventId=event_id, confirmedBy=confirmed_by
    )
    update: dict[str, Any] = dict(changes or {})
    if overrides:  # paid after all: the cancel's traces go (the history keeps the move)
        update["cancellationReason"] = None
        update["payableUntil"] = None
    if status in FINAL_STATUSES and status is not S.CANCELLED:
        update["cancelClaim"] = None  # no cancel is in progress on a session that ended
    if status is S.COMPLETED and "amountCaptured" not in update:
        update["amountCaptured"] = record.amount.total
    update.update(
        status=status,
        updatedAt=max(at, record.updatedAt),
        transitions=[*record.transitions, transition],
        version=record.version + 1,
    )
    return record.model_copy(update=update)


def _was_authorized(record: SessionRecord) -> bool:
    return any(t.status is S.AUTHORIZED for t in record.transitions)
