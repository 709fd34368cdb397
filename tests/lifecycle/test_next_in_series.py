"""``sessionType: next_in_series``: the customer-absent charge of a saved method, end to end on
real sockets (gateway, sandbox providers, the merchant's receiver).

The mandate is a first_in_series session paid on the sandbox's hosted page; the next payment
names it in ``mandateSessionId`` and is charged at the mandate's provider only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from gateway.domain.session import SessionStatus
from providers.sandbox.stripe_payments import ledger
from tests.api.conftest import headers, seed
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import PROVIDERS, payment_counts, read_when, settled, wait_for
from tests.lifecycle.test_webhook_signatures import deliver
from tests.providers.hosted_inputs import press

STORES = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]
UNKNOWN = "0b6f8c1e-2f4a-4c1d-9e3b-5a7d6c8e9f01"


async def paid_mandate(env: Env, key: str = "mandate-1", **changes: Any) -> dict[str, Any]:
    """A first_in_series session paid on the hosted page: its view, COMPLETED."""
    created = await env.create(
        key,
        sessionType="first_in_series",
        customerReference="cust-42",
        orderReference=f"ORD-{key}",
        **changes,
    )
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    return await read_when(env, created["sessionId"], "COMPLETED")


def series_body(mandate_id: str, **changes: Any) -> dict[str, Any]:
    body = seed(sessionType="next_in_series", mandateSessionId=mandate_id)
    del body["redirectUrls"]
    body.update(changes)
    return body


async def set_faults(env: Env, **faults: Any) -> None:
    """Replace the sandbox's faults of stripe (``declineOffSession``, ``down``, ...)."""
    async with aiohttp.ClientSession() as http:
        answer = await http.post(
            str(env.sandbox.make_url("/sandbox/admin/faults")),
            json={"provider": "stripe", **faults},
        )
        assert answer.status == 200, await answer.text()


def intents_of(env: Env, session_id: str) -> list[dict[str, Any]]:
    """The PaymentIntents the Stripe sandbox holds for the gateway session."""
    return [
        intent
        for intent in ledger(env.sandbox_state).intents.values()
        if intent["metadata"].get("gateway_session_id") == session_id
    ]


async def charge(
    env: Env, mandate_id: str, key: str, merchant: str = "merchant-1", **changes: Any
) -> tuple[int, dict[str, Any], bytes]:
    response = await env.client.post(
        "/api/v1/sessions",
        json=series_body(mandate_id, **changes),
        headers=headers(key, merchant=merchant),
    )
    raw = await response.read()
    return response.status, await response.json(), raw


# -- the mandate: 404 and 422 ---------------------------------------------------------------


async def test_an_unknown_mandate_is_not_found(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    status, body, _ = await charge(env, UNKNOWN, "next-unknown")
    assert status == 404
    assert (body["error"], body["message"], body["statusCode"]) == (
        "Not Found",
        "Session not found",
        404,
    )


async def test_another_merchants_mandate_reads_as_unknown(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    status, body, _ = await charge(env, mandate["sessionId"], "next-other", merchant="merchant-2")
    assert status == 404
    assert body["message"] == "Session not found"


async def test_a_one_time_session_is_no_mandate(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create("one-time", orderReference="ORD-one-time")
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    await read_when(env, created["sessionId"], "COMPLETED")
    status, body, _ = await charge(env, created["sessionId"], "next-one-time")
    assert status == 422
    assert body["code"] == "MANDATE_NOT_USABLE"
    assert body["message"] == (
        f"Session {created['sessionId']} cannot serve as a mandate: it is a one_time session; "
        "only a first_in_series or setup session saves a payment method for later charges"
    )
    assert body["details"] == {"mandateSessionId": created["sessionId"]}


async def test_an_unpaid_mandate_is_not_usable_yet(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create("unpaid", sessionType="first_in_series", orderReference="ORD-unpaid")
    status, body, _ = await charge(env, created["sessionId"], "next-unpaid")
    assert status == 422
    assert body["code"] == "MANDATE_NOT_USABLE"
    assert "it is PENDING; its payment method is saved once it is COMPLETED" in body["message"]


async def test_a_mandate_without_a_saved_method_is_not_usable(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    record = await env.store.get_session(mandate["sessionId"])
    assert record is not None
    await env.rewrite(record, paymentMethodId=None)
    status, body, _ = await charge(env, mandate["sessionId"], "next-no-method")
    assert status == 422
    assert body["code"] == "MANDATE_NOT_USABLE"
    assert body["message"].endswith("stripe reported no saved payment method")


async def test_a_mandate_of_another_payment_method_is_not_usable(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    status, body, _ = await charge(
        env, mandate["sessionId"], "next-sepa", paymentMethod="sepa_debit", currency="EUR"
    )
    assert status == 422
    assert body["code"] == "MANDATE_NOT_USABLE"
    assert body["message"].endswith("it saved a card payment method, not sepa_debit")


async def test_an_amount_the_mandates_provider_cannot_take_names_it(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    # the routing rules bound stripe's JPY amounts to at least 50; adyen would take 1 JPY
    status, body, _ = await charge(
        env,
        mandate["sessionId"],
        "next-jpy",
        currency="JPY",
        amount={"total": 1},
        orderItems=[{"name": "Tiny", "quantity": 1, "unitPrice": 1}],
    )
    assert status == 422, body
    assert body["code"] == "NO_AVAILABLE_PROVIDER"
    reasons = {d["provider"]: d["reason"] for d in body["details"]}
    assert reasons["stripe"] == "amount 1 JPY is below the minimum 50 of the routing rules"
    assert reasons["adyen"] == "mandate is held by stripe"
    assert reasons["paypal"] == "mandate is held by stripe"


# -- the charge -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORES)
async def test_a_next_payment_completes_at_the_mandates_provider(
    lifecycle_env: EnvFactory, store_factory: Any, kind: str
) -> None:
    env = await lifecycle_env("stripe", store=await store_factory(kind))
    mandate = await paid_mandate(env)
    ok_before, fail_before = await payment_counts(env, "stripe")  # the mandate's payment
    status, body, raw = await charge(env, mandate["sessionId"], "next-1")
    assert status == 201, body
    assert body["status"] == "COMPLETED"
    assert body["checkoutUrl"] is None
    assert body["routing"]["selectedProvider"] == "stripe"
    assert [(a["provider"], a["outcome"]) for a in body["routing"]["attempts"]] == [
        ("stripe", "charged")
    ]
    view = await env.read(body["sessionId"])
    assert view["status"] == "COMPLETED"
    assert view["sessionType"] == "next_in_series"
    assert view["mandateSessionId"] == mandate["sessionId"]
    assert (view["customerId"], view["paymentMethodId"]) == (
        mandate["customerId"],
        mandate["paymentMethodId"],
    )
    assert view["paymentId"]
    assert view["providerSessionId"] == view["paymentId"]
    assert view["amountCaptured"] == "140.76"
    assert [(t["status"], t["source"]) for t in view["transitions"]] == [
        ("PENDING", "gateway"),
        ("COMPLETED", "api:stripe"),
    ]
    # the replay is the same answer, byte for byte
    again = await env.client.post(
        "/api/v1/sessions", json=series_body(mandate["sessionId"]), headers=headers("next-1")
    )
    assert again.status == 201
    assert await again.read() == raw
    # the merchant hears of the creation and of the outcome
    events = await settled(env, body["sessionId"], 2)
    events.sort(key=lambda e: e["data"]["payment_session"]["version"])  # delivered in any order
    assert [(e["type"], e["data"]["payment_session"]["status"]) for e in events] == [
        ("payment_session.created", "PENDING"),
        ("payment_session.updated", "COMPLETED"),
    ]
    # the verdict feeds the routing statistics like a webhook's
    # one more outcome discounts the older ones by 1/window (the adaptive learner forgets by
    # volume): a delta within 0.01 of one success and no failure
    ok, fail = await payment_counts(env, "stripe")
    assert (ok - ok_before, fail - fail_before) == pytest.approx((1.0, 0.0), abs=0.01)


async def test_a_declined_charge_is_a_failed_session_not_an_error(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    await set_faults(env, declineOffSession=True)
    ok_before, fail_before = await payment_counts(env, "stripe")
    status, body, _ = await charge(env, mandate["sessionId"], "next-declined")
    assert status == 201, body
    assert body["status"] == "FAILED"
    assert [(a["provider"], a["outcome"]) for a in body["routing"]["attempts"]] == [
        ("stripe", "declined")
    ]
    ok, fail = await payment_counts(env, "stripe")
    assert (ok - ok_before, fail - fail_before) == pytest.approx((0.0, 1.0), abs=0.01)
    view = await env.read(body["sessionId"])
    assert view["status"] == "FAILED"
    assert view["failureReason"]
    assert view["amountCaptured"] == "0.00"
    # a failed charge does not hold its order: the merchant may charge it again
    await set_faults(env, declineOffSession=False)
    status, retried, _ = await charge(env, mandate["sessionId"], "next-declined-2")
    assert status == 201, retried
    assert retried["status"] == "COMPLETED"


async def test_a_paid_next_payment_holds_its_order(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    status, first, _ = await charge(env, mandate["sessionId"], "next-order-1")
    assert (status, first["status"]) == (201, "COMPLETED")
    status, body, _ = await charge(env, mandate["sessionId"], "next-order-2")
    assert status == 409
    assert body["sessionId"] == first["sessionId"]


async def test_concurrent_retries_make_one_charge(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    await set_faults(env, processingMs=300)
    answers = await asyncio.gather(
        *(charge(env, mandate["sessionId"], "next-race") for _ in range(20))
    )
    created = [raw for status, _, raw in answers if status == 201]
    assert created
    assert {status for status, _, _ in answers} <= {201, 409}
    assert len(set(created)) == 1
    session_id = answers[[s for s, _, _ in answers].index(201)][1]["sessionId"]
    view = await read_when(env, session_id, "COMPLETED")
    assert [intent["id"] for intent in intents_of(env, session_id)] == [view["paymentId"]]


async def test_no_failover_when_the_mandates_provider_is_down(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    state = env.sandbox_state
    created_before = dict(state.sessions_created)
    await set_faults(env, down=True)
    status, body, _ = await charge(env, mandate["sessionId"], "next-down")
    assert status == 502, body
    assert body["code"] == "PROVIDER_UNAVAILABLE"
    assert body["details"]["providerError"]["provider"] == "stripe"
    assert dict(state.sessions_created) == created_before  # adyen and paypal never called
    # once the circuit opens the answer is 503 naming only the mandate's provider as down
    for attempt in range(10):
        status, body, _ = await charge(env, mandate["sessionId"], f"next-down-{attempt}")
        if status == 503:
            break
        assert status == 502, body
    assert status == 503, body
    assert body["reason"] == "PROVIDERS_UNAVAILABLE"
    assert dict(state.sessions_created) == created_before


async def test_a_timeout_keeps_the_key_for_the_same_provider_request(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe", provider_timeout_seconds=0.5)
    mandate = await paid_mandate(env)
    await set_faults(env, processingMs=1500)
    status, body, _ = await charge(env, mandate["sessionId"], "next-slow")
    assert status == 504, body
    assert body["code"] == "PROVIDER_TIMEOUT"
    await set_faults(env)
    await asyncio.sleep(1.2)  # the provider finishes the first request meanwhile
    status, body, _ = await charge(env, mandate["sessionId"], "next-slow")
    assert status == 201, body
    assert body["status"] == SessionStatus.COMPLETED.value
    view = await env.read(body["sessionId"])
    assert [intent["id"] for intent in intents_of(env, body["sessionId"])] == [view["paymentId"]]


async def test_the_simulated_decision_goes_where_the_mandate_is(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    response = await env.client.post(
        "/api/v1/routing/simulate", json=series_body(UNKNOWN), headers=headers(None)
    )
    assert response.status == 404
    mandate = await paid_mandate(env)
    response = await env.client.post(
        "/api/v1/routing/simulate", json=series_body(mandate["sessionId"]), headers=headers(None)
    )
    assert response.status == 200, await response.text()
    decision = await response.json()
    assert decision["selectedProvider"] == "stripe"
    assert [c["provider"] for c in decision["candidates"]] == ["stripe"]
    assert decision["candidates"][0]["details"]["reason"] == "holds the mandate (stripe)"
    assert {e["provider"]: e["reason"] for e in decision["excluded"]} == {
        "adyen": "mandate is held by stripe",
        "paypal": "mandate is held by stripe",
    }
    assert decision["notes"][0] == "next_in_series: routed only to stripe, which holds the mandate"


async def test_a_processing_charge_is_completed_by_the_providers_webhook(
    lifecycle_env: EnvFactory,
) -> None:
    """The provider's webhook about a customer-absent payment names the payment (the session's
    providerSessionId) and the gateway session: it moves a PROCESSING next payment."""
    env = await lifecycle_env("stripe", sink=True)
    assert env.sink is not None
    created = await env.create(
        "mandate-sink", sessionType="first_in_series", orderReference="ORD-mandate-sink"
    )
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    for call in list(env.sink.calls):  # the sandbox's webhooks reach the gateway by hand here
        assert (await deliver(env, call.provider, call.body, call.headers))[0] == 200
    await read_when(env, created["sessionId"], "COMPLETED")
    seen = len(env.sink.calls)
    status, body, _ = await charge(env, created["sessionId"], "next-processing")
    assert (status, body["status"]) == (201, "COMPLETED")
    # as if Stripe had answered "processing": the session waits for the provider's word
    record = await env.store.get_session(body["sessionId"])
    assert record is not None
    pending, answered = record.transitions
    await env.rewrite(
        record,
        status=SessionStatus.PROCESSING,
        transitions=[pending, answered.model_copy(update={"status": SessionStatus.PROCESSING})],
    )
    calls = await wait_for(lambda: env.sink.calls[seen:] if env.sink else None)
    assert [call.provider for call in calls] == ["stripe"]
    assert (await deliver(env, "stripe", calls[0].body, calls[0].headers))[0] == 200
    view = await read_when(env, body["sessionId"], "COMPLETED")
    assert [(t["status"], t["source"]) for t in view["transitions"]] == [
        ("PENDING", "gateway"),
        ("PROCESSING", "api:stripe"),
        ("COMPLETED", "webhook:stripe"),
    ]


async def test_a_charge_of_another_amount_is_recorded_not_applied(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    await set_faults(env, chargeSkew=1)  # the provider takes one cent more than asked
    status, body, _ = await charge(env, mandate["sessionId"], "next-skew")
    assert status == 201, body
    assert body["status"] == "PROCESSING"
    # the merchant is told with the move (the provider's webhook with the same amount follows)
    events = await settled(env, body["sessionId"], 2)
    [moved] = [e for e in events if e["data"]["payment_session"]["version"] == 1]
    found = moved["data"]["payment_session"]["amountMismatch"]
    assert (found["source"], found["reportedStatus"], found["amount"], found["currency"]) == (
        "charge",
        "COMPLETED",
        "140.77",
        "AUD",
    )
    await asyncio.sleep(0.3)
    view = await env.read(body["sessionId"])
    assert view["status"] == "PROCESSING"  # the webhook's verdict is not applied either
    assert view["amountMismatch"]["amount"] == "140.77"
    assert view["amountCaptured"] == "0.00"
    # and the order stays held: money of an amount nobody agreed to moved
    await set_faults(env)
    status, again, _ = await charge(env, mandate["sessionId"], "next-skew-2")
    assert status == 409, again


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_series_is_charged_at_each_provider(
    lifecycle_env: EnvFactory, provider: str
) -> None:
    env = await lifecycle_env(provider)
    mandate = await paid_mandate(env, **PROVIDERS[provider])
    assert mandate["provider"] == provider
    status, body, _ = await charge(env, mandate["sessionId"], "next-each", **PROVIDERS[provider])
    assert status == 201, body
    assert body["routing"]["selectedProvider"] == provider
    view = await read_when(env, body["sessionId"], "COMPLETED")
    assert view["paymentMethodId"] == mandate["paymentMethodId"]
    assert view["transitions"][1]["source"] == f"api:{provider}"


async def test_a_key_reused_for_another_charge_is_a_mismatch(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    mandate = await paid_mandate(env)
    status, first, _ = await charge(env, mandate["sessionId"], "next-reused")
    assert status == 201, first
    status, body, _ = await charge(
        env,
        mandate["sessionId"],
        "next-reused",
        amount={"total": 119},
        orderItems=[{"name": "Wireless Headphones", "quantity": 1, "unitPrice": 119}],
    )
    assert status == 422
    assert body["code"] == "IDEMPOTENCY_KEY_MISMATCH"
    assert len(intents_of(env, first["sessionId"])) == 1


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_manual_capture_charge_is_authorized_then_captured(
    lifecycle_env: EnvFactory, provider: str
) -> None:
    """captureMethod manual on a next payment: 201 AUTHORIZED with the lapse of the
    authorization (the provider's authorization_days) and the sweeper's warning scheduled; the
    merchant's capture completes it at the same provider."""
    env = await lifecycle_env(provider)
    mandate = await paid_mandate(env, **PROVIDERS[provider])
    status, body, _ = await charge(
        env, mandate["sessionId"], "next-manual", captureMethod="manual", **PROVIDERS[provider]
    )
    assert status == 201, body
    assert body["status"] == "AUTHORIZED"
    view = await env.read(body["sessionId"])
    days = env.lifecycle.adapters[provider].capabilities.authorization_days
    lapse = datetime.fromisoformat(view["authorizationExpiresAt"].replace("Z", "+00:00"))
    assert abs((lapse - datetime.now(UTC)) - timedelta(days=days)) < timedelta(minutes=1)
    if provider == "paypal":  # PayPal's payment webhooks name the order, not the payment
        assert view["providerSessionId"] != view["paymentId"]
    captured = await env.client.post(
        f"/api/v1/sessions/{body['sessionId']}/capture",
        json={},
        headers=headers("capture-manual"),
    )
    assert captured.status in (200, 202), await captured.text()
    done = await read_when(env, body["sessionId"], "COMPLETED")
    assert done["amountCaptured"] == done["amount"]["total"]
