"""The Adyen calls after the checkout against the strict-contract sandbox on real sockets:
setup sessions, customer-absent charges of the stored token (``/payments``), captures, cancels
and refunds, their idempotency, and the notifications each of them causes."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.domain.session import RefundStatus, SessionStatus
from gateway.settings import SANDBOX_SECRETS
from providers.adyen import payments
from providers.adyen.adapter import AdyenAdapter
from providers.adyen.transformers import hmac_signature
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
from providers.sandbox.adyen_payments import ledger
from tests.contracts.spec_validator import validate_response
from tests.contracts.strict_sandbox import StrictSandbox
from tests.providers.hosted_inputs import (
    WebhookSink,
    checkout_input,
    press,
    request_from,
    seed_data,
    set_fault,
)

HMAC_KEY = SANDBOX_SECRETS["adyen"]["hmac_key"]
SETUP_ID = "11111111-1111-4111-8111-111111111111"
CHARGE_ID = "22222222-2222-4222-8222-222222222222"
Env = tuple[StrictSandbox, WebhookSink]


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> AdyenAdapter:
    return AdyenAdapter(sandbox.provider_config("adyen"), http)


def _setup_request() -> Any:
    data = seed_data()
    data.update(sessionType="setup", customerReference="cust-42")
    data["amount"] = {"total": Decimal(0)}
    del data["orderItems"]
    return request_from(data)


def _series_request(**changes: Any) -> Any:
    data = seed_data()
    data.update(sessionType="next_in_series", mandateSessionId=SETUP_ID, **changes)
    del data["redirectUrls"]
    return request_from(data)


async def _calls(sink: WebhookSink, count: int) -> None:
    """Wait (briefly) until the sink holds ``count`` notifications."""
    for _ in range(200):
        if len(sink.calls) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} notifications, got {len(sink.calls)}")


async def _event(adapter: AdyenAdapter, sink: WebhookSink, index: int) -> ProviderEvent:
    await _calls(sink, index + 1)
    [event] = await adapter.parse_webhook({}, sink.calls[index].body)
    return event


async def _saved_method(env: Env, adapter: AdyenAdapter) -> ProviderEvent:
    """A setup session paid ("saved") on the hosted page: its AUTHORISATION event."""
    _, sink = env
    session = await adapter.create_session(
        checkout_input(_setup_request(), session_id=SETUP_ID), timeout=5
    )
    status, _ = await press(session.checkout_url, "pay")
    assert status == 303
    return await _event(adapter, sink, 0)


def _charge(token: str, key: str = "m1:charge-key:adyen", **changes: Any) -> ChargeInput:
    return ChargeInput(
        session_id=CHARGE_ID,
        merchant_id="merchant-1",
        idempotency_key=key,
        request=_series_request(**changes),
        customer_id="cust-42",
        payment_method_id=token,
    )


def _operations(sandbox: StrictSandbox) -> list[str]:
    return [r.operation for r in sandbox.requests]


def _body(sandbox: StrictSandbox, operation: str) -> dict[str, Any]:
    bodies = [r.body for r in sandbox.requests if r.operation == operation]
    assert bodies, operation
    parsed: dict[str, Any] = orjson.loads(bodies[-1])
    return parsed


# setup ----------------------------------------------------------------------------------------


async def test_setup_session_saves_the_card_without_charging(
    env: Env, adapter: AdyenAdapter, http: aiohttp.ClientSession
) -> None:
    sandbox, sink = env
    session = await adapter.create_session(
        checkout_input(_setup_request(), session_id=SETUP_ID), timeout=5
    )
    body = _body(sandbox, "adyen_sessions:create")
    assert body["amount"] == {"value": 0, "currency": "AUD"}
    assert body["storePaymentMethodMode"] == "enabled"
    assert body["recurringProcessingModel"] == "Subscription"
    assert body["shopperReference"] == "cust-42"
    assert body["metadata"]["sessionType"] == "setup"
    assert "lineItems" not in body
    async with http.get(session.checkout_url) as page:
        text = await page.text()
    assert 'id="pay">Save</button>' in text
    await press(session.checkout_url, "pay")
    event = await _event(adapter, sink, 0)
    assert event.status is SessionStatus.COMPLETED
    assert event.session_id == SETUP_ID
    assert event.reference == session.reference
    assert event.customer_id == "cust-42"
    assert event.payment_method_id is not None
    assert event.amount == Decimal(0)
    assert sandbox.violations == []


async def test_one_time_pages_still_say_pay(env: Env, adapter: AdyenAdapter) -> None:
    data = seed_data()
    session = await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    async with aiohttp.ClientSession() as client, client.get(session.checkout_url) as page:
        assert 'id="pay">Pay</button>' in await page.text()


# customer-absent charges --------------------------------------------------------------------


async def test_charge_saved_completes_and_notifies_the_session(
    env: Env, adapter: AdyenAdapter
) -> None:
    sandbox, sink = env
    saved = await _saved_method(env, adapter)
    assert saved.payment_method_id is not None
    outcome = await adapter.charge_saved(_charge(saved.payment_method_id), timeout=5)
    assert outcome.status is SessionStatus.COMPLETED
    assert outcome.payment_id is not None
    assert (outcome.amount, outcome.currency) == (Decimal("140.76"), "AUD")
    assert outcome.raw_status == "Authorised"
    body = _body(sandbox, "adyen_payments:payments")
    assert body["paymentMethod"] == {
        "type": "scheme",
        "storedPaymentMethodId": saved.payment_method_id,
    }
    assert body["shopperReference"] == "cust-42"
    assert body["shopperInteraction"] == "ContAuth"
    assert body["recurringProcessingModel"] == "Subscription"
    assert body["reference"] == CHARGE_ID
    assert body["metadata"]["gatewaySessionId"] == CHARGE_ID
    assert "additionalData" not in body
    headers = next(r.headers for r in sandbox.requests if r.operation.endswith(":payments"))
    assert headers["Idempotency-Key"] == "m1:charge-key:adyen"
    event = await _event(adapter, sink, 1)
    assert (event.event_type, event.status) == ("AUTHORISATION", SessionStatus.COMPLETED)
    assert event.session_id == CHARGE_ID
    assert event.payment_id == outcome.payment_id
    assert event.reference is None
    assert sandbox.violations == []
    assert _operations(sandbox) == ["adyen_sessions:create", "adyen_payments:payments"]


async def test_decline_off_session_is_a_failed_outcome(env: Env, adapter: AdyenAdapter) -> None:
    sandbox, sink = env
    saved = await _saved_method(env, adapter)
    assert saved.payment_method_id is not None
    await set_fault(sandbox, "adyen", declineOffSession=True)
    outcome = await adapter.charge_saved(_charge(saved.payment_method_id), timeout=5)
    assert outcome.status is SessionStatus.FAILED
    assert outcome.failure_reason == "Refused"
    event = await _event(adapter, sink, 1)
    assert (event.status, event.failure_reason) == (SessionStatus.FAILED, "Refused")
    assert event.session_id == CHARGE_ID
    assert ledger(sandbox.state).payments.get(str(outcome.payment_id)) is None
    assert sandbox.violations == []


async def test_charge_saved_times_out(env: Env, adapter: AdyenAdapter) -> None:
    sandbox, _ = env
    await set_fault(sandbox, "adyen", timeout=True)
    with pytest.raises(ProviderTimeout):
        await adapter.charge_saved(_charge("TOKEN0000000000X"), timeout=0.3)


async def test_unknown_token_is_a_rejection(env: Env, adapter: AdyenAdapter) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await adapter.charge_saved(_charge("TOKEN0000000000X"), timeout=5)
    assert (caught.value.status, caught.value.code) == (422, "800")


async def test_charge_retry_with_the_key_charges_once(env: Env, adapter: AdyenAdapter) -> None:
    sandbox, sink = env
    saved = await _saved_method(env, adapter)
    assert saved.payment_method_id is not None
    data = _charge(saved.payment_method_id)
    first = await adapter.charge_saved(data, timeout=5)
    again = await adapter.charge_saved(data, timeout=5)
    assert again == first
    assert len(ledger(sandbox.state).payments) == 2  # the setup's zero auth and one charge
    await _calls(sink, 2)
    await asyncio.sleep(0.2)
    assert len(sink.calls) == 2  # no second AUTHORISATION
    other = _charge(saved.payment_method_id, orderReference="ORD-OTHER")
    with pytest.raises(ProviderKeyConflict):
        await adapter.charge_saved(other, timeout=5)


async def test_a_concurrent_charge_retry_meets_the_first_in_flight(
    env: Env, adapter: AdyenAdapter
) -> None:
    sandbox, _ = env
    saved = await _saved_method(env, adapter)
    assert saved.payment_method_id is not None
    await set_fault(sandbox, "adyen", processingMs=300)
    data = _charge(saved.payment_method_id)
    first = asyncio.create_task(adapter.charge_saved(data, timeout=5))
    await asyncio.sleep(0.1)
    with pytest.raises(ProviderKeyConflict):
        await adapter.charge_saved(data, timeout=5)
    assert (await first).status is SessionStatus.COMPLETED
    assert (await adapter.charge_saved(data, timeout=5)) == await first


async def test_decline_off_session_is_an_admin_setting(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    url = sandbox.url("/sandbox/admin/faults")
    async with http.post(url, json={"provider": "adyen", "declineOffSession": "yes"}) as bad:
        assert bad.status == 400
        assert "declineOffSession" in (await bad.json())["error"]
    async with http.post(url, json={"provider": "adyen", "declineOffSession": True}) as ok:
        assert (await ok.json())["adyen"]["declineOffSession"] is True
    async with http.get(url) as listed:
        faults = await listed.json()
    assert faults["adyen"]["declineOffSession"] is True
    assert faults["stripe"]["declineOffSession"] is False


async def test_no_customer_absent_charge_of_sepa(adapter: AdyenAdapter) -> None:
    data = _charge("TOKEN0000000000X", paymentMethod="sepa_debit")
    with pytest.raises(FlowNotSupported, match="customer-absent"):
        await adapter.charge_saved(data, timeout=5)


# manual capture, capture, cancel --------------------------------------------------------------


def _reference(outcome_psp: str, amount: str = "140.76", session: str = CHARGE_ID) -> Any:
    return PaymentReference(
        session_reference=outcome_psp,
        payment_id=outcome_psp,
        capture_id=None,
        currency="AUD",
        amount=Decimal(amount),
        session_id=session,
    )


async def test_manual_charge_is_authorized_then_partially_captured(
    env: Env, adapter: AdyenAdapter
) -> None:
    sandbox, sink = env
    saved = await _saved_method(env, adapter)
    assert saved.payment_method_id is not None
    outcome = await adapter.charge_saved(
        _charge(saved.payment_method_id, captureMethod="manual"), timeout=5
    )
    assert outcome.status is SessionStatus.AUTHORIZED
    assert _body(sandbox, "adyen_payments:payments")["additionalData"] == {"manualCapture": "true"}
    authorised = await _event(adapter, sink, 1)
    assert authorised.status is SessionStatus.AUTHORIZED
    assert outcome.payment_id is not None
    payment = _reference(outcome.payment_id)
    captured = await adapter.capture_payment(
        payment, Decimal("100.00"), idempotency_key="m1:cap-1:adyen", timeout=5
    )
    assert captured.status is SessionStatus.PROCESSING
    assert captured.raw_status == "received"
    assert captured.capture_id is not None
    assert _body(sandbox, "adyen_payments:captures") == {
        "merchantAccount": "SandboxMerchantECOM",
        "amount": {"value": 10000, "currency": "AUD"},
        "reference": CHARGE_ID,
    }
    event = await _event(adapter, sink, 2)
    assert (event.event_type, event.status) == ("CAPTURE", SessionStatus.COMPLETED)
    assert event.amount == Decimal("100.00")
    assert event.capture_id == captured.capture_id
    assert event.payment_id == outcome.payment_id
    assert event.session_id == CHARGE_ID
    assert sandbox.violations == []
    assert _operations(sandbox)[-1] == "adyen_payments:captures"


async def test_hosted_manual_session_authorizes_captures_in_full(
    env: Env, adapter: AdyenAdapter
) -> None:
    sandbox, sink = env
    data = seed_data()
    data["captureMethod"] = "manual"
    data["additionalInformation"] = {"captureMethod": "automatic"}  # cannot pose as the mode
    session = await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    assert _body(sandbox, "adyen_sessions:create")["metadata"]["captureMethod"] == "manual"
    await press(session.checkout_url, "pay")
    authorised = await _event(adapter, sink, 0)
    assert authorised.status is SessionStatus.AUTHORIZED
    assert authorised.payment_id is not None
    payment = _reference(authorised.payment_id, session="ses_01HTESTSESSION0001")
    await adapter.capture_payment(
        payment, Decimal("140.76"), idempotency_key="m1:cap-2:adyen", timeout=5
    )
    event = await _event(adapter, sink, 1)
    assert (event.status, event.amount) == (SessionStatus.COMPLETED, Decimal("140.76"))
    assert event.session_id == "ses_01HTESTSESSION0001"
    # a second capture of the same authorization is refused by notification, not by the call
    await adapter.capture_payment(
        payment, Decimal("1.00"), idempotency_key="m1:cap-3:adyen", timeout=5
    )
    refused = await _event(adapter, sink, 2)
    assert refused.status is None
    assert refused.extra["captureFailed"] == "true"
    assert refused.failure_reason == "Payment is not in a capturable state"
    assert sandbox.violations == []


async def test_merchant_metadata_cannot_make_an_automatic_payment_authorized(
    env: Env, adapter: AdyenAdapter
) -> None:
    _, sink = env
    data = seed_data()
    data["additionalInformation"] = {"captureMethod": "manual"}
    session = await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    await press(session.checkout_url, "pay")
    assert (await _event(adapter, sink, 0)).status is SessionStatus.COMPLETED


async def test_void_cancels_the_authorization(env: Env, adapter: AdyenAdapter) -> None:
    sandbox, sink = env
    data = seed_data()
    data["captureMethod"] = "manual"
    session = await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    await press(session.checkout_url, "pay")
    authorised = await _event(adapter, sink, 0)
    assert authorised.payment_id is not None
    payment = _reference(authorised.payment_id, session="ses_01HTESTSESSION0001")
    outcome = await adapter.void_payment(payment, idempotency_key="m1:void:adyen", timeout=5)
    assert outcome.status is SessionStatus.PROCESSING
    assert outcome.capture_id is None
    assert _body(sandbox, "adyen_payments:cancels") == {
        "merchantAccount": "SandboxMerchantECOM",
        "reference": "ses_01HTESTSESSION0001",
    }
    event = await _event(adapter, sink, 1)
    assert (event.event_type, event.status) == ("CANCELLATION", SessionStatus.CANCELLED)
    assert event.session_id == "ses_01HTESTSESSION0001"
    assert event.payment_id == authorised.payment_id
    assert sandbox.violations == []


async def test_modification_faults_map_onto_the_error_tree(env: Env, adapter: AdyenAdapter) -> None:
    sandbox, _ = env
    await set_fault(sandbox, "adyen", errorRate=1.0)
    with pytest.raises(ProviderUnavailable):
        await adapter.void_payment(_reference("PSP0000000000001"), idempotency_key="k", timeout=5)
    await set_fault(sandbox, "adyen")
    with pytest.raises(ProviderRejected) as caught:
        await adapter.void_payment(_reference("PSP0000000000001"), idempotency_key="k", timeout=5)
    assert caught.value.code == "167"  # unknown payment


async def test_a_payment_without_psp_reference_cannot_be_modified(adapter: AdyenAdapter) -> None:
    payment = PaymentReference("CS1", None, None, "AUD", Decimal(1))
    with pytest.raises(FlowNotSupported):
        await adapter.capture_payment(payment, Decimal(1), idempotency_key="k", timeout=5)


# refunds ------------------------------------------------------------------------------------


def _refund(psp: str, amount: str, key: str, refund_id: str = "rf_1") -> RefundInput:
    return RefundInput(
        payment=_reference(psp),
        refund_id=refund_id,
        session_id=CHARGE_ID,
        amount=Decimal(amount),
        currency="AUD",
        reason="requested_by_customer",
        idempotency_key=key,
    )


async def _charged(env: Env, adapter: AdyenAdapter) -> str:
    saved = await _saved_method(env, adapter)
    assert saved.payment_method_id is not None
    outcome = await adapter.charge_saved(_charge(saved.payment_method_id), timeout=5)
    assert outcome.payment_id is not None
    await _calls(env[1], 2)
    return outcome.payment_id


async def test_refunds_are_pending_then_settled_by_notification(
    env: Env, adapter: AdyenAdapter
) -> None:
    sandbox, sink = env
    psp = await _charged(env, adapter)
    outcome = await adapter.refund_payment(_refund(psp, "40.00", "m1:rf-1:adyen"), timeout=5)
    assert outcome.status is RefundStatus.PENDING
    assert outcome.provider_refund_id is not None
    assert _body(sandbox, "adyen_payments:refunds") == {
        "merchantAccount": "SandboxMerchantECOM",
        "amount": {"value": 4000, "currency": "AUD"},
        "reference": f"{CHARGE_ID}:rf_1",
        "merchantRefundReason": "CUSTOMER REQUEST",
    }
    event = await _event(adapter, sink, 2)
    assert event.status is None
    assert event.session_id == CHARGE_ID
    assert event.refund is not None
    assert event.refund.status is RefundStatus.SUCCEEDED
    assert event.refund.refund_id == "rf_1"
    assert event.refund.provider_refund_id == outcome.provider_refund_id
    assert (event.refund.amount, event.refund.currency) == (Decimal("40.00"), "AUD")
    # more than what is left: the call is received, the notification refuses it
    await adapter.refund_payment(_refund(psp, "100.77", "m1:rf-2:adyen", "rf_2"), timeout=5)
    failed = await _event(adapter, sink, 3)
    assert failed.refund is not None
    assert (failed.refund.status, failed.refund.refund_id) == (RefundStatus.FAILED, "rf_2")
    assert failed.refund.failure_reason == "Insufficient in-process balance on payment to refund"
    assert sandbox.violations == []


async def test_refund_retry_with_the_key_refunds_once(env: Env, adapter: AdyenAdapter) -> None:
    sandbox, sink = env
    psp = await _charged(env, adapter)
    data = _refund(psp, "40.00", "m1:rf-1:adyen")
    first = await adapter.refund_payment(data, timeout=5)
    again = await adapter.refund_payment(data, timeout=5)
    assert again == first
    assert ledger(sandbox.state).payments[psp].refunded == 4000
    await _calls(sink, 3)
    await asyncio.sleep(0.2)
    assert len(sink.calls) == 3
    with pytest.raises(ProviderKeyConflict):
        await adapter.refund_payment(_refund(psp, "41.00", "m1:rf-1:adyen"), timeout=5)


# notification mapping -----------------------------------------------------------------------


def _signed(code: str, success: str, **fields: Any) -> bytes:
    item: dict[str, Any] = {
        "pspReference": "MOD0000000000001",
        "originalReference": "PAY0000000000001",
        "merchantAccountCode": "SandboxMerchantECOM",
        "merchantReference": CHARGE_ID,
        "amount": {"value": 1000, "currency": "EUR"},
        "eventCode": code,
        "success": success,
        "eventDate": "2024-05-01T10:00:00+02:00",
        **fields,
    }
    item["additionalData"] = {"hmacSignature": hmac_signature(item, HMAC_KEY)}
    return orjson.dumps({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]})


async def test_capture_failed_keeps_the_authorization_with_a_reason(
    adapter: AdyenAdapter,
) -> None:
    body = _signed("CAPTURE_FAILED", "true", reason="Capture Failed")
    [event] = await adapter.parse_webhook({}, body)
    assert event.status is None
    assert event.failure_reason == "Capture Failed"
    assert event.extra["captureFailed"] == "true"
    assert (event.session_id, event.payment_id) == (CHARGE_ID, "PAY0000000000001")
    assert event.capture_id == "MOD0000000000001"


async def test_refund_failed_is_a_failure_whatever_success_says(adapter: AdyenAdapter) -> None:
    body = _signed("REFUND_FAILED", "true", merchantReference=f"{CHARGE_ID}:rf_9")
    [event] = await adapter.parse_webhook({}, body)
    assert event.status is None
    assert event.session_id == CHARGE_ID
    assert event.refund is not None
    assert (event.refund.status, event.refund.refund_id) == (RefundStatus.FAILED, "rf_9")
    assert event.refund.amount == Decimal("10.00")


async def test_duplicate_notifications_map_to_the_same_event(adapter: AdyenAdapter) -> None:
    body = _signed("REFUND", "true", merchantReference=f"{CHARGE_ID}:rf_9")
    first = await adapter.parse_webhook({}, body)
    again = await adapter.parse_webhook({}, body)
    assert first == again
    assert first[0].event_id == "MOD0000000000001:REFUND"
    assert first[0].refund is not None
    assert first[0].refund.status is RefundStatus.SUCCEEDED


async def test_cancellation_refused_leaves_the_session(adapter: AdyenAdapter) -> None:
    [event] = await adapter.parse_webhook({}, _signed("CANCELLATION", "false", reason="x"))
    assert (event.status, event.failure_reason, event.session_id) == (None, "x", CHARGE_ID)


def test_capabilities_name_the_new_session_types() -> None:
    caps = AdyenAdapter.capabilities
    assert {"setup", "next_in_series"} <= caps.session_types
    assert caps.partial_capture
    assert caps.authorization_days == 7


# the sandbox's answers ----------------------------------------------------------------------


async def test_sandbox_answers_conform_to_the_spec_responses(
    env: Env, adapter: AdyenAdapter, http: aiohttp.ClientSession
) -> None:
    sandbox, _ = env
    saved = await _saved_method(env, adapter)
    assert saved.payment_method_id is not None
    api = sandbox.base_url("adyen") + "/v71/payments"
    headers = {"X-API-Key": SANDBOX_SECRETS["adyen"]["api_key"]}
    charge = _charge(saved.payment_method_id, captureMethod="manual")
    body = payments.charge_body(charge, "SandboxMerchantECOM")
    async with http.post(api, json=body, headers=headers) as answer:
        paid = await answer.json()
        assert answer.status == 200
    assert validate_response("adyen", 200, paid, "adyen_payments:payments") == []
    unknown = {**body, "paymentMethod": {"type": "scheme", "storedPaymentMethodId": "NOPE"}}
    async with http.post(api, json=unknown, headers=headers) as answer:
        assert answer.status == 422
        refused = await answer.json()
    assert validate_response("adyen", 422, refused, "adyen_payments:payments") == []
    payment = _reference(paid["pspReference"])
    calls = {
        "captures": payments.capture_body(payment, Decimal("1.00"), "SandboxMerchantECOM"),
        "refunds": payments.refund_body(
            _refund(paid["pspReference"], "1.00", "k"), "SandboxMerchantECOM"
        ),
        "cancels": payments.cancel_body(payment, "SandboxMerchantECOM"),
    }
    for name, sent in calls.items():
        async with http.post(
            f"{api}/{paid['pspReference']}/{name}", json=sent, headers=headers
        ) as answer:
            assert answer.status == 201
            received = await answer.json()
        assert received["status"] == "received"
        assert validate_response("adyen", 201, received, f"adyen_payments:{name}") == []
    assert sandbox.violations == []
