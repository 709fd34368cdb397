"""Capture, void and refunds through the API, against the real sandbox over real sockets: the
customer pays a manual-capture session on the sandbox page (AUTHORIZED), the merchant captures
(all or part), voids, refunds; replays, mismatches, races and the provider's webhooks."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.appkeys import ADAPTERS
from gateway.payment_calls import payment_reference
from providers.base import RefundInput
from providers.sandbox.stripe_payments import ledger
from tests.api.conftest import headers
from tests.conftest import StoreFactory
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import PROVIDERS, read_when, wait_for
from tests.providers.hosted_inputs import press

TOTAL = Decimal("140.76")
#: the providers whose adapters capture, void and refund (Adyen: see its own tests below)
CAPTURING = ["stripe", "paypal"]
#: the record stores the money races run on
STORES = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


async def call(
    env: Env,
    path: str,
    body: Any = None,
    *,
    key: str | None = "op-1",
    scopes: list[str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    data = b"" if body is None else json.dumps(body).encode()
    response = await env.client.request(
        method, path, data=data, headers=headers(key, scopes=scopes)
    )
    return response.status, dict(response.headers), await response.read()


async def paid(env: Env, provider: str, key: str, *, manual: bool, **extra: Any) -> str:
    """A session the customer paid on the sandbox page: AUTHORIZED (manual) or COMPLETED."""
    changes: dict[str, Any] = {**PROVIDERS[provider], **extra}
    if manual:
        changes["captureMethod"] = "manual"
    created = await env.create(key=key, **changes)
    status, _ = await press(created["checkoutUrl"], "pay")
    assert status == 303
    session_id: str = created["sessionId"]
    await read_when(env, session_id, "AUTHORIZED" if manual else "COMPLETED")
    return session_id


def counted(operation: str, provider: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "gateway_payment_operations":
            continue
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels.get("operation") == operation
                and labels.get("provider") == provider
            ):
                total += sample.value
    return total


# capture ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", CAPTURING)
async def test_full_capture_completes_and_replays(lifecycle_env: EnvFactory, provider: str) -> None:
    env = await lifecycle_env(provider)
    session_id = await paid(env, provider, "k1", manual=True)
    path = f"/api/v1/sessions/{session_id}/capture"
    status, hdrs, body = await call(env, path, key="cap-1")
    assert status == 200, body
    view = json.loads(body)
    assert view["status"] == "COMPLETED"
    assert view["amountCaptured"] == "140.76"
    last = view["transitions"][-1]
    assert (last["source"], last["confirmedBy"]) == ("merchant", f"api:{provider}")
    assert "Idempotent-Replayed" not in hdrs
    # the same key and body (empty or {}): the first answer, byte for byte
    again, replay_headers, replayed = await call(env, path, {}, key="cap-1")
    assert (again, replayed) == (200, body)
    assert replay_headers["Idempotent-Replayed"] == "true"
    # the same key with another body: mismatch; a new key: the session is captured already
    other, _, mismatch = await call(env, path, {"amount": "10.00"}, key="cap-1")
    assert other == 422
    assert json.loads(mismatch)["code"] == "IDEMPOTENCY_KEY_MISMATCH"
    late, _, conflict = await call(env, path, key="cap-2")
    assert late == 409
    assert json.loads(conflict)["status"] == "COMPLETED"
    events = await wait_for(
        lambda: [
            e
            for e in env.receiver.of_session(session_id)
            if e["data"]["payment_session"]["status"] == "COMPLETED"
        ]
    )
    assert events[0]["type"] == "payment_session.updated"
    assert events[0]["data"]["payment_session"]["previousStatus"] == "AUTHORIZED"
    assert events[0]["data"]["payment_session"]["amountCaptured"] == "140.76"


@pytest.mark.parametrize("provider", CAPTURING)
async def test_partial_capture_and_refund_bounds(lifecycle_env: EnvFactory, provider: str) -> None:
    env = await lifecycle_env(provider)
    session_id = await paid(env, provider, "k1", manual=True)
    sent = env.sandbox_state.webhooks_sent[provider]
    status, _, body = await call(
        env, f"/api/v1/sessions/{session_id}/capture", {"amount": "100.00"}, key="cap-1"
    )
    assert status == 200, body
    # the provider's own report of the capture follows: 100.00 agrees with what was captured
    await wait_for(lambda: env.sandbox_state.webhooks_sent[provider] > sent)
    view = await env.read(session_id)
    assert (view["status"], view["amountCaptured"]) == ("COMPLETED", "100.00")
    assert view["amountMismatch"] is None
    refunds = f"/api/v1/sessions/{session_id}/refunds"
    over, _, refused = await call(env, refunds, {"amount": "100.01"}, key="rf-1")
    assert over == 422
    assert json.loads(refused)["code"] == "REFUND_AMOUNT_EXCEEDED"
    done, _, refund = await call(env, refunds, {"amount": "100"}, key="rf-2")
    assert done == 201, refund
    assert json.loads(refund)["amount"] == "100.00"


async def test_capture_refusals(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    session_id = await paid(env, "stripe", "k1", manual=True)
    path = f"/api/v1/sessions/{session_id}/capture"
    too_much, _, body = await call(env, path, {"amount": "140.77"}, key="c1")
    assert too_much == 422
    assert json.loads(body)["code"] == "CAPTURE_AMOUNT_EXCEEDED"
    for bad in ("0", "0.00", "1.001", "-1", "abc"):
        status, _, body = await call(env, path, {"amount": bad}, key="c2")
        assert status == 400, (bad, body)
    assert (await call(env, path, key=None))[0] == 400
    assert (await call(env, path, key="c3", scopes=["sessions:read"]))[0] == 403
    unknown = "/api/v1/sessions/00000000-0000-4000-8000-000000000000/capture"
    assert (await call(env, unknown, key="c4"))[0] == 404
    pending = await env.create(key="k-pending", captureMethod="manual", orderReference="ORD-2")
    wrong, _, body = await call(env, f"/api/v1/sessions/{pending['sessionId']}/capture", key="c5")
    assert wrong == 409
    assert json.loads(body)["status"] == "PENDING"
    # a provider without partial captures (as its adapter declares) refuses less than all
    adapter = env.client.app[ADAPTERS]["stripe"]
    declared = adapter.capabilities
    adapter.capabilities = replace(declared, partial_capture=False)
    try:
        partial, _, body = await call(env, path, {"amount": "100.00"}, key="c6")
    finally:
        adapter.capabilities = declared
    assert partial == 422
    assert json.loads(body)["code"] == "FLOW_NOT_SUPPORTED"
    # nothing was captured by the refusals: a refused key is judged afresh
    assert (await env.read(session_id))["status"] == "AUTHORIZED"
    assert (await call(env, path, {"amount": "140.76"}, key="c1"))[0] == 200


@pytest.mark.parametrize("kind", STORES)
async def test_concurrent_captures_reach_the_provider_once(
    lifecycle_env: EnvFactory, store_factory: StoreFactory, kind: str
) -> None:
    env = await lifecycle_env("stripe", store=await store_factory(kind))
    session_id = await paid(env, "stripe", "k1", manual=True)
    before = counted("capture", "stripe")
    path = f"/api/v1/sessions/{session_id}/capture"
    results = await asyncio.gather(*(call(env, path, key=f"cap-{i}") for i in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) == 1, statuses
    assert set(statuses) == {200, 409}
    assert counted("capture", "stripe") == before + 1
    view = await env.read(session_id)
    assert (view["status"], view["amountCaptured"]) == ("COMPLETED", "140.76")


# void ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", CAPTURING)
async def test_cancel_of_an_authorized_session_voids_it(
    lifecycle_env: EnvFactory, provider: str
) -> None:
    env = await lifecycle_env(provider)
    session_id = await paid(env, provider, "k1", manual=True)
    before = counted("void", provider)
    path = f"/api/v1/sessions/{session_id}/cancel"
    body = {"cancellationReason": "requested_by_customer"}
    status, _, answer = await call(env, path, body, key="void-1")
    assert status == 200, answer
    view = json.loads(answer)
    assert view["status"] == "CANCELLED"
    assert view["transitions"][-1]["confirmedBy"] == f"api:{provider}"
    assert counted("void", provider) == before + 1
    again, replay_headers, replayed = await call(env, path, body, key="void-1")
    assert (again, replayed) == (200, answer)
    assert replay_headers["Idempotent-Replayed"] == "true"
    other = {"cancellationReason": "fraudulent"}
    assert (await call(env, path, other, key="void-1"))[0] == 422
    assert (await call(env, path, body, key="void-2"))[0] == 409
    capture = await call(env, f"/api/v1/sessions/{session_id}/capture", key="cap-1")
    assert capture[0] == 409
    assert counted("void", provider) == before + 1


# refunds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", [*CAPTURING, "adyen"])
async def test_refunds_partial_several_listed_and_notified(
    lifecycle_env: EnvFactory, provider: str
) -> None:
    env = await lifecycle_env(provider)
    session_id = await paid(env, provider, "k1", manual=False)
    path = f"/api/v1/sessions/{session_id}/refunds"
    first = {"amount": "40.00", "reason": "requested_by_customer"}
    status, _hdrs, body = await call(env, path, first, key="rf-1")
    assert status == 201, body
    refund = json.loads(body)
    assert refund["sessionId"] == session_id
    assert (refund["amount"], refund["currency"]) == ("40.00", "AUD")
    assert refund["reason"] == "requested_by_customer"
    assert refund["status"] in ("PENDING", "SUCCEEDED")
    again, replay_headers, replayed = await call(env, path, first, key="rf-1")
    assert (again, replayed) == (201, body)
    assert replay_headers["Idempotent-Replayed"] == "true"
    mismatch, _, refused = await call(env, path, {"amount": "41.00"}, key="rf-1")
    assert mismatch == 422
    assert json.loads(refused)["code"] == "IDEMPOTENCY_KEY_MISMATCH"
    second, _, body2 = await call(env, path, {"amount": "0.76"}, key="rf-2")
    assert second == 201, body2
    over, _, body3 = await call(env, path, {"amount": "100.01"}, key="rf-3")
    assert over == 422
    assert json.loads(body3)["code"] == "REFUND_AMOUNT_EXCEEDED"
    for bad in ({"amount": "0"}, {"amount": "1.001"}, {}, {"amount": "1", "reason": "whim"}):
        assert (await call(env, path, bad, key="rf-4"))[0] == 400
    assert (await call(env, path, first, key="rf-5", scopes=["sessions:write"]))[0] == 403
    # the provider's webhooks settle them
    listed: list[dict[str, Any]] = []

    async def settled() -> bool:
        status, _, raw = await call(env, path, key=None, method="GET")
        assert status == 200
        listed[:] = json.loads(raw)["data"]
        return all(r["status"] == "SUCCEEDED" for r in listed)

    for _ in range(100):
        if await settled():
            break
        await asyncio.sleep(0.05)
    assert [(r["refundId"], r["amount"], r["status"]) for r in listed] == [
        (refund["refundId"], "40.00", "SUCCEEDED"),
        (json.loads(body2)["refundId"], "0.76", "SUCCEEDED"),
    ]
    assert all(r["providerRefundId"] for r in listed)
    view = await env.read(session_id)
    assert (view["amountCaptured"], view["amountRefunded"]) == ("140.76", "40.76")
    # refund.created for each, refund.updated for each that the webhook moved; all signed
    notes = await wait_for(
        lambda: (
            len([e for e in env.receiver.of_session(session_id) if e["type"] == "refund.created"])
            == 2
            and [e for e in env.receiver.of_session(session_id) if e["type"].startswith("refund.")]
        )
    )
    created = [e for e in notes if e["type"] == "refund.created"]
    assert {e["data"]["refund"]["status"] for e in created} == {"PENDING"}
    assert {e["data"]["refund"]["refundId"] for e in created} == {r["refundId"] for r in listed}
    assert created[0]["data"]["payment_session"]["sessionId"] == session_id


@pytest.mark.parametrize("kind", STORES)
async def test_racing_refunds_never_refund_more_than_captured(
    lifecycle_env: EnvFactory, store_factory: StoreFactory, kind: str
) -> None:
    env = await lifecycle_env("stripe", store=await store_factory(kind))
    session_id = await paid(env, "stripe", "k1", manual=False)
    path = f"/api/v1/sessions/{session_id}/refunds"
    results = await asyncio.gather(
        *(call(env, path, {"amount": "10.00"}, key=f"rf-{i}") for i in range(20))
    )
    statuses = [status for status, _, _ in results]
    assert statuses.count(201) == 14, statuses  # 14 x 10.00 <= 140.76 < 15 x 10.00
    refused = [json.loads(body) for status, _, body in results if status != 201]
    assert {(r["statusCode"], r["code"]) for r in refused} == {(422, "REFUND_AMOUNT_EXCEEDED")}
    view = await env.read(session_id)
    assert Decimal(view["amountRefunded"]) == Decimal("140.00")
    status, _, raw = await call(env, path, key=None, method="GET")
    listed = json.loads(raw)["data"]
    assert len(listed) == 14
    assert sum(Decimal(r["amount"]) for r in listed if r["status"] != "FAILED") <= TOTAL
    at_stripe = ledger(env.sandbox_state).refunds.values()
    assert sorted(r["amount"] for r in at_stripe) == [1000] * 14
    # every replay answers its own first answer
    for i, (status, _, body) in enumerate(results):
        if status == 201:
            assert (await call(env, path, {"amount": "10.00"}, key=f"rf-{i}"))[2] == body


async def test_refund_refusals_by_state(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    pending = await env.create(key="k-pending")
    path = f"/api/v1/sessions/{pending['sessionId']}/refunds"
    status, _, body = await call(env, path, {"amount": "1.00"}, key="rf-1")
    assert status == 409
    assert json.loads(body)["status"] == "PENDING"
    authorized = await paid(env, "stripe", "k-auth", manual=True, orderReference="ORD-2")
    status, _, body = await call(
        env, f"/api/v1/sessions/{authorized}/refunds", {"amount": "1.00"}, key="rf-2"
    )
    assert status == 409
    assert json.loads(body)["status"] == "AUTHORIZED"


async def test_a_refund_the_provider_rejects_is_failed_and_released(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe")
    session_id = await paid(env, "stripe", "k1", manual=False)
    record = await env.store.get_session(session_id)
    assert record is not None
    # refunded in full at Stripe itself (its dashboard): Stripe refuses the gateway's refund
    outside = RefundInput(
        payment=payment_reference(record, TOTAL),
        refund_id="dashboard",
        session_id=session_id,
        amount=TOTAL,
        currency="AUD",
        reason=None,
        idempotency_key="dashboard-refund",
    )
    await env.client.app[ADAPTERS]["stripe"].refund_payment(outside, timeout=2)
    path = f"/api/v1/sessions/{session_id}/refunds"
    status, _, body = await call(env, path, {"amount": "40.00"}, key="rf-1")
    assert status == 422
    error = json.loads(body)
    assert error["code"] == "PROVIDER_REJECTED"
    assert error["details"]["providerError"]["provider"] == "stripe"
    again, replay_headers, replayed = await call(env, path, {"amount": "40.00"}, key="rf-1")
    assert (again, replayed) == (422, body)
    assert replay_headers["Idempotent-Replayed"] == "true"
    _, _, raw = await call(env, path, key=None, method="GET")
    (failed,) = json.loads(raw)["data"]
    assert failed["status"] == "FAILED"
    assert failed["failureReason"]
    assert (await env.read(session_id))["amountRefunded"] == "0.00"
    updates = await wait_for(
        lambda: [e for e in env.receiver.of_session(session_id) if e["type"] == "refund.updated"]
    )
    assert updates[0]["data"]["refund"]["status"] == "FAILED"


async def test_a_refund_of_unknown_outcome_is_sent_again_with_the_same_key(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe")
    session_id = await paid(env, "stripe", "k1", manual=False)
    path = f"/api/v1/sessions/{session_id}/refunds"
    faults = str(env.sandbox.make_url("/sandbox/admin/faults"))
    async with env.client.session.post(
        faults, json={"provider": "stripe", "processingMs": 2500}
    ) as answer:
        assert answer.status == 200
    status, hdrs, body = await call(env, path, {"amount": "40.00"}, key="rf-1")
    assert status == 504, body
    assert json.loads(body)["code"] == "PROVIDER_TIMEOUT"
    assert hdrs["Retry-After"] == "1"
    _, _, raw = await call(env, path, key=None, method="GET")
    (held,) = json.loads(raw)["data"]
    assert (held["status"], held["amount"]) == ("PENDING", "40.00")
    # the held amount counts: 100.77 more would exceed what was captured
    over, _, _ = await call(env, path, {"amount": "100.77"}, key="rf-2")
    assert over == 422
    async with env.client.session.post(
        faults, json={"provider": "stripe", "processingMs": 0}
    ) as answer:
        assert answer.status == 200
    stripe = ledger(env.sandbox_state)
    await wait_for(lambda: len(stripe.refunds) == 1)  # Stripe finished the first call
    status, _, body = await call(env, path, {"amount": "40.00"}, key="rf-1")
    assert status == 201, body
    assert json.loads(body)["refundId"] == held["refundId"]
    assert len(stripe.refunds) == 1  # re-sent with the same key, or settled by the webhook: one
    (only,) = stripe.refunds.values()
    assert only["amount"] == 4000


# Adyen: captures and voids are accepted, and its webhook decides -------------------------------


@pytest.mark.parametrize(("amount", "captured"), [(None, "140.76"), ("100.00", "100.00")])
async def test_adyen_capture_is_accepted_then_completed_by_its_webhook(
    lifecycle_env: EnvFactory, amount: str | None, captured: str
) -> None:
    env = await lifecycle_env("adyen")
    session_id = await paid(env, "adyen", "k1", manual=True)
    path = f"/api/v1/sessions/{session_id}/capture"
    body = None if amount is None else {"amount": amount}
    status, _, answer = await call(env, path, body, key="cap-1")
    assert status == 202, answer
    assert json.loads(answer)["status"] == "AUTHORIZED"
    view = await read_when(env, session_id, "COMPLETED")
    assert view["amountCaptured"] == captured
    assert view["amountMismatch"] is None
    assert view["transitions"][-1]["source"] == "webhook:adyen"
    # the key replays its own answer (202), and a new capture meets a captured session
    again, replay_headers, replayed = await call(env, path, body, key="cap-1")
    assert (again, replayed) == (202, answer)
    assert replay_headers["Idempotent-Replayed"] == "true"
    assert (await call(env, path, body, key="cap-2"))[0] == 409


async def test_adyen_void_is_accepted_then_cancelled_by_its_webhook(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("adyen")
    session_id = await paid(env, "adyen", "k1", manual=True)
    path = f"/api/v1/sessions/{session_id}/cancel"
    status, _, answer = await call(env, path, {"cancellationReason": "fraudulent"}, key="v1")
    assert status == 202, answer
    assert json.loads(answer)["status"] == "AUTHORIZED"
    view = await read_when(env, session_id, "CANCELLED")
    assert view["cancellationReason"] == "fraudulent"
    last = view["transitions"][-1]
    assert (last["source"], last["confirmedBy"]) == ("merchant", "webhook:adyen")
    capture = await call(env, f"/api/v1/sessions/{session_id}/capture", key="cap-1")
    assert capture[0] == 409


async def test_a_capture_of_unknown_outcome_is_answered_on_the_retry_of_its_key(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe")
    session_id = await paid(env, "stripe", "k1", manual=True)
    path = f"/api/v1/sessions/{session_id}/capture"
    faults = str(env.sandbox.make_url("/sandbox/admin/faults"))
    async with env.client.session.post(
        faults, json={"provider": "stripe", "processingMs": 2500}
    ) as answer:
        assert answer.status == 200
    status, _, body = await call(env, path, {"amount": "100.00"}, key="cap-1")
    assert status == 504, body
    # the capture asked is held: another key may not capture (or void) meanwhile
    other, _, refused = await call(env, path, key="cap-2")
    assert other == 409
    assert "Idempotency-Key" in json.loads(refused)["details"]
    void = {"cancellationReason": "requested_by_customer"}
    assert (await call(env, f"/api/v1/sessions/{session_id}/cancel", void, key="v1"))[0] == 409
    async with env.client.session.post(
        faults, json={"provider": "stripe", "processingMs": 0}
    ) as answer:
        assert answer.status == 200
    intents = ledger(env.sandbox_state).intents
    await wait_for(lambda: any(i.get("amount_received") for i in intents.values()))
    # Stripe captured it after all; the retry of the key answers the capture, once
    status, _, body = await call(env, path, {"amount": "100.00"}, key="cap-1")
    assert status == 200, body
    view = json.loads(body)
    assert (view["status"], view["amountCaptured"]) == ("COMPLETED", "100.00")
    (intent,) = [i for i in intents.values() if i.get("amount_received")]
    assert intent["amount_received"] == 10000
