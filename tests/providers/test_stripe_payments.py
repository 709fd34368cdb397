"""Stripe after the checkout, against the strict sandbox over real sockets: setup sessions,
customer-absent charges, manual capture (full, partial), void, refunds, idempotent retries and
the webhooks each of them causes. Every outgoing POST is validated against the spec files."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from gateway.domain.models import CheckoutRequest
from gateway.domain.session import RefundStatus, SessionStatus
from providers.base import (
    ChargeInput,
    FlowNotSupported,
    PaymentReference,
    ProviderEvent,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RefundInput,
)
from providers.sandbox.stripe_payments import ledger
from providers.stripe.adapter import StripeAdapter
from providers.stripe.transformers import encode_form
from tests.contracts.spec_validator import (
    request_schema,
    stripe_form_to_dict,
    validate_response,
)
from tests.contracts.strict_sandbox import StrictSandbox
from tests.providers.hosted_inputs import WebhookSink, press, set_fault
from tests.providers.stripe_support import checkout_request, session_input

PI_CREATE = "stripe_payment_intents:create"
PI_CAPTURE = "stripe_payment_intents:capture"
PI_CANCEL = "stripe_payment_intents:cancel"
REFUND = "stripe_refunds:create"


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> StripeAdapter:
    return StripeAdapter(sandbox.provider_config("stripe"), http)


@pytest.fixture
def sink(env: tuple[StrictSandbox, WebhookSink]) -> WebhookSink:
    return env[1]


def setup_request() -> CheckoutRequest:
    return checkout_request(
        sessionType="setup",
        amount={"total": "0", "shipping": "0", "tax": "0"},
        orderItems=None,
        shipping=None,
    )


def series_request(**changes: Any) -> CheckoutRequest:
    fields: dict[str, Any] = {
        "sessionType": "next_in_series",
        "mandateSessionId": str(uuid.uuid4()),
        "redirectUrls": None,
    }
    fields.update(changes)
    return checkout_request(**fields)


def form_of(sandbox: StrictSandbox, operation: str) -> dict[str, Any]:
    """The last recorded request body of ``operation``, decoded as the spec reads it."""
    recorded = [r for r in sandbox.requests if r.operation == operation]
    assert recorded, f"{operation} was not called"
    schema = None if operation.endswith("sessions:create") else request_schema("stripe", operation)
    return stripe_form_to_dict(recorded[-1].body.decode(), schema)


def called(sandbox: StrictSandbox) -> list[str]:
    return [r.operation for r in sandbox.requests]


async def events(
    adapter: StripeAdapter, sink: WebhookSink, count: int, *, start: int = 0
) -> list[ProviderEvent]:
    """The gateway events of the sink's calls ``start..start+count`` (waits for them)."""
    for _ in range(200):
        if len(sink.calls) >= start + count:
            break
        await asyncio.sleep(0.01)
    calls = sink.calls[start : start + count]
    assert len(calls) == count, [c.body[:80] for c in sink.calls]
    mapped: list[ProviderEvent] = []
    for call in calls:
        mapped += await adapter.parse_webhook(call.headers, call.body)
    return mapped


async def mandate(adapter: StripeAdapter, sink: WebhookSink) -> tuple[str, str]:
    """Customer and saved method of a completed setup session."""
    start = len(sink.calls)
    created = await adapter.create_session(session_input(setup_request()), timeout=5)
    status, _ = await press(created.checkout_url, "pay")
    assert status == 303
    (event,) = await events(adapter, sink, 1, start=start)
    assert event.customer_id is not None
    assert event.payment_method_id is not None
    return event.customer_id, event.payment_method_id


def charge(
    customer: str | None, method: str, *, key: str | None = None, **changes: Any
) -> ChargeInput:
    return ChargeInput(
        session_id=f"ses_{uuid.uuid4().hex[:12]}",
        merchant_id="merchant_42",
        idempotency_key=key or f"gw:{uuid.uuid4()}",
        request=series_request(**changes),
        customer_id=customer,
        payment_method_id=method,
    )


def reference(payment_id: str, amount: str = "140.76") -> PaymentReference:
    return PaymentReference(
        session_reference=payment_id,
        payment_id=payment_id,
        capture_id=None,
        currency="AUD",
        amount=Decimal(amount),
    )


# setup sessions -------------------------------------------------------------------------------


async def test_setup_session_saves_a_method_without_charging(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink, http: aiohttp.ClientSession
) -> None:
    data = session_input(setup_request())
    created = await adapter.create_session(data, timeout=5)

    assert sandbox.violations == []
    form = form_of(sandbox, "stripe_checkout_sessions:create")
    assert form["mode"] == "setup"
    assert form["currency"] == "aud"
    assert form["customer_creation"] == "always"
    assert "line_items" not in form
    assert "payment_intent_data" not in form
    assert form["setup_intent_data"]["metadata"]["gateway_session_id"] == data.session_id
    async with http.get(created.checkout_url) as page:
        html = await page.text()
    assert '<button type="submit" id="pay">Save</button>' in html

    status, location = await press(created.checkout_url, "pay")
    assert (status, location) == (303, "https://merchant.example.com/checkout/success")
    (event,) = await events(adapter, sink, 1)
    assert event.event_type == "checkout.session.completed"
    assert event.status is SessionStatus.COMPLETED
    assert event.session_id == data.session_id
    assert event.reference == created.reference
    assert event.customer_id is not None
    assert event.customer_id.startswith("cus_")
    # the method is the SetupIntent's, looked up (GET /v1/setup_intents/{id})
    setup_id = event.extra["setup_intent"]
    saved = ledger(sandbox.state).setup_intents[setup_id]
    assert event.payment_method_id == saved["payment_method"]
    assert saved["customer"] == event.customer_id
    assert (event.amount, event.currency) == (Decimal(0), "AUD")  # nothing charged
    assert event.payment_id is None
    assert ledger(sandbox.state).intents == {}  # nothing was charged


async def test_setup_needs_a_method_stripe_can_save(adapter: StripeAdapter) -> None:
    request = checkout_request(
        sessionType="setup",
        paymentMethod="klarna",
        amount={"total": "0", "shipping": "0", "tax": "0"},
        orderItems=None,
    )
    with pytest.raises(FlowNotSupported, match="cannot save klarna"):
        await adapter.create_session(session_input(request), timeout=5)


# customer-absent charges --------------------------------------------------------------------


async def test_charge_saved_completes_and_its_webhook_completes_the_session(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    data = charge(customer, method)
    outcome = await adapter.charge_saved(data, timeout=5)

    assert outcome.status is SessionStatus.COMPLETED
    assert outcome.payment_id is not None
    assert outcome.payment_id.startswith("pi_")
    assert (outcome.amount, outcome.currency) == (Decimal("140.76"), "AUD")
    assert sandbox.violations == []
    assert PI_CREATE in called(sandbox)
    form = form_of(sandbox, PI_CREATE)
    assert form["confirm"] is True
    assert form["off_session"] is True
    assert (form["customer"], form["payment_method"]) == (customer, method)
    assert (form["amount"], form["currency"]) == (14076, "aud")
    assert form["capture_method"] == "automatic"
    assert form["metadata"]["gateway_session_id"] == data.session_id
    sent = [r for r in sandbox.requests if r.operation == PI_CREATE][-1].headers
    assert sent["Idempotency-Key"] == data.idempotency_key

    (event,) = await events(adapter, sink, 1, start=1)
    assert event.event_type == "payment_intent.succeeded"
    assert event.status is SessionStatus.COMPLETED
    assert (event.session_id, event.payment_id) == (data.session_id, outcome.payment_id)
    assert (event.amount, event.currency) == (Decimal("140.76"), "AUD")
    assert event.reference is None  # a PaymentIntent is matched by the session id


async def test_a_declined_charge_is_a_failed_outcome_not_an_error(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    await set_fault(sandbox, "stripe", declineOffSession=True)
    data = charge(customer, method)
    outcome = await adapter.charge_saved(data, timeout=5)

    assert outcome.status is SessionStatus.FAILED
    assert outcome.failure_reason == "generic_decline"
    assert outcome.payment_id is not None
    assert outcome.payment_id.startswith("pi_")
    assert outcome.raw_status == "requires_payment_method"
    assert sandbox.violations == []
    (event,) = await events(adapter, sink, 1, start=1)
    assert event.event_type == "payment_intent.payment_failed"
    assert event.status is SessionStatus.FAILED
    assert event.failure_reason == "generic_decline"
    assert event.session_id == data.session_id

    # a retry with the key replays the decline: still one PaymentIntent at Stripe
    again = await adapter.charge_saved(data, timeout=5)
    assert again == outcome
    assert len(ledger(sandbox.state).intents) == 1


async def test_charge_of_an_unknown_method_is_a_rejection(
    sandbox: StrictSandbox, adapter: StripeAdapter
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await adapter.charge_saved(charge("cus_nobody", "pm_unknown"), timeout=5)
    assert caught.value.status == 400
    assert caught.value.code == "resource_missing"
    assert sandbox.violations == []


async def test_charge_timeout_and_server_error(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    await set_fault(sandbox, "stripe", timeout=True)
    with pytest.raises(ProviderTimeout):
        await adapter.charge_saved(charge(customer, method), timeout=0.3)
    await set_fault(sandbox, "stripe", errorRate=1.0)
    with pytest.raises(ProviderUnavailable):
        await adapter.charge_saved(charge(customer, method), timeout=5)
    assert ledger(sandbox.state).intents == {}


async def test_idempotent_charge_retry_charges_once(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    data = charge(customer, method, key="gw:charge-once")
    first = await adapter.charge_saved(data, timeout=5)
    second = await adapter.charge_saved(data, timeout=5)
    assert first == second
    assert len(ledger(sandbox.state).intents) == 1

    other = charge(customer, method, key="gw:charge-once", captureMethod="manual")
    with pytest.raises(ProviderKeyConflict) as caught:
        await adapter.charge_saved(other, timeout=5)
    assert caught.value.in_flight is False
    assert len(ledger(sandbox.state).intents) == 1


async def test_concurrent_retry_meets_the_charge_in_flight(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    await set_fault(sandbox, "stripe", processingMs=300)
    data = charge(customer, method, key="gw:concurrent")
    first = asyncio.create_task(adapter.charge_saved(data, timeout=5))
    await asyncio.sleep(0.1)
    with pytest.raises(ProviderKeyConflict) as caught:
        await adapter.charge_saved(data, timeout=5)
    assert caught.value.in_flight is True
    outcome = await first
    assert outcome.status is SessionStatus.COMPLETED
    assert await adapter.charge_saved(data, timeout=5) == outcome
    assert len(ledger(sandbox.state).intents) == 1


async def test_next_in_series_needs_a_savable_method_and_an_amount(
    sandbox: StrictSandbox, adapter: StripeAdapter
) -> None:
    with pytest.raises(FlowNotSupported, match="cannot save klarna"):
        await adapter.charge_saved(charge("cus_1", "pm_1", paymentMethod="klarna"), timeout=5)
    free = charge(
        "cus_1",
        "pm_1",
        amount={"total": "0", "shipping": "0", "tax": "0"},
        orderItems=[{"name": "Free", "quantity": 1, "unitPrice": "0"}],
    )
    with pytest.raises(FlowNotSupported, match="positive amount"):
        await adapter.charge_saved(free, timeout=5)
    assert sandbox.requests == []


# manual capture and void ----------------------------------------------------------------------


@pytest.mark.parametrize(("amount", "minor"), [("140.76", 14076), ("100.00", 10000), ("0.50", 50)])
async def test_authorize_then_capture_full_or_partial(
    sandbox: StrictSandbox,
    adapter: StripeAdapter,
    sink: WebhookSink,
    amount: str,
    minor: int,
) -> None:
    customer, method = await mandate(adapter, sink)
    data = charge(customer, method, captureMethod="manual")
    authorized = await adapter.charge_saved(data, timeout=5)
    assert authorized.status is SessionStatus.AUTHORIZED
    assert authorized.amount == Decimal("140.76")
    assert form_of(sandbox, PI_CREATE)["capture_method"] == "manual"
    assert authorized.payment_id is not None

    captured = await adapter.capture_payment(
        reference(authorized.payment_id), Decimal(amount), idempotency_key="gw:cap-1", timeout=5
    )
    assert captured.status is SessionStatus.COMPLETED
    assert captured.amount == Decimal(amount)
    assert captured.payment_id == authorized.payment_id
    assert form_of(sandbox, PI_CAPTURE) == {"amount_to_capture": minor}
    assert sandbox.violations == []

    held, done = await events(adapter, sink, 2, start=1)
    assert (held.event_type, held.status) == (
        "payment_intent.amount_capturable_updated",
        SessionStatus.AUTHORIZED,
    )
    assert held.amount == Decimal("140.76")
    assert held.session_id == data.session_id
    assert (done.event_type, done.status) == ("payment_intent.succeeded", SessionStatus.COMPLETED)
    assert done.amount == Decimal(amount)

    # the same key replays; a new capture of a captured payment is refused
    again = await adapter.capture_payment(
        reference(authorized.payment_id), Decimal(amount), idempotency_key="gw:cap-1", timeout=5
    )
    assert again == captured
    with pytest.raises(ProviderRejected) as caught:
        await adapter.capture_payment(
            reference(authorized.payment_id), Decimal(amount), idempotency_key="gw:cap-2", timeout=5
        )
    assert caught.value.code == "payment_intent_unexpected_state"


async def test_capture_above_the_authorization_is_refused(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    authorized = await adapter.charge_saved(
        charge(customer, method, captureMethod="manual"), timeout=5
    )
    assert authorized.payment_id is not None
    with pytest.raises(ProviderRejected) as caught:
        await adapter.capture_payment(
            reference(authorized.payment_id), Decimal("140.77"), idempotency_key="k", timeout=5
        )
    assert caught.value.code == "amount_too_large"
    assert ledger(sandbox.state).intents[authorized.payment_id]["status"] == "requires_capture"


async def test_void_releases_the_authorization(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    data = charge(customer, method, captureMethod="manual")
    authorized = await adapter.charge_saved(data, timeout=5)
    assert authorized.payment_id is not None

    voided = await adapter.void_payment(
        reference(authorized.payment_id), idempotency_key="gw:void-1", timeout=5
    )
    assert voided.status is SessionStatus.CANCELLED
    assert voided.raw_status == "canceled"
    assert PI_CANCEL in called(sandbox)
    assert sandbox.violations == []
    _, cancelled = await events(adapter, sink, 2, start=1)
    assert (cancelled.event_type, cancelled.status) == (
        "payment_intent.canceled",
        SessionStatus.CANCELLED,
    )
    assert cancelled.session_id == data.session_id

    with pytest.raises(ProviderRejected):
        await adapter.void_payment(
            reference(authorized.payment_id), idempotency_key="gw:void-2", timeout=5
        )


async def test_hosted_manual_capture_session_reports_the_authorization(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    data = session_input(checkout_request(captureMethod="manual"))
    created = await adapter.create_session(data, timeout=5)
    await press(created.checkout_url, "pay")
    completed, held = await events(adapter, sink, 2)

    assert (completed.event_type, completed.status) == (
        "checkout.session.completed",
        SessionStatus.PROCESSING,  # "unpaid": nothing is captured yet
    )
    assert (held.event_type, held.status) == (
        "payment_intent.amount_capturable_updated",
        SessionStatus.AUTHORIZED,
    )
    assert held.session_id == data.session_id
    assert held.payment_id == completed.payment_id
    assert held.amount == Decimal("140.76")
    assert held.payment_id is not None

    payment = PaymentReference(created.reference, held.payment_id, None, "AUD", Decimal("140.76"))
    captured = await adapter.capture_payment(
        payment, Decimal("140.76"), idempotency_key="gw:cap", timeout=5
    )
    assert captured.status is SessionStatus.COMPLETED
    assert sandbox.violations == []


# refunds --------------------------------------------------------------------------------------


def refund(payment_id: str, amount: str, *, key: str, reason: str | None = None) -> RefundInput:
    return RefundInput(
        payment=reference(payment_id),
        refund_id=f"ref_{key}",
        session_id="ses_refunded",
        amount=Decimal(amount),
        currency="AUD",
        reason=reason,
        idempotency_key=key,
    )


async def test_refund_is_pending_then_its_webhooks_report_success(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    paid = await adapter.charge_saved(charge(customer, method), timeout=5)
    assert paid.payment_id is not None
    await events(adapter, sink, 1, start=1)

    asked = refund(paid.payment_id, "40.00", key="r1", reason="requested_by_customer")
    outcome = await adapter.refund_payment(asked, timeout=5)
    assert outcome.status is RefundStatus.PENDING
    assert outcome.provider_refund_id is not None
    assert outcome.provider_refund_id.startswith("re_")
    form = form_of(sandbox, REFUND)
    assert form == {
        "payment_intent": paid.payment_id,
        "amount": 4000,
        "reason": "requested_by_customer",
        "metadata": {"gateway_refund_id": "ref_r1", "gateway_session_id": "ses_refunded"},
    }
    assert sandbox.violations == []

    updates = await events(adapter, sink, 2, start=2)
    assert [e.event_type for e in updates] == ["refund.updated", "charge.refunded"]
    for event in updates:
        assert event.status is None
        assert event.session_id == "ses_refunded"
        assert event.refund is not None
        assert event.refund.status is RefundStatus.SUCCEEDED
        assert event.refund.refund_id == "ref_r1"
        assert event.refund.provider_refund_id == outcome.provider_refund_id
        assert (event.refund.amount, event.refund.currency) == (Decimal("40.00"), "AUD")

    # the retry under the key is the same refund; more than what is left is refused
    assert await adapter.refund_payment(asked, timeout=5) == outcome
    assert len(ledger(sandbox.state).refunds) == 1
    with pytest.raises(ProviderRejected) as caught:
        await adapter.refund_payment(refund(paid.payment_id, "100.77", key="r2"), timeout=5)
    assert caught.value.issue == "amount"
    second = await adapter.refund_payment(refund(paid.payment_id, "100.76", key="r3"), timeout=5)
    assert second.status is RefundStatus.PENDING
    # charge.refunded of the second refund lists both, each under its own event id
    later = await events(adapter, sink, 2, start=4)
    listed = [e for e in later if e.event_type == "charge.refunded"]
    assert {e.refund.refund_id for e in listed if e.refund} == {"ref_r1", "ref_r3"}
    assert len({e.event_id for e in listed}) == 2


async def test_a_reason_stripe_does_not_know_goes_to_metadata(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    paid = await adapter.charge_saved(charge(customer, method), timeout=5)
    assert paid.payment_id is not None
    await adapter.refund_payment(
        refund(paid.payment_id, "1.00", key="r", reason="damaged in transit"), timeout=5
    )
    form = form_of(sandbox, REFUND)
    assert "reason" not in form
    assert form["metadata"]["gateway_reason"] == "damaged in transit"
    assert sandbox.violations == []


async def test_refund_of_an_authorization_is_refused(
    adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    held = await adapter.charge_saved(charge(customer, method, captureMethod="manual"), timeout=5)
    assert held.payment_id is not None
    with pytest.raises(ProviderRejected) as caught:
        await adapter.refund_payment(refund(held.payment_id, "1.00", key="r"), timeout=5)
    assert caught.value.code == "charge_not_refundable"


async def test_operations_need_a_payment_intent(adapter: StripeAdapter) -> None:
    with pytest.raises(FlowNotSupported):
        await adapter.void_payment(reference("cs_test_123"), idempotency_key="k", timeout=5)


async def test_duplicate_webhook_deliveries_map_to_the_same_events(
    adapter: StripeAdapter, sink: WebhookSink
) -> None:
    customer, method = await mandate(adapter, sink)
    paid = await adapter.charge_saved(charge(customer, method), timeout=5)
    assert paid.payment_id is not None
    await adapter.refund_payment(refund(paid.payment_id, "5.00", key="d"), timeout=5)
    await events(adapter, sink, 4)
    for call in sink.calls[1:]:
        first = await adapter.parse_webhook(call.headers, call.body)
        again = await adapter.parse_webhook(call.headers, call.body)
        assert first == again  # same event ids: the gateway applies them once


# the emulator answers in Stripe's documented shapes -------------------------------------------


async def _raw(
    http: aiohttp.ClientSession, sandbox: StrictSandbox, path: str, params: dict[str, Any]
) -> tuple[int, Any]:
    headers = {
        "Authorization": "Bearer sk_test_sandbox",
        "Content-Type": "application/x-www-form-urlencoded",
        "Idempotency-Key": str(uuid.uuid4()),
    }
    url = f"{sandbox.base_url('stripe')}{path}"
    async with http.post(url, data=encode_form(params), headers=headers) as response:
        return response.status, await response.json()


async def test_sandbox_answers_match_the_spec_responses(
    sandbox: StrictSandbox, adapter: StripeAdapter, sink: WebhookSink, http: aiohttp.ClientSession
) -> None:
    customer, method = await mandate(adapter, sink)
    base = {"amount": 5000, "currency": "aud", "confirm": True, "off_session": True}
    params = {**base, "customer": customer, "payment_method": method, "capture_method": "manual"}
    status, held = await _raw(http, sandbox, "/v1/payment_intents", params)
    assert status == 200
    assert validate_response("stripe", 200, held, PI_CREATE) == []
    status, captured = await _raw(
        http, sandbox, f"/v1/payment_intents/{held['id']}/capture", {"amount_to_capture": 4000}
    )
    assert (status, captured["status"], captured["amount_received"]) == (200, "succeeded", 4000)
    assert validate_response("stripe", 200, captured, PI_CAPTURE) == []
    status, refunded = await _raw(
        http, sandbox, "/v1/refunds", {"payment_intent": held["id"], "amount": 100}
    )
    assert status == 200
    assert validate_response("stripe", 200, refunded, REFUND) == []

    status, other = await _raw(http, sandbox, "/v1/payment_intents", {**params, "amount": 700})
    status, cancelled = await _raw(http, sandbox, f"/v1/payment_intents/{other['id']}/cancel", {})
    assert (status, cancelled["status"]) == (200, "canceled")
    assert validate_response("stripe", 200, cancelled, PI_CANCEL) == []

    await set_fault(sandbox, "stripe", declineOffSession=True)
    status, declined = await _raw(http, sandbox, "/v1/payment_intents", params)
    assert status == 402
    assert declined["error"]["type"] == "card_error"
    assert declined["error"]["payment_intent"]["status"] == "requires_payment_method"
    assert validate_response("stripe", 402, declined, PI_CREATE) == []
    assert sandbox.violations == []
