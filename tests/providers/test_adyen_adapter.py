"""The Adyen adapter against the strict-contract sandbox on real sockets: request shape per the
official spec, idempotency, error mapping, metadata limits and notification HMACs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import socket
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.domain.session import SessionStatus
from gateway.settings import SANDBOX_SECRETS, ProviderConfig
from providers.adyen.adapter import AdyenAdapter
from providers.adyen.transformers import (
    build_metadata,
    hmac_signature,
    signing_string,
    verify_hmac,
)
from providers.adyen.webhooks import event_from_item
from providers.base import (
    FlowNotSupported,
    ProviderKeyConflict,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    WebhookVerificationError,
)
from tests.contracts.spec_validator import load_spec, validate_request
from tests.contracts.strict_sandbox import StrictSandbox
from tests.providers.conftest import last_sent
from tests.providers.hosted_inputs import (
    WebhookSink,
    checkout_input,
    order,
    press,
    request_from,
    seed_data,
    seed_request,
    set_fault,
)

ADYEN_SECRETS = SANDBOX_SECRETS["adyen"]
HMAC_KEY = ADYEN_SECRETS["hmac_key"]


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> AdyenAdapter:
    return AdyenAdapter(sandbox.provider_config("adyen"), http)


async def test_seed_request_is_valid_per_spec_and_served(
    sandbox: StrictSandbox, adapter: AdyenAdapter, http: aiohttp.ClientSession
) -> None:
    data = checkout_input(seed_request())
    session = await adapter.create_session(data, timeout=5)
    assert sandbox.violations == []
    assert session.provider == "adyen"
    assert session.reference.startswith("CS")
    assert session.checkout_url == sandbox.url(f"/sandbox/pay/adyen/{session.reference}")
    assert session.expires_at == data.expires_at.replace(microsecond=0)
    async with http.get(session.checkout_url) as page:
        assert page.status == 200
        assert "140.76 AUD" in await page.text()
    headers, body = last_sent(sandbox)
    assert validate_request("adyen", headers, body) == []
    assert headers["X-API-Key"] == SANDBOX_SECRETS["adyen"]["api_key"]
    assert headers["Idempotency-Key"] == data.idempotency_key
    assert body["mode"] == "hosted"
    assert body["merchantAccount"] == "SandboxMerchantECOM"
    assert body["amount"] == {"value": 14076, "currency": "AUD"}
    assert body["reference"] == "ORD-2024-001"
    assert body["returnUrl"] == "https://merchant.example.com/checkout/success"
    assert body["countryCode"] == "AU"
    assert body["shopperEmail"] == "jane.smith@example.com"
    assert body["shopperLocale"] == "en-AU"
    assert body["allowedPaymentMethods"] == ["scheme"]
    assert "additionalData" not in body  # automatic capture
    assert body["metadata"] == {
        "gatewaySessionId": data.session_id,
        "orderReference": "ORD-2024-001",
        "merchantId": "merchant-1",
        "campaignId": "summer-sale-2024",
        "referralCode": "REF-ABC",
    }
    lines = {line["id"]: line for line in body["lineItems"]}
    assert lines["WH-100"]["amountIncludingTax"] == 11900
    assert lines["WH-100"]["sku"] == "WH-100"
    assert lines["shipping"]["amountIncludingTax"] == 995
    assert lines["tax"] == {
        "id": "tax",
        "description": "Tax",
        "quantity": 1,
        "amountExcludingTax": 0,
        "taxAmount": 1181,
        "amountIncludingTax": 1181,
    }


async def test_manual_capture_uses_the_manual_capture_flag(
    sandbox: StrictSandbox, adapter: AdyenAdapter
) -> None:
    data = seed_data()
    data["captureMethod"] = "manual"
    await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    _, body = last_sent(sandbox)
    assert body["additionalData"] == {"manualCapture": "true"}
    assert "captureDelayHours" not in body
    assert sandbox.violations == []


async def test_idempotent_replay_returns_the_same_session(
    sandbox: StrictSandbox, adapter: AdyenAdapter
) -> None:
    data = checkout_input(seed_request())
    first = await adapter.create_session(data, timeout=5)
    again = await adapter.create_session(data, timeout=5)
    assert again.reference == first.reference
    assert sandbox.state.sessions_created["adyen"] == 1


async def test_same_key_with_another_body_is_refused(adapter: AdyenAdapter) -> None:
    await adapter.create_session(checkout_input(seed_request()), timeout=5)
    data = seed_data()
    data["orderReference"] = "ORD-2024-002"
    with pytest.raises(ProviderKeyConflict) as caught:
        await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    assert not caught.value.in_flight
    cause = caught.value.__cause__
    assert isinstance(cause, ProviderRejected)
    assert (cause.status, cause.code) == (422, "704")


async def test_a_concurrent_retry_meets_the_request_in_flight(
    sandbox: StrictSandbox, adapter: AdyenAdapter
) -> None:
    await set_fault(sandbox, "adyen", processingMs=200)
    data = checkout_input(seed_request())
    first, second = await asyncio.gather(
        adapter.create_session(data, timeout=5),
        adapter.create_session(data, timeout=5),
        return_exceptions=True,
    )
    assert not isinstance(first, BaseException)
    assert isinstance(second, ProviderKeyConflict)
    assert isinstance(second.__cause__, ProviderRejected)
    assert (second.__cause__.status, second.__cause__.code) == (422, "704")
    assert sandbox.state.sessions_created["adyen"] == 1


async def test_long_idempotency_key_becomes_a_stable_64_char_digest(
    sandbox: StrictSandbox, adapter: AdyenAdapter
) -> None:
    long_key = "merchant-1:" + "k" * 200 + ":adyen"
    data = checkout_input(seed_request(), key=long_key)
    first = await adapter.create_session(data, timeout=5)
    headers, _ = last_sent(sandbox)
    expected = hashlib.sha256(long_key.encode()).hexdigest()
    assert headers["Idempotency-Key"] == expected
    assert len(expected) == 64
    again = await adapter.create_session(data, timeout=5)
    assert again.reference == first.reference
    assert last_sent(sandbox)[0]["Idempotency-Key"] == expected
    assert sandbox.violations == []


def test_metadata_stays_within_adyen_limits() -> None:
    data = seed_data()
    data["additionalInformation"] = {
        "a_key_longer_than_twenty": "skipped",
        "orderReference": "cannot override the gateway's",
        "long": "v" * 300,
        **{f"k{index:02d}": f"value {index}" for index in range(40)},
    }
    metadata = build_metadata(checkout_input(request_from(data), session_id="ses_1"))
    assert len(metadata) == 20
    assert all(len(key) <= 20 and len(value) <= 80 for key, value in metadata.items())
    assert metadata["gatewaySessionId"] == "ses_1"
    assert metadata["orderReference"] == "ORD-2024-001"
    assert metadata["long"] == "v" * 80
    assert "a_key_longer_than_twenty" not in metadata
    assert list(metadata)[3:6] == ["long", "k00", "k01"]


def test_an_identifier_too_long_for_metadata_is_left_out_not_truncated() -> None:
    data = seed_data()
    data["orderReference"] = "R" * 100
    metadata = build_metadata(checkout_input(request_from(data)))
    assert "orderReference" not in metadata
    assert metadata["gatewaySessionId"] == "ses_01HTESTSESSION0001"


async def test_sandbox_accepts_the_limited_metadata(
    sandbox: StrictSandbox, adapter: AdyenAdapter
) -> None:
    data = seed_data()
    data["additionalInformation"] = {f"key{index}": "x" * 500 for index in range(50)}
    await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    _, body = last_sent(sandbox)
    assert len(body["metadata"]) == 20
    assert sandbox.violations == []


async def test_wrong_api_key_is_a_rejection(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    adapter = AdyenAdapter(sandbox.provider_config("adyen", api_key="wrong"), http)
    with pytest.raises(ProviderRejected) as caught:
        await adapter.create_session(checkout_input(seed_request()), timeout=5)
    assert caught.value.status == 401
    assert caught.value.code == "000"


async def test_validation_error_is_a_rejection(adapter: AdyenAdapter) -> None:
    data = checkout_input(seed_request(), expires_in=3 * 86_400)  # Adyen allows 24 hours
    with pytest.raises(ProviderRejected) as caught:
        await adapter.create_session(data, timeout=5)
    assert (caught.value.status, caught.value.code) == (422, "14_019")


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"errorRate": 1.0}, ProviderUnavailable),
        ({"rateLimitRate": 1.0, "retryAfter": 7}, ProviderRateLimited),
        ({"timeout": True}, ProviderTimeout),
        ({"down": True}, ProviderUnavailable),
    ],
)
async def test_faults_map_onto_the_error_tree(
    sandbox: StrictSandbox, adapter: AdyenAdapter, fault: dict[str, Any], error: type[Exception]
) -> None:
    await set_fault(sandbox, "adyen", **fault)
    with pytest.raises(error) as caught:
        await adapter.create_session(checkout_input(seed_request()), timeout=0.5)
    if isinstance(caught.value, ProviderRateLimited):
        assert caught.value.retry_after == 7
    if "errorRate" in fault:
        assert isinstance(caught.value, ProviderUnavailable)
        assert caught.value.status == 500


async def test_connection_refused_is_unavailable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ProviderConfig(name="adyen", base_url=f"http://127.0.0.1:{port}", **ADYEN_SECRETS)
    adapter = AdyenAdapter(config, http)
    with pytest.raises(ProviderUnavailable):
        await adapter.create_session(checkout_input(seed_request()), timeout=2)


async def test_unsupported_method_and_cve_fraction_fail_before_any_call(
    sandbox: StrictSandbox, adapter: AdyenAdapter
) -> None:
    data = seed_data()
    data["paymentMethod"] = "paypal"
    with pytest.raises(FlowNotSupported, match="not offered through Adyen"):
        await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    with pytest.raises(FlowNotSupported, match="at most 0 decimal places"):
        await adapter.create_session(checkout_input(order("CVE", "250.50")), timeout=5)
    assert sandbox.requests == []


async def test_cancel_is_not_supported(adapter: AdyenAdapter) -> None:
    with pytest.raises(FlowNotSupported, match="no cancel call"):
        await adapter.cancel_session("CS123", timeout=1)


# notifications --------------------------------------------------------------------------------


def test_spec_test_vector_computed_independently() -> None:
    """The spec's vector, recomputed here from the documented field order (not our code)."""
    vector = load_spec("adyen")["x-webhook"]["hmac"]["test_vector"]
    item = vector["item"]
    fields = [
        item["pspReference"],
        item.get("originalReference", ""),
        item["merchantAccountCode"],
        item["merchantReference"],
        str(item["amount"]["value"]),
        item["amount"]["currency"],
        item["eventCode"],
        item["success"],
    ]
    text = ":".join(fields)
    assert text == vector["signing_string"]
    digest = hmac.new(binascii.a2b_hex(vector["key"]), text.encode(), hashlib.sha256).digest()
    independent = base64.b64encode(digest).decode()
    assert independent == vector["expected_hmacSignature"]
    assert signing_string(item) == vector["signing_string"]
    assert hmac_signature(item, vector["key"]) == vector["expected_hmacSignature"]
    signed = {**item, "additionalData": {"hmacSignature": vector["expected_hmacSignature"]}}
    assert verify_hmac(signed, vector["key"])


async def _paid_notification(
    env: tuple[StrictSandbox, WebhookSink], adapter: AdyenAdapter, action: str = "pay"
) -> tuple[str, bytes]:
    _sandbox, sink = env
    session = await adapter.create_session(checkout_input(seed_request()), timeout=5)
    status, location = await press(session.checkout_url, action)
    assert status == 303
    assert location.startswith("https://merchant.example.com/checkout/success?sessionId=")
    assert len(sink.calls) == 1
    assert sink.calls[0].provider == "adyen"
    return session.reference, sink.calls[0].body


@pytest.mark.parametrize(
    ("action", "code", "status"),
    [
        ("pay", "AUTHORISATION", SessionStatus.COMPLETED),
        ("decline", "AUTHORISATION", SessionStatus.FAILED),
        ("cancel", "OFFER_CLOSED", SessionStatus.EXPIRED),
    ],
)
async def test_sandbox_notifications_verify_and_map(
    env: tuple[StrictSandbox, WebhookSink],
    adapter: AdyenAdapter,
    action: str,
    code: str,
    status: SessionStatus,
) -> None:
    reference, body = await _paid_notification(env, adapter, action)
    events = await adapter.parse_webhook({"Content-Type": "application/json"}, body)
    assert len(events) == 1
    event = events[0]
    assert (event.event_type, event.status) == (code, status)
    assert event.session_id == "ses_01HTESTSESSION0001"
    assert event.reference == reference
    item = orjson.loads(body)["notificationItems"][0]["NotificationRequestItem"]
    assert event.event_id == f"{item['pspReference']}:{code}"
    assert event.extra["amount"] == "140.76"
    assert event.extra["currency"] == "AUD"
    assert (event.failure_reason is None) == (status is not SessionStatus.FAILED)
    answer = adapter.webhook_answer()
    assert (answer.status, answer.body) == (200, b"[accepted]")


async def test_expiry_sends_offer_closed(
    env: tuple[StrictSandbox, WebhookSink], adapter: AdyenAdapter, http: aiohttp.ClientSession
) -> None:
    sandbox, sink = env
    session = await adapter.create_session(checkout_input(seed_request()), timeout=5)
    url = sandbox.url(f"/sandbox/admin/sessions/adyen/{session.reference}/expire")
    async with http.post(url) as response:
        assert response.status == 200
    [event] = await adapter.parse_webhook({}, sink.calls[0].body)
    assert (event.event_type, event.status) == ("OFFER_CLOSED", SessionStatus.EXPIRED)


def _tamper(body: bytes, change: Any) -> bytes:
    payload = orjson.loads(body)
    change(payload["notificationItems"][0]["NotificationRequestItem"])
    return orjson.dumps(payload)


@pytest.mark.parametrize(
    "change",
    [
        lambda item: item["amount"].update(value=1),
        lambda item: item.update(success="true", eventCode="AUTHORISATION", reason=None),
        lambda item: item.update(merchantReference="ORD-OTHER"),
        lambda item: item["additionalData"].pop("hmacSignature"),
        lambda item: item["additionalData"].update(hmacSignature="bm90IGEgc2lnbmF0dXJl"),
    ],
    ids=["amount", "outcome", "reference", "no-signature", "garbage-signature"],
)
async def test_tampered_notifications_are_refused(
    env: tuple[StrictSandbox, WebhookSink], adapter: AdyenAdapter, change: Any
) -> None:
    _, body = await _paid_notification(env, adapter, "decline")
    with pytest.raises(WebhookVerificationError):
        await adapter.parse_webhook({}, _tamper(body, change))


async def test_notification_signed_with_an_unknown_key_is_refused(
    env: tuple[StrictSandbox, WebhookSink], http: aiohttp.ClientSession
) -> None:
    sandbox, _ = env
    signer = AdyenAdapter(sandbox.provider_config("adyen"), http)
    _, body = await _paid_notification(env, signer)
    other_key = "00" * 32
    verifier = AdyenAdapter(sandbox.provider_config("adyen", hmac_key=other_key), http)
    with pytest.raises(WebhookVerificationError, match="HMAC signature invalid"):
        await verifier.parse_webhook({}, body)


async def test_one_forged_item_rejects_the_whole_batch(
    env: tuple[StrictSandbox, WebhookSink], adapter: AdyenAdapter
) -> None:
    _, body = await _paid_notification(env, adapter)
    payload = orjson.loads(body)
    genuine = payload["notificationItems"][0]
    forged = orjson.loads(orjson.dumps(genuine))
    forged["NotificationRequestItem"]["pspReference"] = "FORGED0000000000"
    payload["notificationItems"] = [genuine, forged]
    with pytest.raises(WebhookVerificationError, match="item 1"):
        await adapter.parse_webhook({}, orjson.dumps(payload))


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"notificationItems": []}'])
async def test_malformed_notifications_are_refused(adapter: AdyenAdapter, body: bytes) -> None:
    with pytest.raises(WebhookVerificationError):
        await adapter.parse_webhook({}, body)


def _item(code: str, success: str, **extra: Any) -> dict[str, Any]:
    item = {
        "pspReference": "8815000000000001",
        "merchantAccountCode": "SandboxMerchantECOM",
        "merchantReference": "ORD-1",
        "amount": {"value": 100, "currency": "EUR"},
        "eventCode": code,
        "success": success,
        "eventDate": "2024-05-01T10:00:00+02:00",
        "additionalData": {"metadata.gatewaySessionId": "ses_9"},
        **extra,
    }
    item["additionalData"]["hmacSignature"] = hmac_signature(item, HMAC_KEY)
    return item


@pytest.mark.parametrize(
    ("code", "success", "status"),
    [
        ("AUTHORISATION", "true", SessionStatus.COMPLETED),
        ("AUTHORISATION", "false", SessionStatus.FAILED),
        ("CANCELLATION", "true", SessionStatus.CANCELLED),
        ("CANCELLATION", "false", None),
        ("OFFER_CLOSED", "true", SessionStatus.EXPIRED),
        ("CAPTURE", "true", SessionStatus.COMPLETED),
        ("CAPTURE", "false", None),
        ("CAPTURE_FAILED", "true", None),
        ("REFUND", "true", None),
        ("SOMETHING_NEW", "true", None),
    ],
)
async def test_event_code_mapping_never_invents_success(
    adapter: AdyenAdapter, code: str, success: str, status: SessionStatus | None
) -> None:
    body = orjson.dumps(
        {"live": "false", "notificationItems": [{"NotificationRequestItem": _item(code, success)}]}
    )
    [event] = await adapter.parse_webhook({}, body)
    assert event.status == status
    assert event.session_id == "ses_9"
    assert event.reference is None
    assert event.occurred_at is not None
    assert event.occurred_at.utcoffset() is not None


def test_nested_metadata_form_is_read_too() -> None:
    item = _item("AUTHORISATION", "true")
    item["additionalData"] = {"metadata": {"gatewaySessionId": "ses_nested"}}
    assert event_from_item(item).session_id == "ses_nested"
