"""The session state machine: every (from, to) pair, duplicates and out-of-order events."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.domain.lifecycle import CANCELLABLE, EXPIRABLE, apply, can_move, is_expired
from gateway.domain.session import FINAL_STATUSES, CancelClaim, SessionStatus
from tests.store.samples import make_session

S = SessionStatus
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

#: Written out by hand (not derived from the module's table): the legal moves.
LEGAL = {
    (S.PENDING, S.REQUIRES_ACTION),
    (S.PENDING, S.PROCESSING),
    (S.PENDING, S.COMPLETED),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.EXPIRED),
    (S.PENDING, S.CANCELLED),
    (S.REQUIRES_ACTION, S.PROCESSING),
    (S.REQUIRES_ACTION, S.COMPLETED),
    (S.REQUIRES_ACTION, S.FAILED),
    (S.REQUIRES_ACTION, S.EXPIRED),
    (S.REQUIRES_ACTION, S.CANCELLED),
    (S.PROCESSING, S.COMPLETED),
    (S.PROCESSING, S.FAILED),
    (S.PENDING, S.AUTHORIZED),
    (S.REQUIRES_ACTION, S.AUTHORIZED),
    (S.PROCESSING, S.AUTHORIZED),
    (S.AUTHORIZED, S.COMPLETED),
    (S.AUTHORIZED, S.FAILED),
    (S.AUTHORIZED, S.CANCELLED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_every_pair(current: SessionStatus, target: SessionStatus) -> None:
    record = make_session(status=current)
    moved = apply(record, target, T0, "webhook:stripe", "evt_1")
    if (current, target) in LEGAL:
        assert can_move(current, target)
        assert moved is not None
        assert moved.status is target
        assert moved.version == record.version + 1
        last = moved.transitions[-1]
        assert (last.status, last.at, last.source, last.eventId) == (
            target,
            T0,
            "webhook:stripe",
            "evt_1",
        )
        assert moved.transitions[:-1] == record.transitions
        assert record.status is current  # the input is untouched
    else:
        assert not can_move(current, target)
        assert moved is None


def test_finals_absorb_everything() -> None:
    for final in FINAL_STATUSES:
        record = make_session(status=final)
        assert all(apply(record, s, T0, "x") is None for s in S)


#: Written out by hand: the only moves out of a final status, on the provider's word on money.
MONEY_WINS = {
    (S.CANCELLED, S.PROCESSING),
    (S.CANCELLED, S.COMPLETED),
    (S.EXPIRED, S.PROCESSING),
    (S.EXPIRED, S.COMPLETED),
    (S.CANCELLED, S.AUTHORIZED),
    (S.EXPIRED, S.AUTHORIZED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(FINAL_STATUSES, S)))
def test_money_overrides_only_a_cancel_or_an_expiry(
    current: SessionStatus, target: SessionStatus
) -> None:
    cancelled = current is S.CANCELLED
    record = make_session(status=current).model_copy(
        update={
            "cancellationReason": "abandoned" if cancelled else None,
            "payableUntil": T0 if cancelled else None,
        }
    )
    moved = apply(record, target, T0, "webhook:adyen", "psp:AUTHORISATION", money=True)
    if (current, target) not in MONEY_WINS:
        assert moved is None
        return
    assert moved is not None
    assert moved.status is target
    assert moved.cancellationReason is None  # no leftover on a session the payer paid
    assert moved.payableUntil is None
    assert moved.transitions[-1].source == "webhook:adyen"
    assert moved.version == record.version + 1
    # the same event never moves it twice
    assert apply(moved, S.COMPLETED, T0, "webhook:adyen", "psp:AUTHORISATION", money=True) is None


def test_money_moves_forward_only_while_open() -> None:
    """``money`` changes nothing for open sessions: the usual table and ranks apply."""
    completed = apply(make_session(), S.COMPLETED, T0, "webhook:stripe", "e1", money=True)
    assert completed is not None
    assert apply(completed, S.PROCESSING, T0, "webhook:stripe", "e0", money=True) is None


def test_a_final_move_ends_a_cancel_in_progress_except_the_cancel_itself() -> None:
    claim = CancelClaim(token="t", reason="duplicate", at=T0)
    record = make_session().model_copy(update={"cancelClaim": claim})
    for final in (S.COMPLETED, S.FAILED, S.EXPIRED):
        moved = apply(record, final, T0, "webhook:stripe")
        assert moved is not None
        assert moved.cancelClaim is None
    cancelled = apply(record, S.CANCELLED, T0, "merchant")
    assert cancelled is not None
    assert cancelled.cancelClaim == claim  # tells the cancel that it was its own
    processing = apply(record, S.PROCESSING, T0, "webhook:paypal")
    assert processing is not None
    assert processing.cancelClaim == claim


def test_duplicate_event_applies_once() -> None:
    record = make_session()
    once = apply(record, S.REQUIRES_ACTION, T0, "webhook:adyen", "psp:1")
    assert once is not None
    assert apply(once, S.REQUIRES_ACTION, T0, "webhook:adyen", "psp:1") is None
    # the same event id can never move the session twice, even to another status
    assert apply(once, S.PROCESSING, T0, "webhook:adyen", "psp:1") is None


def test_out_of_order_events_never_move_backwards() -> None:
    completed = apply(make_session(), S.COMPLETED, T0, "webhook:paypal", "capture")
    assert completed is not None
    assert apply(completed, S.PROCESSING, T0, "webhook:paypal", "approved") is None
    processing = apply(make_session(), S.PROCESSING, T0, "webhook:stripe", "e1")
    assert processing is not None
    assert apply(processing, S.REQUIRES_ACTION, T0, "webhook:stripe", "e0") is None
    assert apply(processing, S.PENDING, T0, "webhook:stripe", "e0") is None
    # and a late final verdict still lands on a session in between
    done = apply(processing, S.FAILED, T0 + timedelta(seconds=5), "webhook:stripe", "e2")
    assert done is not None
    assert [t.status for t in done.transitions] == [S.PENDING, S.PROCESSING, S.FAILED]


def test_changes_ride_along_only_with_an_applied_move() -> None:
    record = make_session()
    moved = apply(record, S.COMPLETED, T0, "webhook:stripe", "e", changes={"customerId": "cus_1"})
    assert moved is not None
    assert moved.customerId == "cus_1"
    assert apply(moved, S.FAILED, T0, "x", changes={"customerId": "cus_2"}) is None


def test_updated_at_never_goes_back() -> None:
    record = make_session()
    earlier = record.updatedAt - timedelta(hours=1)
    moved = apply(record, S.FAILED, earlier, "webhook:adyen")
    assert moved is not None
    assert moved.updatedAt == record.updatedAt
    assert moved.transitions[-1].at == earlier


def test_a_voided_authorization_is_not_reopened_by_a_late_report() -> None:
    """A void (AUTHORIZED -> CANCELLED) followed by a late or repeated authorization report:
    the session stays CANCELLED; a first authorization after a cancel still wins (money)."""
    authorized = apply(make_session(), S.AUTHORIZED, T0, "webhook:adyen", "psp:AUTH")
    assert authorized is not None
    voided = apply(authorized, S.CANCELLED, T0, "merchant")
    assert voided is not None
    assert apply(voided, S.AUTHORIZED, T0, "webhook:adyen", "psp:AUTH2", money=True) is None
    cancelled = apply(make_session(), S.CANCELLED, T0, "merchant")
    assert cancelled is not None
    reopened = apply(cancelled, S.AUTHORIZED, T0, "webhook:adyen", "psp:AUTH", money=True)
    assert reopened is not None
    assert reopened.status is S.AUTHORIZED


def test_completion_records_the_captured_amount() -> None:
    """A move to COMPLETED captures the total unless the move names the captured amount."""
    record = make_session()
    done = apply(record, S.COMPLETED, T0, "webhook:stripe", "evt_1")
    assert done is not None
    assert done.amountCaptured == record.amount.total
    authorized = apply(record, S.AUTHORIZED, T0, "webhook:stripe", "evt_1")
    assert authorized is not None
    assert authorized.amountCaptured == 0
    part = Decimal("1.50")
    captured = apply(authorized, S.COMPLETED, T0, "api:stripe", changes={"amountCaptured": part})
    assert captured is not None
    assert captured.amountCaptured == part


def test_expiry_and_cancel_sets() -> None:
    assert {S.PENDING, S.REQUIRES_ACTION} == EXPIRABLE
    assert {S.PENDING, S.REQUIRES_ACTION, S.AUTHORIZED} == CANCELLABLE
    record = make_session()
    assert not is_expired(record, record.expiresAt - timedelta(seconds=1))
    assert is_expired(record, record.expiresAt)
    processing = make_session(status=S.PROCESSING)
    assert not is_expired(processing, processing.expiresAt + timedelta(days=1))
