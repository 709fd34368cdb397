"""A payment is never swallowed and an order is paid at most once, around a merchant's cancel.

Adyen and PayPal have no call to cancel their hosted session: a cancel at the gateway leaves
the provider's page open. A payment that lands afterwards is recorded (money overrides the
cancel) and the merchant is notified; until the provider-side expiry the order stays held.
Concurrent cancels give one 200; a cancel that loses a race to a payment leaves no trace.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson
import pytest

from gateway.domain.session import CancelClaim, utcnow
from providers.sandbox.state import FaultSettings
from tests.conftest import StoreFactory
from tests.lifecycle.conftest import EnvFactory
from tests.lifecycle.test_cancel_expiry import backdate, cancel
from tests.lifecycle.test_loop import read_when, settled, wait_for
from tests.lifecycle.test_order_guard import another_attempt
from tests.lifecycle.test_paypal_capture import approval, pp_of
from tests.lifecycle.test_webhook_signatures import captured_elsewhere, deliver
from tests.providers.hosted_inputs import press


def statuses(view: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["status"], t["source"]) for t in view["transitions"]]


async def test_adyen_payment_after_cancel_is_recorded_notified_and_the_order_held(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("adyen")
    created = await env.create("after-1")
    session_id = created["sessionId"]
    response = await cancel(env, session_id, {"cancellationReason": "abandoned"})
    assert response.status == 200, await response.text()
    view = await response.json()
    assert (view["status"], view["cancellationReason"]) == ("CANCELLED", "abandoned")
    assert view["payableUntil"] == created["expiresAt"]  # Adyen's page stays open until then

    # the order is held while Adyen's page can still take the money
    status, body = await another_attempt(env, "after-2")
    assert status == 409, body
    assert body["sessionId"] == session_id

    # the payer pays on the page the gateway could not close
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    view = await read_when(env, session_id, "COMPLETED")
    assert statuses(view) == [
        ("PENDING", "gateway"),
        ("CANCELLED", "merchant"),
        ("COMPLETED", "webhook:adyen"),
    ]
    assert view["paymentId"]
    assert view["transitions"][-1]["eventId"]
    assert view["cancellationReason"] is None  # no leftover on a session that ended paid
    assert view["payableUntil"] is None
    events = await settled(env, session_id, 3)
    last = max(events, key=lambda e: e["data"]["payment_session"]["version"])
    assert last["type"] == "payment_session.updated"
    payload = last["data"]["payment_session"]
    assert (payload["status"], payload["previousStatus"]) == ("COMPLETED", "CANCELLED")
    assert payload["paymentId"] == view["paymentId"]

    # paid: held for good
    status, body = await another_attempt(env, "after-3")
    assert status == 409, body


async def test_adyen_order_is_released_once_the_cancelled_page_lapses(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("adyen")
    created = await env.create("lapse-1")
    assert (await cancel(env, created["sessionId"])).status == 200
    record = await env.store.get_session(created["sessionId"])
    assert record is not None
    assert record.payableUntil is not None
    past = utcnow() - timedelta(seconds=1)
    await env.rewrite(record, payableUntil=past, expiresAt=past, expires_at=past.timestamp())
    status, body = await another_attempt(env, "lapse-2")
    assert status == 201, body


async def test_adyen_payment_after_the_gateway_expired_the_session_is_recorded(
    lifecycle_env: EnvFactory,
) -> None:
    """A payment started just before the expiry lands after it: money overrides the expiry."""
    env = await lifecycle_env("adyen")
    created = await env.create("late-1")
    session_id = created["sessionId"]
    await backdate(env, session_id)  # the gateway's clock passed expiresAt; Adyen's page is open
    assert (await env.read(session_id))["status"] == "EXPIRED"
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    view = await read_when(env, session_id, "COMPLETED")
    assert statuses(view) == [
        ("PENDING", "gateway"),
        ("EXPIRED", "expiry"),
        ("COMPLETED", "webhook:adyen"),
    ]
    events = await settled(env, session_id, 3)
    payload = max(events, key=lambda e: e["data"]["payment_session"]["version"])["data"]
    assert (payload["payment_session"]["status"], payload["payment_session"]["previousStatus"]) == (
        "COMPLETED",
        "EXPIRED",
    )
    status, body = await another_attempt(env, "late-2")
    assert status == 409, body


async def test_paypal_approval_after_cancel_moves_no_money_and_holds_nothing(
    lifecycle_env: EnvFactory,
) -> None:
    """PayPal takes no money on the payer's approval: the gateway never captures a cancelled
    session, so the order is free at once."""
    env = await lifecycle_env("paypal", sink=True)
    session_id, _, approved = await approval(env)
    response = await cancel(env, session_id)
    assert response.status == 200
    assert (await response.json())["payableUntil"] is None
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    await asyncio.sleep(0.3)
    view = await env.read(session_id)
    assert view["status"] == "CANCELLED"
    assert pp_of(env).completions == []
    status, body = await another_attempt(env, "paypal-again")
    assert status == 201, body


async def test_paypal_capture_after_cancel_is_recorded(lifecycle_env: EnvFactory) -> None:
    """Money taken at PayPal anyway (captured outside the gateway) is the provider's word."""
    env = await lifecycle_env("paypal", sink=True)
    session_id, _, approved = await approval(env)
    assert (await cancel(env, session_id)).status == 200
    captured = await captured_elsewhere(env, approved)
    assert orjson.loads(captured.body)["event_type"] == "PAYMENT.CAPTURE.COMPLETED"
    assert (await deliver(env, "paypal", captured.body, captured.headers))[0] == 200
    view = await env.read(session_id)
    assert statuses(view) == [
        ("PENDING", "gateway"),
        ("CANCELLED", "merchant"),
        ("COMPLETED", "webhook:paypal"),
    ]
    assert view["paymentId"] == orjson.loads(captured.body)["resource"]["id"]
    assert view["cancellationReason"] is None


@pytest.mark.parametrize("provider", ["adyen", "stripe"])
@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_concurrent_cancels_answer_one_200_and_the_rest_409(
    lifecycle_env: EnvFactory, store_factory: StoreFactory, provider: str, kind: str
) -> None:
    env = await lifecycle_env(provider, store=await store_factory(kind))
    created = await env.create("race-1")
    answers = await asyncio.gather(*(cancel(env, created["sessionId"]) for _ in range(8)))
    codes = sorted(a.status for a in answers)
    assert codes == [200] + [409] * 7, codes
    bodies = [await a.json() for a in answers]
    assert all(
        b["error"] == "Conflict" for a, b in zip(answers, bodies, strict=True) if a.status == 409
    )
    view = await env.read(created["sessionId"])
    assert [t["status"] for t in view["transitions"]] == ["PENDING", "CANCELLED"]


async def test_a_cancel_that_loses_to_a_payment_leaves_no_trace(lifecycle_env: EnvFactory) -> None:
    """The payer pays while the cancel's call to Stripe is on its way: the cancel answers 409
    and the paid session carries no cancellationReason."""
    env = await lifecycle_env("stripe")
    created = await env.create("lose-1")
    session_id = created["sessionId"]
    env.sandbox_state.faults["stripe"] = FaultSettings(latency_ms=700)
    pending = asyncio.ensure_future(cancel(env, session_id))

    async def claimed() -> bool:
        record = await env.store.get_session(session_id)
        return record is not None and record.version >= 1

    deadline = asyncio.get_running_loop().time() + 3
    while not await claimed():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    await read_when(env, session_id, "COMPLETED")
    response = await pending
    assert response.status == 409, await response.text()
    view = await env.read(session_id)
    assert view["status"] == "COMPLETED"
    assert view["cancellationReason"] is None
    record = await env.store.get_session(session_id)
    assert record is not None
    assert record.cancelClaim is None
    await wait_for(lambda: env.receiver.of_session(session_id))
    for event in env.receiver.of_session(session_id):
        assert event["data"]["payment_session"]["cancellationReason"] is None


async def test_a_crashed_cancel_is_taken_over_after_its_claim_lapses(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("adyen")
    created = await env.create("crash-1")
    record = await env.store.get_session(created["sessionId"])
    assert record is not None
    live = CancelClaim(token="other", reason="duplicate", at=utcnow())
    record = await env.rewrite(record, cancelClaim=live)
    assert (await cancel(env, created["sessionId"])).status == 409  # in progress elsewhere
    stale = live.model_copy(update={"at": utcnow() - env.lifecycle.cancel_claim_ttl})
    await env.rewrite(record, cancelClaim=stale)
    response = await cancel(env, created["sessionId"])
    assert response.status == 200, await response.text()
    assert (await response.json())["cancellationReason"] == "requested_by_customer"
