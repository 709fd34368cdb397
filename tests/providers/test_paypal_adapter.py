"""The PayPal adapter against the strict-contract sandbox on real sockets: order shape per the
official spec, OAuth2 token caching and refresh, idempotency, error mapping and webhook
verification through the verify-webhook-signature API."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.domain.session import SessionStatus
from gateway.settings import SANDBOX_SECRETS, ProviderConfig
from providers.base import (
    AUTHORIZE,
    CAPTURE,
    FlowNotSupported,
    ProviderKeyConflict,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    WebhookVerificationError,
)
from providers.paypal.adapter import PayPalAdapter
from providers.paypal.webhooks import event_from_paypal
from providers.sandbox.paypal_api import paypal_sandbox
from tests.contracts.spec_validator import validate_request
from tests.contracts.strict_sandbox import StrictSandbox
from tests.lifecycle.test_loop import wait_for
from tests.providers.conftest import last_sent
from tests.providers.hosted_inputs import (
    WebhookSink,
    checkout_input,
    order,
    press,
    request_from,
    seed_data,
    set_fault,
)

PAYPAL_SECRETS = SANDBOX_SECRETS["paypal"]


def paypal_seed(**changes: Any) -> Any:
    data = seed_data()
    data["paymentMethod"] = "paypal"
    data.update(changes)
    return request_from(data)


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> PayPalAdapter:
    return PayPalAdapter(sandbox.provider_config("paypal"), http)


async def test_seed_order_is_valid_per_spec_and_served(
    sandbox: StrictSandbox, adapter: PayPalAdapter, http: aiohttp.ClientSession
) -> None:
    data = checkout_input(paypal_seed())
    session = await adapter.create_session(data, timeout=5)
    assert sandbox.violations == []
    assert session.provider == "paypal"
    assert session.raw_status == "PAYER_ACTION_REQUIRED"
    assert session.checkout_url == sandbox.url(f"/sandbox/pay/paypal/{session.reference}")
    assert session.expires_at is None
    async with http.get(session.checkout_url) as page:
        assert page.status == 200
        assert "140.76 AUD" in await page.text()
    headers, body = last_sent(sandbox)
    assert validate_request("paypal", headers, body) == []
    assert headers["Authorization"].startswith("Bearer A21AA")
    assert headers["PayPal-Request-Id"] == data.idempotency_key
    assert headers["Prefer"] == "return=representation"
    assert body["intent"] == "CAPTURE"
    unit = body["purchase_units"][0]
    assert unit["reference_id"] == unit["custom_id"] == data.session_id
    assert unit["invoice_id"] == "ORD-2024-001"
    assert unit["amount"]["value"] == "140.76"
    assert unit["items"] == [
        {
            "name": "Wireless Headphones",
            "quantity": "1",
            "unit_amount": {"currency_code": "AUD", "value": "119.00"},
            "sku": "WH-100",
        }
    ]
    assert unit["shipping"]["address"]["admin_area_2"] == "Melbourne"
    wallet = body["payment_source"]["paypal"]
    assert wallet["experience_context"] == {
        "return_url": "https://merchant.example.com/checkout/success",
        "cancel_url": "https://merchant.example.com/checkout/failure",
        "user_action": "PAY_NOW",
        "shipping_preference": "SET_PROVIDED_ADDRESS",
        "locale": "en-AU",
    }
    assert wallet["name"] == {"given_name": "Jane", "surname": "Smith"}


async def test_manual_capture_authorizes(sandbox: StrictSandbox, adapter: PayPalAdapter) -> None:
    await adapter.create_session(checkout_input(paypal_seed(captureMethod="manual")), timeout=5)
    assert last_sent(sandbox)[1]["intent"] == "AUTHORIZE"
    assert sandbox.violations == []


@pytest.mark.parametrize(
    ("currency", "unit", "wire"), [("JPY", "1500", "1500"), ("HUF", "990", "990")]
)
async def test_zero_decimal_currencies_go_without_decimals(
    sandbox: StrictSandbox, adapter: PayPalAdapter, currency: str, unit: str, wire: str
) -> None:
    request = order(currency, unit, paymentMethod="paypal")
    await adapter.create_session(checkout_input(request), timeout=5)
    amount = last_sent(sandbox)[1]["purchase_units"][0]["amount"]
    assert amount["value"] == wire
    assert amount["breakdown"]["shipping"]["value"] == "0"
    assert sandbox.violations == []


async def test_fractional_huf_fails_before_any_call(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    with pytest.raises(FlowNotSupported, match="at most 0 decimal places"):
        await adapter.create_session(
            checkout_input(order("HUF", "990.50", paymentMethod="paypal")), timeout=5
        )
    with pytest.raises(FlowNotSupported, match="not offered through PayPal"):
        await adapter.create_session(checkout_input(paypal_seed(paymentMethod="card")), timeout=5)
    assert sandbox.requests == []
    assert paypal_sandbox(sandbox.state).token_requests == 0


async def test_replay_answers_the_same_order(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    data = checkout_input(paypal_seed())
    first = await adapter.create_session(data, timeout=5)
    again = await adapter.create_session(data, timeout=5)
    assert again.reference == first.reference
    assert sandbox.state.sessions_created["paypal"] == 1


async def test_emulator_answers_201_then_200_on_replay(
    sandbox: StrictSandbox, adapter: PayPalAdapter, http: aiohttp.ClientSession
) -> None:
    await adapter.create_session(checkout_input(paypal_seed()), timeout=5)
    headers, body = last_sent(sandbox)
    url = sandbox.url("/sandbox/paypal/v2/checkout/orders")
    fresh = {**headers, "PayPal-Request-Id": "raw-replay-1"}
    fresh.pop("Content-Length", None)
    statuses = []
    for _ in range(2):
        async with http.post(url, data=orjson.dumps(body), headers=fresh) as response:
            statuses.append((response.status, (await response.json())["id"]))
    assert [s for s, _ in statuses] == [201, 200]
    assert statuses[0][1] == statuses[1][1]


async def test_a_concurrent_retry_meets_the_request_in_flight(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    await adapter.create_session(checkout_input(paypal_seed(), key="warm-up"), timeout=5)
    await set_fault(sandbox, "paypal", processingMs=200)
    data = checkout_input(paypal_seed())
    first, second = await asyncio.gather(
        adapter.create_session(data, timeout=5),
        adapter.create_session(data, timeout=5),
        return_exceptions=True,
    )
    assert not isinstance(first, BaseException)
    assert isinstance(second, ProviderKeyConflict)
    assert second.in_flight
    assert isinstance(second.__cause__, ProviderRejected)
    assert (second.__cause__.status, second.__cause__.code) == (409, "RESOURCE_CONFLICT")
    assert sandbox.state.sessions_created["paypal"] == 2


async def test_same_request_id_with_another_body_is_refused(adapter: PayPalAdapter) -> None:
    await adapter.create_session(checkout_input(paypal_seed()), timeout=5)
    with pytest.raises(ProviderKeyConflict) as caught:
        await adapter.create_session(
            checkout_input(paypal_seed(orderReference="ORD-2024-002")), timeout=5
        )
    assert not caught.value.in_flight
    cause = caught.value.__cause__
    assert isinstance(cause, ProviderRejected)
    assert (cause.status, cause.code, cause.issue) == (
        422,
        "UNPROCESSABLE_ENTITY",
        "DUPLICATE_REQUEST_ID",
    )


async def test_long_request_id_becomes_a_stable_digest(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    key = "m:" + "x" * 150
    first = await adapter.create_session(checkout_input(paypal_seed(), key=key), timeout=5)
    sent = last_sent(sandbox)[0]["PayPal-Request-Id"]
    assert len(sent) == 64
    again = await adapter.create_session(checkout_input(paypal_seed(), key=key), timeout=5)
    assert again.reference == first.reference
    assert last_sent(sandbox)[0]["PayPal-Request-Id"] == sent


# tokens ---------------------------------------------------------------------------------------


async def test_one_token_serves_many_creates(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    for index in range(5):
        await adapter.create_session(checkout_input(paypal_seed(), key=f"k-{index}"), timeout=5)
    assert paypal_sandbox(sandbox.state).token_requests == 1


async def test_concurrent_callers_share_one_token_fetch(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    await set_fault(sandbox, "paypal", latencyMs=50)  # keep the first fetch in flight
    await asyncio.gather(
        *(
            adapter.create_session(checkout_input(paypal_seed(), key=f"c-{index}"), timeout=5)
            for index in range(10)
        )
    )
    assert paypal_sandbox(sandbox.state).token_requests == 1
    assert sandbox.state.sessions_created["paypal"] == 10


async def test_a_revoked_token_is_refreshed_once(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    await adapter.create_session(checkout_input(paypal_seed(), key="a"), timeout=5)
    paypal_sandbox(sandbox.state).revoke_tokens()
    session = await adapter.create_session(checkout_input(paypal_seed(), key="b"), timeout=5)
    assert session.reference
    assert paypal_sandbox(sandbox.state).token_requests == 2


async def test_a_second_401_is_not_retried_again(
    sandbox: StrictSandbox, adapter: PayPalAdapter
) -> None:
    paypal_sandbox(sandbox.state).token_lifetime_seconds = 0  # every token is dead on arrival
    with pytest.raises(ProviderRejected) as caught:
        await adapter.create_session(checkout_input(paypal_seed()), timeout=5)
    assert caught.value.status == 401
    assert paypal_sandbox(sandbox.state).token_requests == 2
    assert sandbox.state.sessions_created["paypal"] == 0


async def test_bad_client_credentials_are_a_rejection(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    config = sandbox.provider_config("paypal", client_secret="wrong")
    with pytest.raises(ProviderRejected) as caught:
        await PayPalAdapter(config, http).create_session(checkout_input(paypal_seed()), timeout=5)
    assert (caught.value.status, caught.value.code) == (401, "invalid_client")
    assert caught.value.reason == "Client Authentication failed"
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"errorRate": 1.0}, ProviderUnavailable),
        ({"rateLimitRate": 1.0, "retryAfter": 3}, ProviderRateLimited),
        ({"timeout": True}, ProviderTimeout),
        ({"down": True}, ProviderUnavailable),
    ],
)
async def test_faults_map_onto_the_error_tree(
    sandbox: StrictSandbox, adapter: PayPalAdapter, fault: dict[str, Any], error: type[Exception]
) -> None:
    await set_fault(sandbox, "paypal", **fault)
    with pytest.raises(error) as caught:
        await adapter.create_session(checkout_input(paypal_seed()), timeout=0.5)
    if isinstance(caught.value, ProviderRateLimited):
        assert caught.value.retry_after == 3


async def test_connection_refused_is_unavailable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ProviderConfig(name="paypal", base_url=f"http://127.0.0.1:{port}", **PAYPAL_SECRETS)
    with pytest.raises(ProviderUnavailable):
        await PayPalAdapter(config, http).create_session(checkout_input(paypal_seed()), timeout=2)


async def test_cancel_is_not_supported(adapter: PayPalAdapter) -> None:
    with pytest.raises(FlowNotSupported, match="no call to cancel"):
        await adapter.cancel_session("5O190127TN364715T", timeout=1)


# webhooks -------------------------------------------------------------------------------------


async def _events_after(
    env: tuple[StrictSandbox, WebhookSink],
    adapter: PayPalAdapter,
    action: str,
    *,
    complete: bool = False,
    **changes: Any,
) -> tuple[str, WebhookSink]:
    """Create an order and press ``action`` on its page; with ``complete`` also capture (or
    authorize) it, as the gateway does after the approval, and wait for PayPal's webhook."""
    _sandbox, sink = env
    data = checkout_input(paypal_seed(**changes))
    session = await adapter.create_session(data, timeout=5)
    status, location = await press(session.checkout_url, action)
    assert status == 303
    target = "success" if action == "pay" else "failure"
    assert location.startswith(f"https://merchant.example.com/checkout/{target}?token=")
    if complete:
        intent = AUTHORIZE if data.request.captureMethod == "manual" else CAPTURE
        await adapter.complete_approved(
            session.reference, intent=intent, idempotency_key=f"k-{intent}", timeout=5
        )
        await wait_for(lambda: len(sink.calls) >= 2)
    return session.reference, sink


@pytest.mark.parametrize(
    ("action", "changes", "expected"),
    [
        (
            "pay",
            {},
            [
                ("CHECKOUT.ORDER.APPROVED", SessionStatus.PROCESSING),
                ("PAYMENT.CAPTURE.COMPLETED", SessionStatus.COMPLETED),
            ],
        ),
        (
            "pay",
            {"captureMethod": "manual"},
            [
                ("CHECKOUT.ORDER.APPROVED", SessionStatus.PROCESSING),
                ("PAYMENT.AUTHORIZATION.CREATED", SessionStatus.AUTHORIZED),
            ],
        ),
        (
            "decline",
            {},
            [
                ("CHECKOUT.ORDER.APPROVED", SessionStatus.PROCESSING),
                ("PAYMENT.CAPTURE.DECLINED", SessionStatus.FAILED),
            ],
        ),
        (
            "decline",
            {"captureMethod": "manual"},
            [
                ("CHECKOUT.ORDER.APPROVED", SessionStatus.PROCESSING),
                ("CHECKOUT.PAYMENT-APPROVAL.REVERSED", SessionStatus.FAILED),
            ],
        ),
        ("cancel", {}, [("CHECKOUT.ORDER.VOIDED", SessionStatus.CANCELLED)]),
    ],
)
async def test_sandbox_webhooks_verify_and_map(
    env: tuple[StrictSandbox, WebhookSink],
    adapter: PayPalAdapter,
    action: str,
    changes: dict[str, Any],
    expected: list[tuple[str, SessionStatus]],
) -> None:
    reference, sink = await _events_after(env, adapter, action, **changes)
    # the payer's button only approves (or voids) the order: no money has moved yet
    [first] = sink.calls
    [approval] = await adapter.parse_webhook(first.headers, first.body)
    assert approval.awaits_completion is (action != "cancel")
    if action != "cancel":
        await adapter.complete_approved(
            reference,
            intent=AUTHORIZE if changes.get("captureMethod") == "manual" else CAPTURE,
            idempotency_key=f"k-{reference}",
            timeout=5,
        )
        await wait_for(lambda: len(sink.calls) == len(expected))
    seen = []
    for call in sink.calls:
        [event] = await adapter.parse_webhook(call.headers, call.body)
        assert event.reference == reference
        assert event.session_id == "ses_01HTESTSESSION0001"
        assert event.event_id == orjson.loads(call.body)["id"]
        assert event.awaits_completion is (event.event_type == "CHECKOUT.ORDER.APPROVED")
        seen.append((event.event_type, event.status))
    assert seen == expected
    answer = adapter.webhook_answer()
    assert (answer.status, answer.body) == (200, b"")


async def test_tampered_event_fails_verification(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter
) -> None:
    _, sink = await _events_after(env, adapter, "decline", complete=True)
    denied = sink.calls[1]
    event = orjson.loads(denied.body)
    event["event_type"] = "PAYMENT.CAPTURE.COMPLETED"
    event["resource"]["status"] = "COMPLETED"
    with pytest.raises(WebhookVerificationError, match="FAILURE"):
        await adapter.parse_webhook(denied.headers, orjson.dumps(event))


async def test_headers_of_one_transmission_do_not_vouch_for_another_event(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter
) -> None:
    _, sink = await _events_after(env, adapter, "pay", complete=True)
    approved, captured = sink.calls
    with pytest.raises(WebhookVerificationError, match="FAILURE"):
        await adapter.parse_webhook(approved.headers, captured.body)


async def test_unknown_transmission_fails_verification(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter
) -> None:
    _, sink = await _events_after(env, adapter, "pay", complete=True)
    call = sink.calls[1]
    forged = {**call.headers, "PAYPAL-TRANSMISSION-ID": "6f2b4c7e-0000-11ef-9c5a-forged00000"}
    with pytest.raises(WebhookVerificationError, match="FAILURE"):
        await adapter.parse_webhook(forged, call.body)
    stale = {**call.headers, "PAYPAL-TRANSMISSION-TIME": "2020-01-01T00:00:00Z"}
    with pytest.raises(WebhookVerificationError, match="FAILURE"):
        await adapter.parse_webhook(stale, call.body)


async def test_another_webhook_id_fails_verification(
    env: tuple[StrictSandbox, WebhookSink], http: aiohttp.ClientSession
) -> None:
    sandbox, _ = env
    signer = PayPalAdapter(sandbox.provider_config("paypal"), http)
    _, sink = await _events_after(env, signer, "pay")
    other = PayPalAdapter(sandbox.provider_config("paypal", webhook_id="WHOTHER0002"), http)
    with pytest.raises(WebhookVerificationError, match="FAILURE"):
        await other.parse_webhook(sink.calls[0].headers, sink.calls[0].body)


async def test_malformed_headers_are_refused_by_the_verify_api(
    env: tuple[StrictSandbox, WebhookSink], adapter: PayPalAdapter
) -> None:
    _, sink = await _events_after(env, adapter, "pay")
    call = sink.calls[0]
    bad = {**call.headers, "PAYPAL-AUTH-ALGO": "SHA256 with RSA"}
    with pytest.raises(WebhookVerificationError, match="verification refused"):
        await adapter.parse_webhook(bad, call.body)


@pytest.mark.parametrize(
    "missing",
    [
        "PAYPAL-TRANSMISSION-ID",
        "PAYPAL-TRANSMISSION-TIME",
        "PAYPAL-TRANSMISSION-SIG",
        "PAYPAL-CERT-URL",
        "PAYPAL-AUTH-ALGO",
    ],
)
async def test_missing_headers_fail_without_a_call(
    http: aiohttp.ClientSession, missing: str
) -> None:
    with socket.socket() as probe:  # nothing listens there: a call would be "unavailable"
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ProviderConfig(name="paypal", base_url=f"http://127.0.0.1:{port}", **PAYPAL_SECRETS)
    headers = {
        "paypal-transmission-id": "a1b2c3d4-0000-11ef-9c5a-0123456789ab",
        "paypal-transmission-time": "2024-05-01T10:00:00Z",
        "paypal-transmission-sig": "abc123",
        "paypal-cert-url": "https://api.paypal.com/v1/notifications/certs/CERT-1",
        "paypal-auth-algo": "SHA256withRSA",
    }
    headers.pop(missing.lower())
    with pytest.raises(WebhookVerificationError, match=f"missing header {missing}"):
        await PayPalAdapter(config, http).parse_webhook(headers, b'{"id": "WH-1"}')


async def test_verification_outage_is_retryable_not_a_bad_signature(
    env: tuple[StrictSandbox, WebhookSink], http: aiohttp.ClientSession
) -> None:
    sandbox, _ = env
    adapter = PayPalAdapter(sandbox.provider_config("paypal"), http, verify_timeout=0.5)
    _, sink = await _events_after(env, adapter, "pay")
    await set_fault(sandbox, "paypal", timeout=True)
    with pytest.raises(ProviderTimeout):
        await adapter.parse_webhook(sink.calls[0].headers, sink.calls[0].body)


def _capture_event(event_type: str, status: str) -> dict[str, Any]:
    return {
        "id": "WH-1",
        "event_type": event_type,
        "create_time": "2024-05-01T10:00:00Z",
        "resource": {
            "id": "CAP1",
            "status": status,
            "custom_id": "ses_1",
            "amount": {"currency_code": "USD", "value": "10.00"},
            "supplementary_data": {"related_ids": {"order_id": "ORDER1"}},
        },
    }


@pytest.mark.parametrize(
    ("event_type", "status", "expected"),
    [
        ("PAYMENT.CAPTURE.COMPLETED", "COMPLETED", SessionStatus.COMPLETED),
        ("PAYMENT.CAPTURE.COMPLETED", "PENDING", SessionStatus.PROCESSING),
        ("PAYMENT.CAPTURE.PENDING", "PENDING", SessionStatus.PROCESSING),
        ("PAYMENT.CAPTURE.DECLINED", "DECLINED", SessionStatus.FAILED),
        ("PAYMENT.SOMETHING.NEW", "COMPLETED", None),
    ],
)
def test_payment_event_mapping_never_invents_success(
    event_type: str, status: str, expected: SessionStatus | None
) -> None:
    event = event_from_paypal(_capture_event(event_type, status))
    assert event.status == expected
    assert (event.reference, event.session_id) == ("ORDER1", "ses_1")
    assert event.extra["amount"] == "10.00"


@pytest.mark.parametrize(
    ("payments", "expected"),
    [
        ({"captures": [{"status": "COMPLETED"}]}, SessionStatus.COMPLETED),
        ({"captures": [{"status": "PENDING"}]}, SessionStatus.PROCESSING),
        ({"captures": [{"status": "DECLINED"}]}, SessionStatus.FAILED),
        ({"authorizations": [{"status": "CREATED"}]}, SessionStatus.AUTHORIZED),
        ({"authorizations": [{"status": "VOIDED"}]}, SessionStatus.CANCELLED),
        ({}, SessionStatus.PROCESSING),
    ],
)
def test_completed_order_is_judged_by_its_payments(
    payments: dict[str, Any], expected: SessionStatus
) -> None:
    event = event_from_paypal(
        {
            "id": "WH-2",
            "event_type": "CHECKOUT.ORDER.COMPLETED",
            "resource": {
                "id": "ORDER2",
                "status": "COMPLETED",
                "purchase_units": [{"custom_id": "ses_2", "payments": payments}],
            },
        }
    )
    assert (event.status, event.reference, event.session_id) == (expected, "ORDER2", "ses_2")
