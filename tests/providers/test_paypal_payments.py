"""PayPal after the checkout, against the strict sandbox on real sockets: setup sessions (Vault
v3 setup token -> approval webhook -> payment token), manual capture (authorize, capture in full
or in part, void), refunds, customer-absent charges of a vaulted wallet, their webhooks, and
idempotent retries. Every request is validated against the spec files by the strict sandbox."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.domain.models import CheckoutRequest
from gateway.domain.session import RefundStatus, SessionStatus
from providers.base import (
    AUTHORIZE,
    CAPTURE,
    VAULT,
    ChargeInput,
    PaymentOperations,
    PaymentReference,
    ProviderEvent,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RefundInput,
)
from providers.paypal.adapter import PAYPAL_CAPABILITIES, PayPalAdapter
from providers.paypal.transformers import session_of_customer, setup_customer_id
from providers.paypal.webhooks import event_from_paypal
from providers.sandbox.paypal_api import PayPalSandbox, paypal_sandbox
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

PAYMENTS = "paypal_payments_v2"
VAULT_SPEC = "paypal_vault_v3"


@pytest.fixture
def pp(sandbox: StrictSandbox) -> PayPalSandbox:
    return paypal_sandbox(sandbox.state)


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> PayPalAdapter:
    return PayPalAdapter(sandbox.provider_config("paypal"), http)


def paypal_request(**changes: Any) -> CheckoutRequest:
    data = seed_data()
    data["paymentMethod"] = "paypal"
    data.update(changes)
    return request_from(data)


def setup_request() -> CheckoutRequest:
    data = seed_data()
    data.update(paymentMethod="paypal", sessionType="setup", amount={"total": Decimal(0)})
    data.pop("orderItems")
    return request_from(data)


def series_request(**changes: Any) -> CheckoutRequest:
    data = seed_data()
    data.update(
        paymentMethod="paypal", sessionType="next_in_series", mandateSessionId=str(uuid.uuid4())
    )
    data.pop("redirectUrls")
    data.update(changes)
    return request_from(data)


def operations_called(sandbox: StrictSandbox) -> list[str]:
    assert sandbox.violations == [], [v.problems for v in sandbox.violations]
    return [r.operation for r in sandbox.requests]


async def hooks(adapter: PayPalAdapter, sink: WebhookSink, count: int) -> list[ProviderEvent]:
    """The first ``count`` webhooks the sandbox sent, verified and mapped by the adapter."""
    await wait_for(lambda: len(sink.calls) >= count)
    events = []
    for call in sink.calls[:count]:
        events.extend(await adapter.parse_webhook(call.headers, call.body))
    return events


async def paid_order(adapter: PayPalAdapter, intent: str, **changes: Any) -> ProviderEvent:
    """An order the payer approved and the gateway captured (or authorized)."""
    session_id = str(uuid.uuid4())
    request = paypal_request(
        captureMethod="manual" if intent == AUTHORIZE else "automatic", **changes
    )
    data = checkout_input(request, key=f"m-1:{uuid.uuid4()}:paypal", session_id=session_id)
    created = await adapter.create_session(data, timeout=5)
    assert (await press(created.checkout_url, "pay"))[0] == 303
    event = await adapter.complete_approved(
        created.reference, intent=intent, idempotency_key=f"{intent}-{uuid.uuid4()}", timeout=5
    )
    assert event is not None
    return event


def reference_of(event: ProviderEvent) -> PaymentReference:
    assert event.reference is not None
    assert event.amount is not None
    assert event.currency
    return PaymentReference(
        session_reference=event.reference,
        payment_id=event.payment_id,
        capture_id=event.capture_id,
        currency=event.currency,
        amount=event.amount,
    )


def charge_input(method: str, request: CheckoutRequest | None = None) -> ChargeInput:
    return ChargeInput(
        session_id=str(uuid.uuid4()),
        merchant_id="m-1",
        idempotency_key=f"m-1:{uuid.uuid4()}:paypal",
        request=request or series_request(),
        customer_id=None,
        payment_method_id=method,
    )


def test_capabilities_say_what_paypal_does() -> None:
    assert PAYPAL_CAPABILITIES.session_types == {
        "one_time",
        "first_in_series",
        "setup",
        "next_in_series",
    }
    assert (PAYPAL_CAPABILITIES.partial_capture, PAYPAL_CAPABILITIES.authorization_days) == (
        True,
        29,
    )


def test_the_session_id_survives_the_vault_customer_id() -> None:
    session_id = str(uuid.uuid4())
    customer = setup_customer_id(session_id)
    assert customer is not None
    assert len(customer) == 22
    assert session_of_customer(customer) == session_id
    assert setup_customer_id("ses_not_a_uuid") is None
    assert session_of_customer("short") is None
    assert session_of_customer(None) is None


# setup ------------------------------------------------------------------------------------


async def test_setup_session_saves_the_wallet_without_charging(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    sandbox, sink = env
    assert isinstance(adapter, PaymentOperations)
    session_id = str(uuid.uuid4())
    data = checkout_input(setup_request(), key="m-1:setup-1:paypal", session_id=session_id)
    created = await adapter.create_session(data, timeout=5)
    async with aiohttp.ClientSession() as client, client.get(created.checkout_url) as page:
        html = await page.text()
    assert 'id="pay">Save</button>' in html
    status, location = await press(created.checkout_url, "pay")
    assert (status, location.startswith("https://merchant.example.com/checkout/success")) == (
        303,
        True,
    )
    [approval] = await hooks(adapter, sink, 1)
    assert (approval.event_type, approval.status) == (
        "VAULT.SETUP-TOKEN.APPROVED",
        SessionStatus.PROCESSING,
    )
    assert approval.awaits_completion
    assert (approval.session_id, approval.reference) == (session_id, created.reference)
    saved = await adapter.complete_approved(
        created.reference, intent=VAULT, idempotency_key="vault-1", timeout=5
    )
    again = await adapter.complete_approved(
        created.reference, intent=VAULT, idempotency_key="vault-1", timeout=5
    )
    assert saved is not None
    assert saved == again
    assert saved.status is SessionStatus.COMPLETED
    assert saved.payment_method_id in pp.vault
    assert saved.customer_id == setup_customer_id(session_id)
    assert pp.charges == []
    assert not pp.payments
    assert operations_called(sandbox) == [
        f"{VAULT_SPEC}:setup_tokens_create",
        f"{VAULT_SPEC}:payment_tokens_create",
        f"{VAULT_SPEC}:payment_tokens_create",
    ]
    [setup_call, token_call, _] = sandbox.requests
    assert orjson.loads(setup_call.body)["payment_source"]["paypal"]["usage_type"] == "MERCHANT"
    assert token_call.headers["PayPal-Request-Id"] == "vault-1"
    # the saved wallet pays a customer-absent charge
    outcome = await adapter.charge_saved(charge_input(saved.payment_method_id or ""), timeout=5)
    assert outcome.status is SessionStatus.COMPLETED


async def test_a_setup_token_the_payer_did_not_approve_is_not_vaulted(
    adapter: PayPalAdapter, env: tuple[StrictSandbox, WebhookSink]
) -> None:
    sink = env[1]
    data = checkout_input(setup_request(), key="m-1:setup-2:paypal", session_id=str(uuid.uuid4()))
    created = await adapter.create_session(data, timeout=5)
    with pytest.raises(ProviderRejected) as refused:
        await adapter.complete_approved(
            created.reference, intent=VAULT, idempotency_key="v", timeout=5
        )
    assert refused.value.issue == "SETUP_TOKEN_NOT_APPROVED"
    assert (await press(created.checkout_url, "cancel"))[0] == 303
    assert sink.calls == []  # PayPal says nothing about a setup the payer abandoned


async def test_setup_token_request_id_is_idempotent(
    adapter: PayPalAdapter, pp: PayPalSandbox, sandbox: StrictSandbox
) -> None:
    data = checkout_input(setup_request(), key="m-1:setup-3:paypal", session_id=str(uuid.uuid4()))
    first = await adapter.create_session(data, timeout=5)
    second = await adapter.create_session(data, timeout=5)
    assert first == second
    assert len([s for s in sandbox.state.sessions["paypal"].values() if s.saves_only]) == 1


# manual capture ---------------------------------------------------------------------------


async def test_manual_capture_in_part_then_the_rest_is_released(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    sandbox, sink = env
    authorized = await paid_order(adapter, AUTHORIZE)
    assert authorized.status is SessionStatus.AUTHORIZED
    assert authorized.payment_id in pp.payments
    assert authorized.capture_id is None
    payment = reference_of(authorized)
    captured = await adapter.capture_payment(
        payment, Decimal("40.00"), idempotency_key="cap-1", timeout=5
    )
    replay = await adapter.capture_payment(
        payment, Decimal("40.00"), idempotency_key="cap-1", timeout=5
    )
    assert captured == replay
    assert (captured.status, captured.amount, captured.payment_id) == (
        SessionStatus.COMPLETED,
        Decimal("40.00"),
        authorized.payment_id,
    )
    assert captured.capture_id in pp.payments
    assert len([p for p in pp.payments.values() if p.kind == "captures"]) == 1
    authorization = pp.payments[authorized.payment_id or ""].resource
    assert authorization["status"] == "CAPTURED"  # final_capture released the rest
    with pytest.raises(ProviderRejected) as refused:
        await adapter.capture_payment(payment, Decimal("1.00"), idempotency_key="c2", timeout=5)
    assert refused.value.issue == "AUTHORIZATION_ALREADY_CAPTURED"
    capture_call = next(r for r in sandbox.requests if r.operation.endswith("capture"))
    assert orjson.loads(capture_call.body) == {
        "amount": {"currency_code": "AUD", "value": "40.00"},
        "final_capture": True,
    }
    assert capture_call.headers["PayPal-Request-Id"] == "cap-1"
    assert f"{PAYMENTS}:authorizations_capture" in operations_called(sandbox)
    # the webhooks: authorization, then the capture (naming both)
    events = await hooks(adapter, sink, 3)
    assert [(e.event_type, e.status) for e in events[1:]] == [
        ("PAYMENT.AUTHORIZATION.CREATED", SessionStatus.AUTHORIZED),
        ("PAYMENT.CAPTURE.COMPLETED", SessionStatus.COMPLETED),
    ]
    capture_hook = events[2]
    assert (capture_hook.payment_id, capture_hook.capture_id, capture_hook.amount) == (
        authorized.payment_id,
        captured.capture_id,
        Decimal("40.00"),
    )
    assert capture_hook.session_id == authorized.session_id
    assert capture_hook.reference == authorized.reference


async def test_capturing_more_than_authorized_is_refused(adapter: PayPalAdapter) -> None:
    payment = reference_of(await paid_order(adapter, AUTHORIZE))
    with pytest.raises(ProviderRejected) as refused:
        await adapter.capture_payment(
            payment, Decimal("140.77"), idempotency_key="too-much", timeout=5
        )
    assert refused.value.issue == "MAX_CAPTURE_AMOUNT_EXCEEDED"


async def test_void_cancels_and_a_second_void_is_already_voided(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    sandbox, sink = env
    authorized = await paid_order(adapter, AUTHORIZE)
    payment = reference_of(authorized)
    voided = await adapter.void_payment(payment, idempotency_key="void-1", timeout=5)
    again = await adapter.void_payment(payment, idempotency_key="void-1", timeout=5)
    assert (voided.status, again.status) == (SessionStatus.CANCELLED, SessionStatus.CANCELLED)
    assert (voided.raw_status, again.raw_status) == ("VOIDED", "VOIDED")
    void_calls = [r for r in sandbox.requests if r.operation == f"{PAYMENTS}:authorizations_void"]
    assert len(void_calls) == 2
    assert all("PayPal-Request-Id" not in r.headers and r.body == b"" for r in void_calls)
    operations_called(sandbox)
    late = await adapter.capture_payment(
        payment, Decimal("1.00"), idempotency_key="late", timeout=5
    )
    assert (late.status, late.failure_reason) == (SessionStatus.CANCELLED, "AUTHORIZATION_VOIDED")
    events = await hooks(adapter, sink, 3)
    assert (events[2].event_type, events[2].status, events[2].payment_id) == (
        "PAYMENT.AUTHORIZATION.VOIDED",
        SessionStatus.CANCELLED,
        authorized.payment_id,
    )


async def test_a_captured_authorization_cannot_be_voided(adapter: PayPalAdapter) -> None:
    payment = reference_of(await paid_order(adapter, AUTHORIZE))
    await adapter.capture_payment(payment, payment.amount, idempotency_key="all", timeout=5)
    with pytest.raises(ProviderRejected) as refused:
        await adapter.void_payment(payment, idempotency_key="v", timeout=5)
    assert refused.value.issue == "PREVIOUSLY_CAPTURED"


# refunds ----------------------------------------------------------------------------------


def refund_input(payment: PaymentReference, amount: str, key: str = "r-1") -> RefundInput:
    return RefundInput(
        payment=payment,
        refund_id=f"rf_{key}",
        session_id="2b1d4c8e-0000-4000-8000-000000000001",
        amount=Decimal(amount),
        currency=payment.currency,
        reason="requested_by_customer",
        idempotency_key=key,
    )


async def test_refund_of_a_capture_and_its_webhook(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    sandbox, sink = env
    captured = await paid_order(adapter, CAPTURE)
    assert captured.status is SessionStatus.COMPLETED
    assert captured.capture_id == captured.payment_id  # automatic capture: the capture itself
    payment = reference_of(captured)
    data = refund_input(payment, "40.00")
    outcome = await adapter.refund_payment(data, timeout=5)
    replay = await adapter.refund_payment(data, timeout=5)
    assert outcome == replay
    assert pp.refunds == [outcome.provider_refund_id]
    assert outcome.status is RefundStatus.SUCCEEDED
    call = next(r for r in sandbox.requests if r.operation == f"{PAYMENTS}:captures_refund")
    assert orjson.loads(call.body) == {
        "amount": {"currency_code": "AUD", "value": "40.00"},
        "invoice_id": "rf_r-1",
        "custom_id": data.session_id,
        "note_to_payer": "requested by customer",
    }
    assert call.headers["PayPal-Request-Id"] == "r-1"
    operations_called(sandbox)
    events = await hooks(adapter, sink, 3)
    refunded = events[2]
    assert (refunded.event_type, refunded.status, refunded.session_id) == (
        "PAYMENT.CAPTURE.REFUNDED",
        None,
        data.session_id,
    )
    assert refunded.refund is not None
    assert (
        refunded.refund.status,
        refunded.refund.refund_id,
        refunded.refund.provider_refund_id,
        refunded.refund.amount,
        refunded.refund.currency,
    ) == (RefundStatus.SUCCEEDED, "rf_r-1", outcome.provider_refund_id, Decimal("40.00"), "AUD")
    # a duplicate delivery maps to the same update
    [duplicate] = await adapter.parse_webhook(sink.calls[2].headers, sink.calls[2].body)
    assert duplicate == refunded
    with pytest.raises(ProviderRejected) as refused:
        await adapter.refund_payment(refund_input(payment, "100.77", key="r-2"), timeout=5)
    assert refused.value.issue == "REFUND_AMOUNT_EXCEEDED"
    rest = await adapter.refund_payment(refund_input(payment, "100.76", key="r-3"), timeout=5)
    assert rest.status is RefundStatus.SUCCEEDED
    assert pp.payments[payment.capture_id or ""].resource["status"] == "REFUNDED"


@pytest.mark.parametrize(
    ("state", "expected", "event_type"),
    [
        ("PENDING", RefundStatus.PENDING, "PAYMENT.REFUND.PENDING"),
        ("FAILED", RefundStatus.FAILED, "PAYMENT.REFUND.FAILED"),
    ],
)
async def test_refunds_paypal_has_not_completed(
    env: tuple[StrictSandbox, WebhookSink],
    adapter: PayPalAdapter,
    pp: PayPalSandbox,
    state: str,
    expected: RefundStatus,
    event_type: str,
) -> None:
    _, sink = env
    payment = reference_of(await paid_order(adapter, CAPTURE))
    pp.refund_status = state
    outcome = await adapter.refund_payment(refund_input(payment, "10.00"), timeout=5)
    assert outcome.status is expected
    assert (outcome.failure_reason is not None) is (expected is RefundStatus.FAILED)
    event = (await hooks(adapter, sink, 3))[2]
    assert event.event_type == event_type
    assert event.refund is not None
    assert event.refund.status is expected


async def test_a_refund_key_used_with_another_body_is_a_key_conflict(
    adapter: PayPalAdapter,
) -> None:
    payment = reference_of(await paid_order(adapter, CAPTURE))
    await adapter.refund_payment(refund_input(payment, "10.00", key="same"), timeout=5)
    with pytest.raises(ProviderKeyConflict):
        await adapter.refund_payment(refund_input(payment, "11.00", key="same"), timeout=5)


# customer-absent charges --------------------------------------------------------------------


async def vaulted(adapter: PayPalAdapter) -> str:
    """The vault id of a first_in_series payment."""
    event = await paid_order(adapter, CAPTURE, sessionType="first_in_series")
    assert event.payment_method_id
    return event.payment_method_id


async def test_charge_saved_captures_at_once(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    sandbox, sink = env
    method = await vaulted(adapter)
    data = charge_input(method)
    outcome = await adapter.charge_saved(data, timeout=5)
    replay = await adapter.charge_saved(data, timeout=5)
    assert outcome == replay
    assert len(pp.charges) == 1
    assert (outcome.status, outcome.amount, outcome.currency) == (
        SessionStatus.COMPLETED,
        Decimal("140.76"),
        "AUD",
    )
    assert outcome.payment_id == outcome.capture_id
    assert outcome.capture_id in pp.payments
    assert outcome.reference == pp.charges[0]
    call = sandbox.requests[-1]
    assert call.operation == f"{VAULT_SPEC}:orders_create_with_vault"
    body = orjson.loads(call.body)
    assert body["payment_source"] == {"paypal": {"vault_id": method}}
    assert (body["intent"], body["purchase_units"][0]["custom_id"]) == ("CAPTURE", data.session_id)
    assert "experience_context" not in body["payment_source"]["paypal"]
    operations_called(sandbox)
    event = (await hooks(adapter, sink, 3))[2]
    assert (event.event_type, event.status, event.session_id, event.reference) == (
        "PAYMENT.CAPTURE.COMPLETED",
        SessionStatus.COMPLETED,
        data.session_id,
        outcome.reference,
    )
    assert event.capture_id == outcome.capture_id


async def test_charge_saved_with_manual_capture_authorizes(
    adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    method = await vaulted(adapter)
    outcome = await adapter.charge_saved(
        charge_input(method, series_request(captureMethod="manual")), timeout=5
    )
    assert (outcome.status, outcome.capture_id) == (SessionStatus.AUTHORIZED, None)
    assert pp.payments[outcome.payment_id or ""].kind == "authorizations"


@pytest.mark.parametrize(
    ("capture_method", "reason"),
    [("automatic", "capture declined"), ("manual", "INSTRUMENT_DECLINED")],
)
async def test_declined_customer_absent_charges_are_failed_outcomes(
    sandbox: StrictSandbox, adapter: PayPalAdapter, capture_method: str, reason: str
) -> None:
    method = await vaulted(adapter)
    await set_fault(sandbox, "paypal", declineOffSession=True)
    outcome = await adapter.charge_saved(
        charge_input(method, series_request(captureMethod=capture_method)), timeout=5
    )
    assert (outcome.status, outcome.failure_reason) == (SessionStatus.FAILED, reason)


async def test_charge_saved_timeout_is_retryable(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    method = await vaulted(adapter)
    await set_fault(sandbox, "paypal", timeout=True)
    with pytest.raises(ProviderTimeout):
        await adapter.charge_saved(charge_input(method), timeout=0.3)


async def test_an_unknown_vault_id_is_refused(adapter: PayPalAdapter) -> None:
    with pytest.raises(ProviderRejected) as refused:
        await adapter.charge_saved(charge_input("nosuchtoken"), timeout=5)
    assert refused.value.status == 404


async def test_decline_off_session_is_an_admin_fault(sandbox: StrictSandbox) -> None:
    async with aiohttp.ClientSession() as client:
        url = sandbox.url("/sandbox/admin/faults")
        async with client.post(url, json={"provider": "paypal", "declineOffSession": 1}) as bad:
            assert bad.status == 400
        await set_fault(sandbox, "paypal", declineOffSession=True)
        async with client.get(url) as current:
            assert (await current.json())["paypal"]["declineOffSession"] is True


# webhook mapping ----------------------------------------------------------------------------


def _refund_hook(event_type: str, status: str, **resource: Any) -> dict[str, Any]:
    return {
        "id": "WH-R1",
        "event_type": event_type,
        "create_time": "2024-05-01T10:00:00Z",
        "resource": {
            "id": "REF1",
            "status": status,
            "amount": {"currency_code": "JPY", "value": "1000"},
            "custom_id": "ses_9",
            "invoice_id": "rf_9",
            **resource,
        },
    }


@pytest.mark.parametrize(
    ("event_type", "status", "expected"),
    [
        ("PAYMENT.CAPTURE.REFUNDED", "COMPLETED", RefundStatus.SUCCEEDED),
        ("PAYMENT.REFUND.PENDING", "PENDING", RefundStatus.PENDING),
        ("PAYMENT.REFUND.FAILED", "FAILED", RefundStatus.FAILED),
        ("PAYMENT.REFUND.CANCELLED", "CANCELLED", RefundStatus.FAILED),
        ("PAYMENT.REFUND.PENDING", "SOMETHING_NEW", RefundStatus.PENDING),
    ],
)
def test_refund_events_move_refunds_not_sessions(
    event_type: str, status: str, expected: RefundStatus
) -> None:
    event = event_from_paypal(_refund_hook(event_type, status))
    assert (event.status, event.session_id, event.reference) == (None, "ses_9", None)
    assert event.refund is not None
    assert (event.refund.status, event.refund.refund_id, event.refund.provider_refund_id) == (
        expected,
        "rf_9",
        "REF1",
    )
    assert (event.refund.amount, event.refund.currency) == (Decimal(1000), "JPY")
    assert (event.refund.failure_reason is None) is (expected is not RefundStatus.FAILED)
    assert event_from_paypal(_refund_hook(event_type, status)) == event  # duplicates agree


def test_a_failed_refund_reports_paypals_reason() -> None:
    hook = _refund_hook("PAYMENT.REFUND.FAILED", "FAILED", status_details={"reason": "ECHECK"})
    event = event_from_paypal(hook)
    assert event.refund is not None
    assert event.refund.failure_reason == "ECHECK"


def test_a_capture_of_an_authorization_names_both() -> None:
    event = event_from_paypal(
        {
            "id": "WH-C1",
            "event_type": "PAYMENT.CAPTURE.COMPLETED",
            "resource": {
                "id": "CAP9",
                "status": "COMPLETED",
                "custom_id": "ses_9",
                "amount": {"currency_code": "USD", "value": "40.00"},
                "supplementary_data": {
                    "related_ids": {"order_id": "ORD9", "authorization_id": "AUTH9"}
                },
            },
        }
    )
    assert (event.status, event.payment_id, event.capture_id, event.reference) == (
        SessionStatus.COMPLETED,
        "AUTH9",
        "CAP9",
        "ORD9",
    )
    assert event.amount == Decimal("40.00")


@pytest.mark.parametrize(
    ("event_type", "status", "expected"),
    [
        ("PAYMENT.AUTHORIZATION.CREATED", "CREATED", SessionStatus.AUTHORIZED),
        ("PAYMENT.AUTHORIZATION.CREATED", "PENDING", SessionStatus.PROCESSING),
        ("PAYMENT.AUTHORIZATION.VOIDED", "VOIDED", SessionStatus.CANCELLED),
    ],
)
def test_authorization_events(event_type: str, status: str, expected: SessionStatus) -> None:
    event = event_from_paypal(
        {
            "id": "WH-A1",
            "event_type": event_type,
            "resource": {"id": "AUTH9", "status": status, "custom_id": "ses_9"},
        }
    )
    assert (event.status, event.payment_id, event.capture_id) == (expected, "AUTH9", None)


def test_a_setup_token_of_an_unknown_customer_names_no_session() -> None:
    event = event_from_paypal(
        {
            "id": "WH-S1",
            "event_type": "VAULT.SETUP-TOKEN.APPROVED",
            "resource": {"id": "TOK1", "status": "APPROVED", "customer": {"id": "merchant-cust"}},
        }
    )
    assert (event.session_id, event.reference, event.awaits_completion) == (None, "TOK1", True)


async def test_a_pending_capture_is_processing(adapter: PayPalAdapter, pp: PayPalSandbox) -> None:
    payment = reference_of(await paid_order(adapter, AUTHORIZE))
    pp.capture_status = "PENDING"
    outcome = await adapter.capture_payment(payment, payment.amount, idempotency_key="p", timeout=5)
    assert (outcome.status, outcome.raw_status) == (SessionStatus.PROCESSING, "PENDING")
    assert outcome.capture_id in pp.payments


async def test_injected_faults_apply_to_the_calls_after_the_checkout(
    sandbox: StrictSandbox, adapter: PayPalAdapter, pp: PayPalSandbox
) -> None:
    payment = reference_of(await paid_order(adapter, AUTHORIZE))
    await set_fault(sandbox, "paypal", errorRate=1)
    with pytest.raises(ProviderUnavailable):
        await adapter.capture_payment(payment, payment.amount, idempotency_key="f", timeout=5)
    with pytest.raises(ProviderUnavailable):
        await adapter.void_payment(payment, idempotency_key="f", timeout=5)
    assert pp.payments[payment.payment_id or ""].resource["status"] == "CREATED"
