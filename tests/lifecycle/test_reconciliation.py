"""Provider verdicts are reconciled against the session: a signed webhook or capture answer
whose amount or currency is not the session's never completes it. The mismatch is recorded on
the session (GET), counted, and the merchant is notified; the order stays held.

Webhooks are the sandbox's genuine ones, altered and signed again with the provider's secret
(what a provider that charged another amount would send); PayPal's capture answer carries the
amount the sandbox order was changed to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import REGISTRY

from gateway.settings import SANDBOX_SECRETS
from providers.sandbox.paypal_api import send_event
from providers.sandbox.state import FaultSettings
from providers.stripe.webhooks import sign_payload
from tests.conftest import StoreFactory
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import payment_counts, wait_for
from tests.lifecycle.test_order_guard import another_attempt
from tests.lifecycle.test_paypal_capture import approval, pp_of
from tests.lifecycle.test_webhook_signatures import _resign, deliver, paid
from tests.providers.hosted_inputs import press


def mismatches(provider: str, source: str) -> float:
    labels = {"provider": provider, "source": source}
    return REGISTRY.get_sample_value("gateway_amount_mismatches_total", labels) or 0.0


async def notified_mismatch(env: Env, session_id: str) -> dict[str, Any]:
    """The merchant's ``payment_session.updated`` that reports the mismatch."""
    events = await wait_for(
        lambda: [
            e
            for e in env.receiver.of_session(session_id)
            if e["data"]["payment_session"]["amountMismatch"] is not None
        ]
    )
    assert len(events) == 1
    event: dict[str, Any] = events[0]
    assert event["type"] == "payment_session.updated"
    return event


def _stripe(body: bytes, mutate: Callable[[dict[str, Any]], None]) -> tuple[bytes, dict[str, str]]:
    event = orjson.loads(body)
    event["id"] = f"{event['id']}_altered"
    mutate(event["data"]["object"])
    raw = orjson.dumps(event)
    now = int(time.time())
    secret = SANDBOX_SECRETS["stripe"]["webhook_secret"]
    signature = f"t={now},v1={sign_payload(secret, now, raw)}"
    return raw, {"Content-Type": "application/json", "Stripe-Signature": signature}


def _more(obj: dict[str, Any]) -> None:
    obj["amount_total"] += 1


def _other_currency(obj: dict[str, Any]) -> None:
    obj["currency"] = "nzd"


def _no_amount(obj: dict[str, Any]) -> None:
    obj["amount_total"] = None


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize(
    ("mutate", "amount", "currency"),
    [(_more, "140.77", "AUD"), (_other_currency, "140.76", "NZD"), (_no_amount, None, None)],
    ids=["amount", "currency", "missing"],
)
async def test_stripe_success_of_another_amount_never_completes(
    lifecycle_env: EnvFactory,
    store_factory: StoreFactory,
    kind: str,
    mutate: Callable[[dict[str, Any]], None],
    amount: str | None,
    currency: str | None,
) -> None:
    env = await lifecycle_env("stripe", sink=True, store=await store_factory(kind))
    session_id, [call] = await paid(env)
    before = mismatches("stripe", "webhook")
    body, hdrs = _stripe(call.body, mutate)
    assert await deliver(env, "stripe", body, hdrs) == (200, b'{"received":true}')
    view = await env.read(session_id)
    assert view["status"] == "PENDING"
    assert [t["status"] for t in view["transitions"]] == ["PENDING"]
    found = view["amountMismatch"]
    assert found["provider"] == "stripe"
    assert found["source"] == "webhook"
    assert found["eventType"] == "checkout.session.completed"
    assert found["eventId"] == orjson.loads(body)["id"]
    assert found["reportedStatus"] == "COMPLETED"
    assert (found["amount"], found["currency"]) == (amount, currency)
    assert mismatches("stripe", "webhook") == before + 1
    event = await notified_mismatch(env, session_id)
    payload = event["data"]["payment_session"]
    assert (payload["status"], payload["previousStatus"]) == ("PENDING", "PENDING")
    assert payload["amountMismatch"] == found
    assert await payment_counts(env, "stripe") == (0.0, 0.0)  # no success for routing

    # the same altered event again is a duplicate: recorded, counted and notified once
    assert (await deliver(env, "stripe", body, hdrs))[0] == 200
    assert mismatches("stripe", "webhook") == before + 1
    # the order stays held: money of an amount nobody agreed to may have moved
    status, answer = await another_attempt(env, "mismatch-again")
    assert status == 409, answer

    # the genuine verdict, of the session's amount, completes it
    assert (await deliver(env, "stripe", call.body, call.headers))[0] == 200
    view = await env.read(session_id)
    assert view["status"] == "COMPLETED"
    assert view["amountMismatch"] == found  # the record of the mismatch stays


async def set_skew(env: Env, provider: str, skew: int) -> None:
    """The sandbox's ``chargeSkew`` fault, through its admin API."""
    url = str(env.sandbox.make_url("/sandbox/admin/faults"))
    async with aiohttp.ClientSession() as http:
        body = {"provider": provider, "chargeSkew": skew}
        async with http.post(url, json=body) as answer:
            assert answer.status == 200, await answer.text()


async def test_adyen_authorisation_of_another_amount_never_completes(
    lifecycle_env: EnvFactory,
) -> None:
    """Adyen charges 1 cent less than the session asked for and says so in its signed
    AUTHORISATION: the session is not completed."""
    env = await lifecycle_env("adyen", sink=True)
    await set_skew(env, "adyen", -1)
    session_id, [call] = await paid(env)
    item = orjson.loads(call.body)["notificationItems"][0]["NotificationRequestItem"]
    assert item["amount"] == {"value": 14075, "currency": "AUD"}
    assert await deliver(env, "adyen", call.body, call.headers) == (200, b"[accepted]")
    view = await env.read(session_id)
    assert view["status"] == "PENDING"
    found = view["amountMismatch"]
    assert (found["amount"], found["currency"]) == ("140.75", "AUD")
    assert (found["eventType"], found["reportedStatus"]) == ("AUTHORISATION", "COMPLETED")
    assert view["paymentId"] is None
    await notified_mismatch(env, session_id)


async def test_adyen_notification_in_another_currency_never_completes(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("adyen", sink=True)
    session_id, [call] = await paid(env)
    key = SANDBOX_SECRETS["adyen"]["hmac_key"]

    def in_nzd(item: dict[str, Any]) -> None:
        item["amount"]["currency"] = "NZD"

    body = _resign(call.body, in_nzd, key)
    assert await deliver(env, "adyen", body, call.headers) == (200, b"[accepted]")
    view = await env.read(session_id)
    assert view["status"] == "PENDING"
    assert (view["amountMismatch"]["amount"], view["amountMismatch"]["currency"]) == (
        "140.76",
        "NZD",
    )


async def test_paypal_capture_answer_of_another_amount_never_completes(
    lifecycle_env: EnvFactory,
) -> None:
    """The approval matched and the gateway captured, but PayPal's capture answer reports
    another amount: the session stays PROCESSING, the capture is not made again."""
    env = await lifecycle_env("paypal", sink=True)
    await set_skew(env, "paypal", -12669)  # PayPal will capture 14.07 instead of 140.76
    session_id, _, approved = await approval(env)
    before = mismatches("paypal", "capture")
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    event = await notified_mismatch(env, session_id)
    assert event["data"]["payment_session"]["status"] == "PROCESSING"
    view = await env.read(session_id)
    assert view["status"] == "PROCESSING"
    found = view["amountMismatch"]
    assert (found["source"], found["amount"], found["currency"]) == ("capture", "14.07", "AUD")
    assert found["reportedStatus"] == "COMPLETED"
    assert mismatches("paypal", "capture") == before + 1
    record = await env.store.get_session(session_id)
    assert record is not None
    assert record.pendingCompletion is None
    await asyncio.sleep(0.3)
    assert len(pp_of(env).completions) == 1  # not captured again
    # PayPal's own capture webhook reports the same amount: still not COMPLETED
    sink = env.sink
    assert sink is not None
    await wait_for(lambda: len(sink.calls) >= 2)
    capture_hook = sink.calls[1]
    assert (await deliver(env, "paypal", capture_hook.body, capture_hook.headers))[0] == 200
    view = await env.read(session_id)
    assert view["status"] == "PROCESSING"
    assert view["amountMismatch"]["source"] == "webhook"


async def test_paypal_approval_of_another_amount_is_never_captured(
    lifecycle_env: EnvFactory,
) -> None:
    """PayPal signs an approval of an order of another amount: nothing is captured."""
    env = await lifecycle_env("paypal", sink=True)
    session_id, order_id, approved = await approval(env)
    resource = orjson.loads(approved.body)["resource"]
    assert resource["purchase_units"][0]["amount"]["value"] == "140.76"
    resource["purchase_units"][0]["amount"]["value"] = "1.00"
    state = env.sandbox_state
    await send_event(
        state,
        state.sessions["paypal"][order_id],
        "CHECKOUT.ORDER.APPROVED",
        "checkout-order",
        resource,
    )
    assert env.sink is not None
    altered = env.sink.calls[1]
    assert (await deliver(env, "paypal", altered.body, altered.headers))[0] == 200
    await notified_mismatch(env, session_id)
    await asyncio.sleep(0.3)
    view = await env.read(session_id)
    assert view["status"] == "PENDING"
    found = view["amountMismatch"]
    assert (found["eventType"], found["reportedStatus"]) == (
        "CHECKOUT.ORDER.APPROVED",
        "PROCESSING",
    )
    assert (found["amount"], found["currency"]) == ("1.00", "AUD")
    assert pp_of(env).completions == []


async def test_stripe_charging_another_amount_is_caught_end_to_end(
    lifecycle_env: EnvFactory,
) -> None:
    """The sandbox's Stripe charges 5 cents more and sends its own signed webhook straight to
    the gateway: the session is not completed and the payer's redirect still works."""
    env = await lifecycle_env("stripe")
    await set_skew(env, "stripe", 5)
    created = await env.create("skewed-1")
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    event = await notified_mismatch(env, created["sessionId"])
    found = event["data"]["payment_session"]["amountMismatch"]
    assert (found["amount"], found["currency"], found["source"]) == ("140.81", "AUD", "webhook")
    assert (await env.read(created["sessionId"]))["status"] == "PENDING"


def test_charge_skew_fault_is_validated() -> None:
    assert FaultSettings.from_json({"chargeSkew": -3}).charge_skew == -3
    assert FaultSettings.from_json({"chargeSkew": 7}).to_json()["chargeSkew"] == 7
    assert FaultSettings(charge_skew=1).active
    for bad in ("1", 1.5, True, 10**7):
        with pytest.raises(ValueError, match="chargeSkew"):
            FaultSettings.from_json({"chargeSkew": bad})
