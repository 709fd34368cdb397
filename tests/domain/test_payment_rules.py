"""The pure rules of the calls after the checkout: what may be refunded, what a capture event
must report, how keyed bodies compare, when an authorization warning is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.authorizations import WARNING, warning_at
from gateway.domain.errors import Conflict, Unprocessable
from gateway.domain.session import Refund, RefundStatus, SessionStatus
from gateway.operation_keys import operation_fingerprint
from gateway.reconciliation import expected_amount
from gateway.refunds import MAX_REFUNDS, refund_id_for, refundable_now
from providers.base import ProviderEvent
from tests.store.samples import make_session

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def refund(amount: str, status: RefundStatus = RefundStatus.PENDING) -> Refund:
    return Refund(
        refundId=f"r-{amount}-{status.value}",
        amount=Decimal(amount),
        currency="AUD",
        status=status,
        createdAt=NOW,
        updatedAt=NOW,
    )


def completed(*refunds: Refund, captured: str = "140.76"):  # type: ignore[no-untyped-def]
    return make_session(status=SessionStatus.COMPLETED).model_copy(
        update={"amountCaptured": Decimal(captured), "refunds": list(refunds)}
    )


def test_refundable_is_captured_minus_refunds_that_did_not_fail() -> None:
    record = completed(
        refund("40.00"), refund("30", RefundStatus.SUCCEEDED), refund("70.76", RefundStatus.FAILED)
    )
    assert record.amount_refunded == Decimal("70.00")
    assert record.refundable == Decimal("70.76")
    refundable_now(record, Decimal("70.76"))
    with pytest.raises(Unprocessable) as exceeded:
        refundable_now(record, Decimal("70.77"))
    assert exceeded.value.code == "REFUND_AMOUNT_EXCEEDED"
    assert exceeded.value.details["amountRefunded"] == "70.00"


@pytest.mark.parametrize(
    "status", [SessionStatus.AUTHORIZED, SessionStatus.PENDING, SessionStatus.CANCELLED]
)
def test_only_completed_sessions_with_money_captured_refund(status: SessionStatus) -> None:
    with pytest.raises(Conflict):
        refundable_now(make_session(status=status), Decimal("1"))
    with pytest.raises(Conflict):
        refundable_now(completed(captured="0"), Decimal("1"))


def test_refunds_per_session_are_bounded() -> None:
    record = completed(*(refund("0.01") for _ in range(MAX_REFUNDS)))
    with pytest.raises(Unprocessable) as full:
        refundable_now(record, Decimal("0.01"))
    assert full.value.code == "REFUND_LIMIT_REACHED"


def test_refund_ids_derive_from_session_and_key() -> None:
    assert refund_id_for("s1", "k1") == refund_id_for("s1", "k1")
    assert (
        len({refund_id_for("s1", "k1"), refund_id_for("s1", "k2"), refund_id_for("s2", "k1")}) == 3
    )


def test_fingerprints_compare_amounts_not_their_spelling() -> None:
    same = operation_fingerprint("refund", {"amount": Decimal("40.0"), "reason": None})
    assert same == operation_fingerprint("refund", {"amount": Decimal("40.00")})
    assert same != operation_fingerprint("refund", {"amount": Decimal("40.01")})
    assert same != operation_fingerprint("capture", {"amount": Decimal("40.00")})


def _event(status: SessionStatus) -> ProviderEvent:
    return ProviderEvent("stripe", "e", "t", None, None, status, amount=Decimal("1"))


def test_a_capture_event_is_reconciled_against_the_capture_asked() -> None:
    authorized = make_session(status=SessionStatus.AUTHORIZED)
    assert expected_amount(authorized, _event(SessionStatus.COMPLETED)) == Decimal("140.76")
    asked = authorized.model_copy(update={"captureRequested": Decimal("60")})
    assert expected_amount(asked, _event(SessionStatus.COMPLETED)) == Decimal("60")
    assert expected_amount(asked, _event(SessionStatus.AUTHORIZED)) == Decimal("140.76")
    done = make_session(status=SessionStatus.COMPLETED).model_copy(
        update={"amountCaptured": Decimal("60")}
    )
    assert expected_amount(done, _event(SessionStatus.COMPLETED)) == Decimal("60")


def test_the_warning_is_due_a_day_before_the_authorization_lapses_once() -> None:
    lapses = NOW + timedelta(days=7)
    record = make_session(status=SessionStatus.AUTHORIZED).model_copy(
        update={"authorizationExpiresAt": lapses}
    )
    assert warning_at(record) == lapses - WARNING
    assert warning_at(record.model_copy(update={"authorizationExpiryNotified": True})) is None
    assert warning_at(record.model_copy(update={"status": SessionStatus.COMPLETED})) is None
    assert warning_at(record.model_copy(update={"authorizationExpiresAt": None})) is None
