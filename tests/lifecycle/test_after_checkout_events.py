"""Provider events after the checkout, applied by the lifecycle to stored sessions: an
authorization (AUTHORIZED, with when it lapses), a capture of it (partial ones reconciled
against the capture asked), a failed capture (stays AUTHORIZED), refund progress (PENDING ->
SUCCEEDED | FAILED, never back), and the warning before an authorization lapses. Each with its
duplicate and out-of-order cases, on the real gateway, store and merchant receiver."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.domain.session import Refund, RefundStatus, SessionRecord, SessionStatus
from providers.base import ProviderEvent, RefundUpdate
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import wait_for

S = SessionStatus
TOTAL = Decimal("140.76")


async def authorized_env(lifecycle_env: EnvFactory) -> tuple[Env, SessionRecord]:
    env = await lifecycle_env("stripe")
    created = await env.create(captureMethod="manual")
    record = await env.store.get_session(created["sessionId"])
    assert record is not None
    outcome = await env.lifecycle.handle_event(event(record, S.AUTHORIZED, "evt_auth"))
    assert outcome == "applied"
    moved = await env.store.get_session(record.sessionId)
    assert moved is not None
    assert moved.status is S.AUTHORIZED
    return env, moved


def event(
    record: SessionRecord,
    status: S | None,
    event_id: str,
    *,
    amount: Decimal | None = TOTAL,
    **extra: Any,
) -> ProviderEvent:
    return ProviderEvent(
        provider=record.provider,
        event_id=event_id,
        event_type="test.event",
        reference=record.providerSessionId,
        session_id=record.sessionId,
        status=status,
        amount=amount,
        currency=record.currency,
        payment_id="pi_test",
        **extra,
    )


async def current(env: Env, session_id: str) -> SessionRecord:
    record = await env.store.get_session(session_id)
    assert record is not None
    return record


async def test_an_authorization_records_when_it_lapses(lifecycle_env: EnvFactory) -> None:
    before = datetime.now(UTC)
    env, record = await authorized_env(lifecycle_env)
    lapses = record.authorizationExpiresAt
    assert lapses is not None
    assert before + timedelta(days=7) <= lapses <= datetime.now(UTC) + timedelta(days=7)
    assert record.amountCaptured == 0
    view = await env.read(record.sessionId)
    assert view["status"] == "AUTHORIZED"
    assert view["amountCaptured"] == "0.00"
    assert view["authorizationExpiresAt"] is not None
    # the same report again, or a later one, changes nothing
    assert await env.lifecycle.handle_event(event(record, S.AUTHORIZED, "evt_auth")) == "ignored"
    assert await env.lifecycle.handle_event(event(record, S.AUTHORIZED, "evt_2")) == "ignored"
    assert (await current(env, record.sessionId)).version == record.version
    # an authorization of another amount is a mismatch, recorded and not applied
    env2 = await lifecycle_env("stripe")
    created = await env2.create(key="k-other", captureMethod="manual")
    other = await current(env2, created["sessionId"])
    wrong = event(other, S.AUTHORIZED, "evt_wrong", amount=Decimal("1.00"))
    assert await env2.lifecycle.handle_event(wrong) == "amount_mismatch"
    assert (await current(env2, other.sessionId)).status is S.PENDING
    events = await wait_for(
        lambda: [
            e
            for e in env.receiver.of_session(record.sessionId)
            if e["data"]["payment_session"]["status"] == "AUTHORIZED"
        ]
    )
    session = events[0]["data"]["payment_session"]
    assert events[0]["type"] == "payment_session.updated"
    assert session["previousStatus"] == "PENDING"
    assert session["authorizationExpiresAt"] == view["authorizationExpiresAt"]


async def test_a_partial_capture_webhook_completes_with_the_captured_amount(
    lifecycle_env: EnvFactory,
) -> None:
    env, record = await authorized_env(lifecycle_env)
    record = await env.rewrite(record, captureRequested=Decimal("60.00"))
    # a capture of the total is not the capture asked: recorded, not applied
    assert await env.lifecycle.handle_event(event(record, S.COMPLETED, "evt_c0")) == (
        "amount_mismatch"
    )
    assert (await current(env, record.sessionId)).status is S.AUTHORIZED
    capture = event(record, S.COMPLETED, "evt_c1", amount=Decimal("60"), capture_id="cap_1")
    assert await env.lifecycle.handle_event(capture) == "applied"
    done = await current(env, record.sessionId)
    assert done.status is S.COMPLETED
    assert done.amountCaptured == Decimal("60")
    assert done.captureId == "cap_1"
    assert done.captureRequested is None
    # duplicates, and the provider's later report of the same capture: no change, no mismatch
    assert await env.lifecycle.handle_event(capture) == "ignored"
    again = event(record, S.COMPLETED, "evt_c2", amount=Decimal("60.00"))
    assert await env.lifecycle.handle_event(again) == "ignored"
    # an authorization report arriving late never moves it back
    assert await env.lifecycle.handle_event(event(record, S.AUTHORIZED, "evt_late")) == "ignored"
    final = await current(env, record.sessionId)
    assert final.version == done.version
    assert final.status is S.COMPLETED
    view = await env.read(record.sessionId)
    assert (view["amountCaptured"], view["amountRefunded"]) == ("60.00", "0.00")


async def test_a_failed_capture_leaves_the_session_authorized(lifecycle_env: EnvFactory) -> None:
    env, record = await authorized_env(lifecycle_env)
    record = await env.rewrite(record, captureRequested=TOTAL)
    failed = event(record, S.FAILED, "evt_f1", failure_reason="insufficient_balance")
    assert await env.lifecycle.handle_event(failed) == "applied"
    after = await current(env, record.sessionId)
    assert after.status is S.AUTHORIZED
    assert after.failureReason == "insufficient_balance"
    assert after.captureRequested is None
    # a duplicate changes nothing (and never fails the authorization)
    await env.lifecycle.handle_event(
        event(record, S.FAILED, "evt_f2", failure_reason="insufficient_balance")
    )
    assert (await current(env, record.sessionId)).version == after.version
    notes = await wait_for(
        lambda: [
            e
            for e in env.receiver.of_session(record.sessionId)
            if e["data"]["payment_session"]["failureReason"] == "insufficient_balance"
        ]
    )
    assert len(notes) == 1
    assert notes[0]["data"]["payment_session"]["status"] == "AUTHORIZED"
    # the provider's void afterwards still cancels it
    voided = event(record, S.CANCELLED, "evt_v", amount=None)
    assert await env.lifecycle.handle_event(voided) == "applied"
    assert (await current(env, record.sessionId)).status is S.CANCELLED


async def completed_with_refunds(env: Env, *refunds: Refund) -> SessionRecord:
    created = await env.create(key=f"k-{uuid.uuid4().hex}")
    record = await current(env, created["sessionId"])
    paid = await env.lifecycle.handle_event(event(record, S.COMPLETED, "evt_paid"))
    assert paid == "applied"
    record = await current(env, record.sessionId)
    return await env.rewrite(record, refunds=list(refunds))


def refund(refund_id: str, amount: str, provider_id: str | None = None) -> Refund:
    now = datetime.now(UTC)
    return Refund(
        refundId=refund_id,
        amount=Decimal(amount),
        currency="AUD",
        createdAt=now,
        updatedAt=now,
        providerRefundId=provider_id,
        submitted=provider_id is not None,
    )


def refund_event(record: SessionRecord, event_id: str, update: RefundUpdate) -> ProviderEvent:
    return event(record, None, event_id, amount=None, refund=update)


@pytest.mark.parametrize("kind", ["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_refund_webhooks_move_refunds_forward_only(
    lifecycle_env: EnvFactory, store_factory: Any, kind: str
) -> None:
    env = await lifecycle_env("stripe", store=await store_factory(kind))
    record = await completed_with_refunds(
        env, refund("r-1", "40.00"), refund("r-2", "10.00", provider_id="re_2")
    )
    assert record.amountCaptured == TOTAL
    assert record.refundable == Decimal("90.76")
    lifecycle = env.lifecycle
    # the provider's early "pending" names its own id: recorded, no status change
    pending = RefundUpdate(RefundStatus.PENDING, provider_refund_id="re_1", refund_id="r-1")
    assert await lifecycle.handle_event(refund_event(record, "e0", pending)) == "ignored"
    stored = (await current(env, record.sessionId)).refunds[0]
    assert (stored.providerRefundId, stored.status, stored.submitted) == (
        "re_1",
        RefundStatus.PENDING,
        True,
    )
    done = RefundUpdate(
        RefundStatus.SUCCEEDED, refund_id="r-1", amount=Decimal("40"), currency="aud"
    )
    assert await lifecycle.handle_event(refund_event(record, "e1", done)) == "applied"
    assert await lifecycle.handle_event(refund_event(record, "e1", done)) == "ignored"
    backwards = RefundUpdate(RefundStatus.FAILED, refund_id="r-1")
    assert await lifecycle.handle_event(refund_event(record, "e2", backwards)) == "ignored"
    # found by the provider's id alone; a refusal releases its amount
    failed = RefundUpdate(RefundStatus.FAILED, provider_refund_id="re_2", failure_reason="lost")
    assert await lifecycle.handle_event(refund_event(record, "e3", failed)) == "applied"
    # unknown refund, another amount: not applied
    unknown = RefundUpdate(RefundStatus.SUCCEEDED, refund_id="r-9", provider_refund_id="re_9")
    assert await lifecycle.handle_event(refund_event(record, "e4", unknown)) == "ignored"
    after = await current(env, record.sessionId)
    assert [(r.refundId, r.status) for r in after.refunds] == [
        ("r-1", RefundStatus.SUCCEEDED),
        ("r-2", RefundStatus.FAILED),
    ]
    assert after.refunds[1].failureReason == "lost"
    assert after.amount_refunded == Decimal("40.00")
    assert after.refundable == Decimal("100.76")
    assert after.status is S.COMPLETED
    view = await env.read(record.sessionId)
    assert view["amountRefunded"] == "40.00"
    updates = await wait_for(
        lambda: (
            len(
                [
                    e
                    for e in env.receiver.of_session(record.sessionId)
                    if e["type"] == "refund.updated"
                ]
            )
            >= 2
            and [
                e
                for e in env.receiver.of_session(record.sessionId)
                if e["type"] == "refund.updated"
            ]
        )
    )
    assert len(updates) == 2
    by_id = {e["data"]["refund"]["refundId"]: e for e in updates}
    first = by_id["r-1"]["data"]
    assert first["refund"]["status"] == "SUCCEEDED"
    assert first["refund"]["amount"] == "40.00"
    assert first["refund"]["providerRefundId"] == "re_1"
    assert first["payment_session"]["sessionId"] == record.sessionId
    assert by_id["r-2"]["data"]["refund"]["status"] == "FAILED"
    assert by_id["r-2"]["data"]["payment_session"]["amountRefunded"] == "40.00"


async def test_a_refund_event_of_another_amount_is_not_applied(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    record = await completed_with_refunds(env, refund("r-1", "40.00", provider_id="re_1"))
    wrong = RefundUpdate(RefundStatus.SUCCEEDED, refund_id="r-1", amount=Decimal("41.00"))
    assert await env.lifecycle.handle_event(refund_event(record, "e1", wrong)) == "ignored"
    other = record.model_copy(update={"provider": "adyen"})
    right = RefundUpdate(RefundStatus.SUCCEEDED, refund_id="r-1")
    foreign = refund_event(other, "e2", right)
    assert await env.lifecycle.handle_event(foreign) == "ignored"
    assert (await current(env, record.sessionId)).refunds[0].status is RefundStatus.PENDING


def warnings_counted(provider: str) -> float:
    labels = {"provider": provider}
    return REGISTRY.get_sample_value("gateway_authorizations_expiring_total", labels) or 0.0


async def test_the_merchant_is_warned_once_before_an_authorization_lapses(
    lifecycle_env: EnvFactory,
) -> None:
    env, record = await authorized_env(lifecycle_env)
    counted = warnings_counted("stripe")
    # seven days away: nothing yet, however often the sweeper runs
    await env.store.schedule_expiry(record.sessionId, datetime.now(UTC).timestamp())
    await env.lifecycle.sweep_once()
    assert not (await current(env, record.sessionId)).authorizationExpiryNotified
    soon = datetime.now(UTC) + timedelta(hours=3)
    record = await env.rewrite(
        await current(env, record.sessionId),
        authorizationExpiresAt=soon,
        expires_at=datetime.now(UTC).timestamp(),
    )
    notes = await wait_for(
        lambda: [
            e
            for e in env.receiver.of_session(record.sessionId)
            if e["type"] == "payment_session.authorization_expiring"
        ]
    )
    assert len(notes) == 1
    session = notes[0]["data"]["payment_session"]
    assert session["status"] == "AUTHORIZED"
    assert session["authorizationExpiresAt"] is not None
    assert warnings_counted("stripe") == counted + 1
    warned = await current(env, record.sessionId)
    assert warned.authorizationExpiryNotified
    await env.store.schedule_expiry(record.sessionId, datetime.now(UTC).timestamp())
    await env.lifecycle.sweep_once()
    assert (await current(env, record.sessionId)).version == warned.version
    assert warnings_counted("stripe") == counted + 1
