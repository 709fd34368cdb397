"""``PayPalAdapter.complete_approved`` against the sandbox on real sockets: capturing and
authorizing approved orders, idempotent retries (same PayPal-Request-Id), declines, an order
completed under another request id, refusals, and faults mapped onto the error tree."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.domain.session import SessionStatus
from providers.adyen.adapter import AdyenAdapter
from providers.base import (
    AUTHORIZE,
    CAPTURE,
    ApprovalCompleter,
    FlowNotSupported,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from providers.paypal.adapter import PayPalAdapter
from providers.paypal.payments import completion_event
from providers.sandbox.paypal_api import PayPalSandbox, paypal_sandbox
from providers.stripe.adapter import StripeAdapter
from tests.contracts.strict_sandbox import StrictSandbox
from tests.lifecycle.test_loop import wait_for
from tests.providers.hosted_inputs import (
    WebhookSink,
    checkout_input,
    press,
    request_from,
    seed_data,
    set_fault,
)


@pytest.fixture
def pp(sandbox: StrictSandbox) -> PayPalSandbox:
    return paypal_sandbox(sandbox.state)


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> PayPalAdapter:
    return PayPalAdapter(sandbox.provider_config("paypal"), http)


async def approved(adapter: PayPalAdapter, action: str = "pay", **changes: Any) -> str:
    """An order the payer approved with ``action`` (pay or decline) on the pay page."""
    data = seed_data()
    data["paymentMethod"] = "paypal"
    data.update(changes)
    data_in = checkout_input(request_from(data), key=f"merchant-1:{uuid.uuid4()}:paypal")
    session = await adapter.create_session(data_in, timeout=5)
    status, _ = await press(session.checkout_url, action)
    assert status == 303
    return session.reference


def held_order(sandbox: StrictSandbox, reference: str) -> dict[str, Any]:
    session = sandbox.state.get_session("paypal", reference)
    assert session is not None
    order: dict[str, Any] = session.extra["order"]
    return order


async def webhook_types(sink: WebhookSink, count: int) -> list[str]:
    await wait_for(lambda: len(sink.calls) >= count)
    return [orjson.loads(call.body)["event_type"] for call in sink.calls]


def test_only_paypal_completes_approvals(
    adapter: PayPalAdapter, sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    assert isinstance(adapter, ApprovalCompleter)
    stripe = StripeAdapter(sandbox.provider_config("stripe"), http)
    adyen = AdyenAdapter(sandbox.provider_config("adyen"), http)
    assert not isinstance(stripe, ApprovalCompleter)
    assert not isinstance(adyen, ApprovalCompleter)


async def test_capture_moves_the_money(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    sandbox, sink = env
    reference = await approved(adapter)
    assert held_order(sandbox, reference)["status"] == "APPROVED"
    assert await webhook_types(sink, 1) == ["CHECKOUT.ORDER.APPROVED"]
    event = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key=f"capture-{reference}", timeout=5
    )
    assert event is not None
    order = held_order(sandbox, reference)
    assert order["status"] == "COMPLETED"
    [capture] = order["purchase_units"][0]["payments"]["captures"]
    assert (capture["status"], capture["amount"]["value"]) == ("COMPLETED", "140.76")
    assert (event.status, event.payment_id, event.event_id) == (
        SessionStatus.COMPLETED,
        capture["id"],
        capture["id"],
    )
    assert (event.reference, event.session_id) == (reference, "ses_01HTESTSESSION0001")
    assert event.extra["amount"] == "140.76"
    assert [(c.order_id, c.action, c.request_id) for c in pp.completions] == [
        (reference, "capture", f"capture-{reference}")
    ]
    # PayPal's capture webhook follows the answer and names the same capture
    assert await webhook_types(sink, 2) == [
        "CHECKOUT.ORDER.APPROVED",
        "PAYMENT.CAPTURE.COMPLETED",
    ]
    [hook] = await adapter.parse_webhook(sink.calls[1].headers, sink.calls[1].body)
    assert (hook.payment_id, hook.status) == (capture["id"], SessionStatus.COMPLETED)


async def test_manual_capture_authorizes_and_reads_authorized(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter
) -> None:
    sandbox, sink = env
    reference = await approved(adapter, captureMethod="manual")
    event = await adapter.complete_approved(
        reference, intent=AUTHORIZE, idempotency_key="auth-1", timeout=5
    )
    assert event is not None
    [authorization] = held_order(sandbox, reference)["purchase_units"][0]["payments"][
        "authorizations"
    ]
    assert authorization["status"] == "CREATED"
    assert (event.status, event.payment_id) == (SessionStatus.AUTHORIZED, authorization["id"])
    assert event.capture_id is None
    assert event.event_type == "ORDER.AUTHORIZE"
    assert (await webhook_types(sink, 2))[1] == "PAYMENT.AUTHORIZATION.CREATED"


async def test_the_vaulted_wallet_comes_back_with_the_capture(adapter: PayPalAdapter) -> None:
    reference = await approved(adapter, sessionType="first_in_series")
    event = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="vault-1", timeout=5
    )
    assert event is not None
    assert event.status is SessionStatus.COMPLETED
    assert event.customer_id
    assert event.payment_method_id


async def test_a_retry_with_the_same_key_captures_once(
    adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    reference = await approved(adapter)
    first = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="same-key", timeout=5
    )
    again = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="same-key", timeout=5
    )
    assert first is not None
    assert again is not None
    assert again.payment_id == first.payment_id
    assert again.status is SessionStatus.COMPLETED
    assert len(pp.completions) == 1


async def test_a_lost_answer_is_recovered_by_the_retry(
    adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    reference = await approved(adapter)
    pp.lose_completion_answers = 1  # PayPal captures, but the answer is a 500
    with pytest.raises(ProviderUnavailable) as caught:
        await adapter.complete_approved(reference, intent=CAPTURE, idempotency_key="k", timeout=5)
    assert caught.value.status == 500
    [made] = pp.completions
    assert made.status == "COMPLETED"
    event = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="k", timeout=5
    )
    assert event is not None
    assert event.status is SessionStatus.COMPLETED
    assert len(pp.completions) == 1  # the replay, not a second capture


async def test_a_timeout_then_in_flight_then_replayed(
    sandbox: StrictSandbox, adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    reference = await approved(adapter)
    await adapter.complete_approved(reference, intent=CAPTURE, idempotency_key="warm", timeout=5)
    other = await approved(adapter)
    await set_fault(sandbox, "paypal", processingMs=600)
    with pytest.raises(ProviderTimeout):
        await adapter.complete_approved(other, intent=CAPTURE, idempotency_key="slow", timeout=0.2)
    # the first request still runs at PayPal: a retry meets it in flight (retry later)
    with pytest.raises(ProviderUnavailable) as caught:
        await adapter.complete_approved(other, intent=CAPTURE, idempotency_key="slow", timeout=5)
    assert caught.value.status == 409
    await wait_for(lambda: len(pp.completions) == 2)
    event = await adapter.complete_approved(
        other, intent=CAPTURE, idempotency_key="slow", timeout=5
    )
    assert event is not None
    assert event.status is SessionStatus.COMPLETED
    assert len(pp.completions) == 2


async def test_a_declined_payer_gets_a_declined_capture(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter
) -> None:
    sandbox, sink = env
    reference = await approved(adapter, "decline")
    event = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="d-1", timeout=5
    )
    assert event is not None
    assert event.status is SessionStatus.FAILED
    assert event.failure_reason == "capture declined"
    [capture] = held_order(sandbox, reference)["purchase_units"][0]["payments"]["captures"]
    assert (capture["status"], event.payment_id) == ("DECLINED", capture["id"])
    assert (await webhook_types(sink, 2))[1] == "PAYMENT.CAPTURE.DECLINED"


async def test_a_declined_authorization_is_instrument_declined(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    sandbox, sink = env
    reference = await approved(adapter, "decline", captureMethod="manual")
    for _ in range(2):  # the refusal is final: the retry gets it again
        event = await adapter.complete_approved(
            reference, intent=AUTHORIZE, idempotency_key="d-2", timeout=5
        )
        assert event is not None
        assert (event.status, event.failure_reason) == (
            SessionStatus.FAILED,
            "INSTRUMENT_DECLINED",
        )
        assert (event.event_id, event.payment_id) == ("d-2", None)
    assert len(pp.completions) == 1
    assert held_order(sandbox, reference)["status"] == "APPROVED"
    assert (await webhook_types(sink, 2))[1] == "CHECKOUT.PAYMENT-APPROVAL.REVERSED"


async def test_already_captured_under_another_key_reads_the_order(
    adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    reference = await approved(adapter)
    first = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="one", timeout=5
    )
    other = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="two", timeout=5
    )
    assert first is not None
    assert other is not None
    assert (other.status, other.payment_id) == (SessionStatus.COMPLETED, first.payment_id)
    assert len(pp.completions) == 1


async def test_before_approval_and_against_the_intent_are_refused(
    adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    data = seed_data()
    data["paymentMethod"] = "paypal"
    session = await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    with pytest.raises(ProviderRejected) as caught:
        await adapter.complete_approved(
            session.reference, intent=CAPTURE, idempotency_key="early", timeout=5
        )
    assert (caught.value.status, caught.value.issue) == (422, "ORDER_NOT_APPROVED")
    await press(session.checkout_url, "pay")
    with pytest.raises(ProviderRejected) as caught:
        await adapter.complete_approved(
            session.reference, intent=AUTHORIZE, idempotency_key="wrong", timeout=5
        )
    assert caught.value.issue == "ACTION_DOES_NOT_MATCH_INTENT"
    # refusals keep no request id: the same key works once the call is right
    event = await adapter.complete_approved(
        session.reference, intent=CAPTURE, idempotency_key="early", timeout=5
    )
    assert event is not None
    assert event.status is SessionStatus.COMPLETED
    assert len(pp.completions) == 1


async def test_an_unknown_intent_is_not_supported(
    adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    with pytest.raises(FlowNotSupported, match="unknown completion intent"):
        await adapter.complete_approved("ORDER1", intent="sale", idempotency_key="k", timeout=5)
    assert pp.token_requests == 0


async def test_a_revoked_token_is_refreshed_for_the_capture(
    adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    reference = await approved(adapter)
    pp.revoke_tokens()
    event = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="t", timeout=5
    )
    assert event is not None
    assert event.status is SessionStatus.COMPLETED
    assert pp.token_requests == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"errorRate": 1.0}, ProviderUnavailable),
        ({"rateLimitRate": 1.0, "retryAfter": 3}, ProviderRateLimited),
        ({"timeout": True}, ProviderTimeout),
        ({"down": True}, ProviderUnavailable),
    ],
)
async def test_faults_map_onto_the_error_tree_and_nothing_is_captured(
    sandbox: StrictSandbox,
    adapter: PayPalAdapter,
    pp: PayPalSandbox,
    fault: dict[str, Any],
    error: type[Exception],
) -> None:
    reference = await approved(adapter)
    await set_fault(sandbox, "paypal", **fault)
    with pytest.raises(error):
        await adapter.complete_approved(reference, intent=CAPTURE, idempotency_key="f", timeout=0.5)
    assert pp.completions == []
    await asyncio.sleep(0)


async def test_a_5xx_then_success_with_the_same_key(
    adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    reference = await approved(adapter)
    pp.fail_completions = 1
    with pytest.raises(ProviderUnavailable):
        await adapter.complete_approved(reference, intent=CAPTURE, idempotency_key="r", timeout=5)
    assert pp.completions == []
    event = await adapter.complete_approved(
        reference, intent=CAPTURE, idempotency_key="r", timeout=5
    )
    assert event is not None
    assert event.status is SessionStatus.COMPLETED


def _order(kind: str, status: str, **payment: Any) -> dict[str, Any]:
    return {
        "id": "ORDER9",
        "status": "COMPLETED",
        "purchase_units": [
            {
                "custom_id": "ses_9",
                "payments": {kind: [{"id": "PAY9", "status": status, **payment}]},
            }
        ],
    }


@pytest.mark.parametrize(
    ("intent", "kind", "status", "expected"),
    [
        (CAPTURE, "captures", "COMPLETED", SessionStatus.COMPLETED),
        (CAPTURE, "captures", "PENDING", SessionStatus.PROCESSING),
        (CAPTURE, "captures", "DECLINED", SessionStatus.FAILED),
        (CAPTURE, "captures", "FAILED", SessionStatus.FAILED),
        (CAPTURE, "captures", "SOMETHING_NEW", SessionStatus.PROCESSING),
        (AUTHORIZE, "authorizations", "CREATED", SessionStatus.AUTHORIZED),
        (AUTHORIZE, "authorizations", "PENDING", SessionStatus.PROCESSING),
        (AUTHORIZE, "authorizations", "DENIED", SessionStatus.FAILED),
    ],
)
def test_completion_mapping_never_invents_success(
    intent: str, kind: str, status: str, expected: SessionStatus
) -> None:
    event = completion_event(_order(kind, status), intent=intent, request_id="req-9")
    assert event is not None
    assert (event.status, event.payment_id, event.event_id) == (expected, "PAY9", "PAY9")
    assert (event.reference, event.session_id) == ("ORDER9", "ses_9")
    assert (event.failure_reason is not None) == (expected is SessionStatus.FAILED)


def test_an_order_without_the_payment_settles_nothing() -> None:
    assert (
        completion_event(_order("captures", "COMPLETED"), intent=AUTHORIZE, request_id="r") is None
    )
    assert (
        completion_event({"id": "O", "purchase_units": []}, intent=CAPTURE, request_id="r") is None
    )


def test_a_pending_reason_is_kept_for_a_failure_only() -> None:
    failed = completion_event(
        _order("captures", "DECLINED", status_details={"reason": "RISK_DECLINE"}),
        intent=CAPTURE,
        request_id="r",
    )
    pending = completion_event(
        _order("captures", "PENDING", status_details={"reason": "PENDING_REVIEW"}),
        intent=CAPTURE,
        request_id="r",
    )
    assert failed is not None
    assert pending is not None
    assert failed.failure_reason == "RISK_DECLINE"
    assert pending.failure_reason is None


async def test_the_emulated_capture_call_on_the_wire(
    sandbox: StrictSandbox, adapter: PayPalAdapter, http: aiohttp.ClientSession, pp: PayPalSandbox
) -> None:
    """Bearer auth, JSON body rules and PayPal-Request-Id replays, as raw HTTP."""
    reference = await approved(adapter)
    other = await approved(adapter)
    token = await adapter._tokens.get(5)
    url = sandbox.url(f"/sandbox/paypal/v2/checkout/orders/{reference}/capture")
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def post(target: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with http.post(target, data=body, headers=headers) as response:
            return response.status, await response.json()

    status, answer = await post(url, b"{}", {"Content-Type": "application/json"})
    assert (status, answer["details"][0]["issue"]) == (401, "INVALID_TOKEN")
    status, answer = await post(url, b"[1]", auth)
    assert (status, answer["details"][0]["issue"]) == (400, "MALFORMED_REQUEST_JSON")
    status, answer = await post(url, b"{}", {**auth, "PayPal-Request-Id": "x" * 109})
    assert (status, answer["details"][0]["issue"]) == (400, "INVALID_STRING_LENGTH")
    assert pp.completions == []
    keyed = {**auth, "PayPal-Request-Id": "wire-1"}
    first = await post(url, b"", keyed)  # an empty body is accepted like {}
    assert first[0] == 201
    assert first[1]["purchase_units"][0]["payments"]["captures"][0]["status"] == "COMPLETED"
    assert "items" not in first[1]["purchase_units"][0]  # return=minimal by default
    assert await post(url, b"{}", keyed) == (200, first[1])
    elsewhere = sandbox.url(f"/sandbox/paypal/v2/checkout/orders/{other}/capture")
    status, answer = await post(elsewhere, b"{}", keyed)
    assert (status, answer["details"][0]["issue"]) == (422, "DUPLICATE_REQUEST_ID")
    status, answer = await post(url, b"{}", {**auth, "PayPal-Request-Id": "wire-2"})
    assert (status, answer["details"][0]["issue"]) == (422, "ORDER_ALREADY_CAPTURED")
    missing = sandbox.url("/sandbox/paypal/v2/checkout/orders/NOSUCHORDER/capture")
    status, answer = await post(missing, b"{}", auth)
    assert (status, answer["name"]) == (404, "RESOURCE_NOT_FOUND")
    assert len(pp.completions) == 1
