"""PayPal's approval is completed by the gateway: the approval webhook moves the session to
PROCESSING and is answered, the gateway captures (or authorizes) the order, and the outcome is a
transition with a merchant notification and routing statistics like a webhook's. Retries of a
failing capture, duplicate approvals and a gateway that stops after answering the webhook.

The sandbox's webhooks go to a recording sink; each test delivers them to the gateway itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import unused_port

from gateway.app import create_app
from gateway.appkeys import SETTINGS
from providers.sandbox.paypal_api import PayPalSandbox, paypal_sandbox, send_event
from tests.api.conftest import headers
from tests.conftest import StoreFactory
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import payment_counts, read_when, settled, wait_for
from tests.lifecycle.test_webhook_signatures import deliver
from tests.providers.hosted_inputs import Received, press


def pp_of(env: Env) -> PayPalSandbox:
    return paypal_sandbox(env.sandbox_state)


async def approval(env: Env, action: str = "pay", **changes: Any) -> tuple[str, str, Received]:
    """(session id, order id, the signed CHECKOUT.ORDER.APPROVED call) after ``action``."""
    created = await env.create(paymentMethod="paypal", **changes)
    status, _ = await press(created["checkoutUrl"], action)
    assert status == 303
    assert env.sink is not None
    [call] = env.sink.calls
    assert orjson.loads(call.body)["event_type"] == "CHECKOUT.ORDER.APPROVED"
    assert pp_of(env).completions == []  # the payer's button moved no money
    order_id = orjson.loads(call.body)["resource"]["id"]
    assert (await env.read(created["sessionId"]))["providerSessionId"] == order_id
    return created["sessionId"], order_id, call


async def webhook_after(env: Env, index: int) -> Received:
    """The sink's ``index``-th call once it has arrived (PayPal's capture webhook)."""
    sink = env.sink
    assert sink is not None
    await wait_for(lambda: len(sink.calls) > index)
    return sink.calls[index]


async def test_approval_is_captured_notified_and_counted(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("paypal", sink=True)
    session_id, order_id, approved = await approval(env)
    assert await deliver(env, "paypal", approved.body, approved.headers) == (200, b"")
    view = await read_when(env, session_id, "COMPLETED")
    assert [(t["status"], t["source"]) for t in view["transitions"]] == [
        ("PENDING", "gateway"),
        ("PROCESSING", "webhook:paypal"),
        ("COMPLETED", "gateway:capture"),
    ]
    [made] = pp_of(env).completions
    assert (made.order_id, made.action, made.request_id) == (
        order_id,
        "capture",
        f"capture-{order_id}",
    )
    order = env.sandbox_state.sessions["paypal"][order_id].extra["order"]
    [capture] = order["purchase_units"][0]["payments"]["captures"]
    assert view["paymentId"] == capture["id"] == view["transitions"][-1]["eventId"]
    record = await env.store.get_session(session_id)
    assert record is not None
    assert record.pendingCompletion is None
    events = await settled(env, session_id, 3)
    payloads = [e["data"]["payment_session"] for e in events]
    assert [(p["status"], p["previousStatus"]) for p in payloads] == [
        ("PENDING", None),
        ("PROCESSING", "PENDING"),
        ("COMPLETED", "PROCESSING"),
    ]
    assert payloads[-1]["paymentId"] == capture["id"]
    assert await payment_counts(env, "paypal") == pytest.approx((1.0, 0.0), abs=1e-3)

    # PayPal's own webhook about that capture changes nothing and is not counted again
    captured = await webhook_after(env, 1)
    assert orjson.loads(captured.body)["event_type"] == "PAYMENT.CAPTURE.COMPLETED"
    assert await deliver(env, "paypal", captured.body, captured.headers) == (200, b"")
    assert (await env.read(session_id))["version"] == view["version"]
    await asyncio.sleep(0.2)
    assert len(env.receiver.of_session(session_id)) == 3
    assert await payment_counts(env, "paypal") == pytest.approx((1.0, 0.0), abs=1e-3)


async def test_manual_capture_is_authorized(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("paypal", sink=True)
    session_id, order_id, approved = await approval(env, captureMethod="manual")
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    # the money is held, not taken: AUTHORIZED until the merchant captures or voids it
    view = await read_when(env, session_id, "AUTHORIZED")
    assert view["transitions"][-1]["source"] == "gateway:authorize"
    assert view["captureMethod"] == "manual"
    [made] = pp_of(env).completions
    assert (made.action, made.status, made.request_id) == (
        "authorize",
        "CREATED",
        f"authorize-{order_id}",
    )
    hook = await webhook_after(env, 1)
    assert orjson.loads(hook.body)["event_type"] == "PAYMENT.AUTHORIZATION.CREATED"
    assert (await deliver(env, "paypal", hook.body, hook.headers))[0] == 200
    assert (await env.read(session_id))["version"] == view["version"]


async def test_a_declining_payer_fails_at_the_capture(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("paypal", sink=True)
    session_id, _, approved = await approval(env, "decline")
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    view = await read_when(env, session_id, "FAILED")
    assert view["transitions"][-1]["source"] == "gateway:capture"
    assert view["failureReason"] == "capture declined"
    assert await payment_counts(env, "paypal") == pytest.approx((0.0, 1.0), abs=1e-3)
    declined = await webhook_after(env, 1)
    assert orjson.loads(declined.body)["event_type"] == "PAYMENT.CAPTURE.DECLINED"
    assert (await deliver(env, "paypal", declined.body, declined.headers))[0] == 200
    assert (await env.read(session_id))["version"] == view["version"]
    assert await payment_counts(env, "paypal") == pytest.approx((0.0, 1.0), abs=1e-3)


async def test_a_failing_capture_is_retried_with_the_same_key(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("paypal", sink=True)
    session_id, order_id, approved = await approval(env)
    pp = pp_of(env)
    pp.fail_completions = 2  # PayPal answers 500 twice
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    await wait_for(lambda: pp.fail_completions == 1)
    record = await env.store.get_session(session_id)
    assert record is not None
    assert (record.status.value, record.pendingCompletion) == ("PROCESSING", "capture")
    view = await read_when(env, session_id, "COMPLETED", timeout=8)
    assert pp.fail_completions == 0
    [made] = pp.completions
    assert made.request_id == f"capture-{order_id}"
    assert view["transitions"][-1]["source"] == "gateway:capture"
    assert await payment_counts(env, "paypal") == pytest.approx((1.0, 0.0), abs=1e-3)


async def test_a_lost_capture_answer_is_replayed_not_captured_again(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("paypal", sink=True)
    session_id, _, approved = await approval(env)
    pp = pp_of(env)
    pp.lose_completion_answers = 1  # captured at PayPal, but the answer is a 500
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    view = await read_when(env, session_id, "COMPLETED", timeout=8)
    [made] = pp.completions
    assert view["paymentId"] == view["transitions"][-1]["eventId"]
    assert made.status == "COMPLETED"


async def test_duplicate_approvals_capture_once(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("paypal", sink=True)
    session_id, order_id, approved = await approval(env)
    pp = pp_of(env)
    pp.fail_completions = 1  # keep the first try from settling it at once
    # PayPal re-sends the approval under a new event id, too
    state = env.sandbox_state
    await send_event(
        state,
        state.sessions["paypal"][order_id],
        "CHECKOUT.ORDER.APPROVED",
        "checkout-order",
        orjson.loads(approved.body)["resource"],
    )
    assert env.sink is not None
    again = env.sink.calls[1]
    assert orjson.loads(again.body)["id"] != orjson.loads(approved.body)["id"]
    answers = await asyncio.gather(
        deliver(env, "paypal", approved.body, approved.headers),
        deliver(env, "paypal", approved.body, approved.headers),
        deliver(env, "paypal", again.body, again.headers),
    )
    assert [status for status, _ in answers] == [200, 200, 200]
    view = await read_when(env, session_id, "COMPLETED", timeout=8)
    assert [t["status"] for t in view["transitions"]] == ["PENDING", "PROCESSING", "COMPLETED"]
    await asyncio.sleep(0.3)
    assert len(pp.completions) == 1
    assert (await env.read(session_id))["version"] == view["version"]


async def test_an_approval_after_a_cancel_is_never_captured(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("paypal", sink=True)
    session_id, _, approved = await approval(env)
    response = await env.client.post(
        f"/api/v1/sessions/{session_id}/cancel",
        json={"cancellationReason": "requested_by_customer"},
        headers=headers(None),
    )
    assert response.status == 200, await response.text()
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    await asyncio.sleep(0.3)
    assert (await env.read(session_id))["status"] == "CANCELLED"
    assert pp_of(env).completions == []


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_capture_owed_by_a_stopped_gateway_is_made_by_the_next(
    lifecycle_env: EnvFactory,
    store_factory: StoreFactory,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """The webhook was answered, then the gateway stopped before its capture call: the owed
    capture is in the store, and a gateway process (after the grace) makes it."""
    first_store = await store_factory(kind)
    env = await lifecycle_env(
        "paypal",
        sink=True,
        store=first_store,
        provider_timeout_seconds=0.5,  # grace: 2 x 0.5 + 1 = 2 s
        request_deadline_seconds=2.0,
    )
    session_id, order_id, approved = await approval(env)
    monkeypatch.setattr(env.lifecycle.completions, "start", lambda session_id: None)
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    record = await env.store.get_session(session_id)
    assert record is not None
    assert (record.status.value, record.pendingCompletion) == ("PROCESSING", "capture")
    if kind == "memory":  # the same process's sweeper takes over once the grace passes
        view = await read_when(env, session_id, "COMPLETED", timeout=6)
    else:  # the gateway stops; the next one, on the same Redis, makes the call
        settings = env.client.app[SETTINGS]
        await env.client.close()
        assert pp_of(env).completions == []
        second = await aiohttp_client(
            create_app(settings, store=await store_factory("redis")),
            server_kwargs={"port": unused_port()},
        )
        env = Env(second, env.sandbox, env.receiver, env.sink, env.base_url)
        view = await read_when(env, session_id, "COMPLETED", timeout=6)
    assert view["transitions"][-1]["source"] == "gateway:capture"
    [made] = pp_of(env).completions
    assert made.request_id == f"capture-{order_id}"
    if kind == "redis":
        await env.client.close()  # before its store is closed
