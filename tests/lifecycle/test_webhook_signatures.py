"""``POST /api/v1/webhooks/{provider}`` for every provider: valid, tampered and stale signatures,
duplicates, out-of-order events and events for unknown sessions.

The sandbox sends its genuine webhooks to a recording sink; each test replays them (or altered
copies) to the gateway itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest

from gateway.appkeys import ADAPTERS, STORE
from gateway.settings import SANDBOX_SECRETS
from providers.adyen.transformers import hmac_signature
from providers.base import CAPTURE, ApprovalCompleter, WebhookVerificationError
from providers.sandbox.paypal_api import paypal_sandbox
from providers.stripe.webhooks import sign_payload, verify_signature
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import read_when, wait_for
from tests.providers.hosted_inputs import Received, press

_HOP = {"host", "content-length", "transfer-encoding", "connection"}


async def deliver(env: Env, provider: str, body: bytes, hdrs: dict[str, str]) -> tuple[int, bytes]:
    clean = {k: v for k, v in hdrs.items() if k.lower() not in _HOP}
    response = await env.client.post(f"/api/v1/webhooks/{provider}", data=body, headers=clean)
    return response.status, await response.read()


async def paid(env: Env, **changes: Any) -> tuple[str, list[Received]]:
    created = await env.create(**changes)
    status, _ = await press(created["checkoutUrl"], "pay")
    assert status == 303
    assert env.sink is not None
    calls = list(env.sink.calls)
    assert calls
    assert (await env.read(created["sessionId"]))["status"] == "PENDING"  # nothing reached us
    return created["sessionId"], calls


async def status_of(env: Env, session_id: str) -> tuple[str, int]:
    view = await env.read(session_id)
    return view["status"], view["version"]


# Stripe ---------------------------------------------------------------------------------------


def _stripe_header(body: bytes, timestamp: int, secret: str | None = None) -> dict[str, str]:
    secret = secret or SANDBOX_SECRETS["stripe"]["webhook_secret"]
    return {
        "Content-Type": "application/json",
        "Stripe-Signature": f"t={timestamp},v1={sign_payload(secret, timestamp, body)}",
    }


async def test_stripe_valid_tampered_and_stale(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe", sink=True)
    session_id, [call] = await paid(env)
    tampered = call.body.replace(b'"payment_status":"paid"', b'"payment_status":"paidx"')
    assert tampered != call.body
    assert (await deliver(env, "stripe", tampered, call.headers))[0] == 400
    stale = _stripe_header(call.body, int(time.time()) - 600)
    assert (await deliver(env, "stripe", call.body, stale))[0] == 400
    foreign = _stripe_header(call.body, int(time.time()), "whsec_someone_else")
    assert (await deliver(env, "stripe", call.body, foreign))[0] == 400
    assert (await deliver(env, "stripe", call.body, {}))[0] == 400
    assert await status_of(env, session_id) == ("PENDING", 0)

    assert await deliver(env, "stripe", call.body, call.headers) == (200, b'{"received":true}')
    assert await status_of(env, session_id) == ("COMPLETED", 1)
    # a retry of the same event (even re-signed later) changes nothing
    fresh = _stripe_header(call.body, int(time.time()))
    assert (await deliver(env, "stripe", call.body, fresh))[0] == 200
    assert await status_of(env, session_id) == ("COMPLETED", 1)


async def test_stripe_event_for_an_unknown_session_is_acknowledged(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe", sink=True)
    _, [call] = await paid(env)
    event = orjson.loads(call.body)
    event["id"] = "evt_unknown_1"
    event["data"]["object"]["metadata"]["gateway_session_id"] = str(uuid.uuid4())
    body = orjson.dumps(event)
    status, answer = await deliver(env, "stripe", body, _stripe_header(body, int(time.time())))
    assert (status, answer) == (200, b'{"received":true}')


async def test_unknown_provider_is_404(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    assert (await deliver(env, "acme", b"{}", {"Content-Type": "application/json"}))[0] == 404


# Adyen ----------------------------------------------------------------------------------------


def _resign(body: bytes, mutate: Any, key: str | None = None) -> bytes:
    payload = orjson.loads(body)
    item = payload["notificationItems"][0]["NotificationRequestItem"]
    mutate(item)
    item["additionalData"].pop("hmacSignature", None)
    if key is not None:
        item["additionalData"]["hmacSignature"] = hmac_signature(item, key)
    return orjson.dumps(payload)


async def test_adyen_valid_tampered_and_stale(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("adyen", sink=True)
    session_id, [call] = await paid(env)
    key = SANDBOX_SECRETS["adyen"]["hmac_key"]
    original = orjson.loads(call.body)["notificationItems"][0]["NotificationRequestItem"]

    def keep_signature_change_amount(item: dict[str, Any]) -> None:
        item["amount"]["value"] = 1
        item["additionalData"]["hmacSignature"] = original["additionalData"]["hmacSignature"]

    tampered = orjson.loads(call.body)
    tampered_item = tampered["notificationItems"][0]["NotificationRequestItem"]
    keep_signature_change_amount(tampered_item)
    assert (await deliver(env, "adyen", orjson.dumps(tampered), call.headers))[0] == 400
    # signed with a key that was rotated out (what an old, replayed notification carries)
    old_key = "00" * 32
    rotated = _resign(call.body, lambda item: None, old_key)
    assert (await deliver(env, "adyen", rotated, call.headers))[0] == 400
    unsigned = _resign(call.body, lambda item: None)
    assert (await deliver(env, "adyen", unsigned, call.headers))[0] == 400
    assert await status_of(env, session_id) == ("PENDING", 0)

    assert await deliver(env, "adyen", call.body, call.headers) == (200, b"[accepted]")
    assert await status_of(env, session_id) == ("COMPLETED", 1)
    assert await deliver(env, "adyen", call.body, call.headers) == (200, b"[accepted]")
    # the same pspReference under a freshly computed (valid) signature is still a duplicate
    again = _resign(call.body, lambda item: None, key)
    assert (await deliver(env, "adyen", again, call.headers))[0] == 200
    assert await status_of(env, session_id) == ("COMPLETED", 1)


# PayPal ---------------------------------------------------------------------------------------


async def captured_elsewhere(env: Env, approved: Received) -> Received:
    """Capture the approved order directly (not through the gateway) and return PayPal's
    signed PAYMENT.CAPTURE.COMPLETED webhook, as the sink received it."""
    assert env.sink is not None
    order_id = orjson.loads(approved.body)["resource"]["id"]
    adapter = env.client.app[ADAPTERS]["paypal"]
    assert isinstance(adapter, ApprovalCompleter)
    await adapter.complete_approved(order_id, intent=CAPTURE, idempotency_key="test", timeout=5)
    sink = env.sink
    await wait_for(lambda: len(sink.calls) >= 2)
    return sink.calls[1]


async def test_paypal_valid_tampered_and_stale(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("paypal", sink=True)
    session_id, [approved] = await paid(env, paymentMethod="paypal")
    captured = await captured_elsewhere(env, approved)
    event = orjson.loads(captured.body)
    assert event["event_type"] == "PAYMENT.CAPTURE.COMPLETED"
    event["resource"]["amount"]["value"] = "0.01"
    assert (await deliver(env, "paypal", orjson.dumps(event), captured.headers))[0] == 400
    stale = {**captured.headers, "PAYPAL-TRANSMISSION-TIME": "2020-01-01T00:00:00Z"}
    assert (await deliver(env, "paypal", captured.body, stale))[0] == 400
    swapped = {**captured.headers}
    swapped["PAYPAL-TRANSMISSION-SIG"] = approved.headers["PAYPAL-TRANSMISSION-SIG"]
    assert (await deliver(env, "paypal", captured.body, swapped))[0] == 400
    assert await status_of(env, session_id) == ("PENDING", 0)

    # out of order: the capture arrives before the approval
    assert await deliver(env, "paypal", captured.body, captured.headers) == (200, b"")
    assert await status_of(env, session_id) == ("COMPLETED", 1)
    assert await deliver(env, "paypal", approved.body, approved.headers) == (200, b"")
    assert await status_of(env, session_id) == ("COMPLETED", 1)
    assert await deliver(env, "paypal", captured.body, captured.headers) == (200, b"")
    view = await env.read(session_id)
    assert [t["status"] for t in view["transitions"]] == ["PENDING", "COMPLETED"]
    await asyncio.sleep(0.3)
    # the late approval of a paid session is not captured a second time
    assert len(paypal_sandbox(env.sandbox_state).completions) == 1
    assert env.sink is not None
    assert len(env.sink.calls) == 2


async def test_in_order_events_walk_through_processing(lifecycle_env: EnvFactory) -> None:
    """The approval moves the session to PROCESSING; the gateway's capture completes it, and
    PayPal's capture webhook that follows is then a duplicate in effect."""
    env = await lifecycle_env("paypal", sink=True)
    session_id, [approved] = await paid(env, paymentMethod="paypal")
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    view = await read_when(env, session_id, "COMPLETED")
    assert [t["status"] for t in view["transitions"]] == ["PENDING", "PROCESSING", "COMPLETED"]
    assert [t["source"] for t in view["transitions"][1:]] == ["webhook:paypal", "gateway:capture"]
    assert env.sink is not None
    sink = env.sink
    await wait_for(lambda: len(sink.calls) >= 2)
    captured = sink.calls[1]
    assert orjson.loads(captured.body)["event_type"] == "PAYMENT.CAPTURE.COMPLETED"
    assert (await deliver(env, "paypal", captured.body, captured.headers))[0] == 200
    assert await status_of(env, session_id) == ("COMPLETED", view["version"])


async def test_an_event_whose_processor_died_is_applied_on_the_resend(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe", sink=True)
    session_id, [call] = await paid(env)
    event_id = orjson.loads(call.body)["id"]
    store = env.client.app[STORE]
    # another process took the event and died before applying it (its lease runs out)
    assert await store.claim_event("stripe", event_id, lease_s=0.5) == "new"
    status, _ = await deliver(env, "stripe", call.body, call.headers)
    assert status == 503  # not acknowledged: the provider keeps resending
    assert await status_of(env, session_id) == ("PENDING", 0)
    await asyncio.sleep(0.6)
    assert await deliver(env, "stripe", call.body, call.headers) == (200, b'{"received":true}')
    assert await status_of(env, session_id) == ("COMPLETED", 1)
    assert await store.claim_event("stripe", event_id, lease_s=60) == "done"


# Malformed signature headers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("t={now},v1=\u00e9", "malformed v1 signature"),  # compare_digest: TypeError before
        ("t={now},v1=\udcff\udcfe", "malformed v1 signature"),  # undecodable header bytes
        ("t=" + "9" * 400 + ",v1=abc", "malformed timestamp"),  # OverflowError before
        ("t=" + "9" * 5000 + ",v1=abc", "malformed timestamp"),
        ("t=" + "\u0661" * 10 + ",v1=abc", "malformed timestamp"),  # int() takes these digits
        ("t=-5,v1=abc", "malformed timestamp"),
        ("t={now}", "signature header lacks a v1 signature"),
        ("v1=abc", "signature header lacks a timestamp"),
    ],
)
def test_a_malformed_stripe_signature_header_is_a_verification_error(
    header: str, reason: str
) -> None:
    now = int(time.time())
    with pytest.raises(WebhookVerificationError) as refused:
        verify_signature("whsec_x", header.format(now=now), b"{}", now=now)
    assert refused.value.reason == reason


def test_a_well_formed_stripe_signature_still_verifies() -> None:
    now = int(time.time())
    good = sign_payload("whsec_x", now, b"{}")
    header = f"t={now}, v1=00ff, v1={good}, v0=zz"
    assert verify_signature("whsec_x", header, b"{}", now=now) == now
