"""The Stripe adapter against the sandbox behind the strict contract middleware (real sockets)."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from gateway.domain.money import exponent, to_minor
from gateway.domain.session import SessionStatus
from gateway.settings import SANDBOX_SECRETS
from providers.base import (
    FlowNotSupported,
    PaymentOperations,
    ProviderAdapter,
    ProviderKeyConflict,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    WebhookVerificationError,
)
from providers.stripe.adapter import StripeAdapter
from providers.stripe.transformers import (
    STRIPE_API_VERSION,
    clamp_expiry,
    stripe_locale,
    to_stripe_minor,
)
from providers.stripe.webhooks import sign_payload, verify_signature
from tests.contracts.spec_validator import load_spec, stripe_form_to_dict
from tests.contracts.strict_sandbox import ServerFactory, StrictSandbox, start_strict_sandbox
from tests.providers.stripe_support import (
    checkout_request,
    seed_request,
    session_input,
    signed_event,
)

WEBHOOK_SECRET = SANDBOX_SECRETS["stripe"]["webhook_secret"]


@pytest.fixture
async def sandbox(aiohttp_server: ServerFactory) -> StrictSandbox:
    return await start_strict_sandbox(aiohttp_server)


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> StripeAdapter:
    return StripeAdapter(sandbox.provider_config("stripe"), http)


async def set_faults(sandbox: StrictSandbox, http: aiohttp.ClientSession, **faults: Any) -> None:
    async with http.post(
        sandbox.url("/sandbox/admin/faults"), json={"provider": "stripe", **faults}
    ) as response:
        assert response.status == 200, await response.text()


def last_form(sandbox: StrictSandbox) -> dict[str, Any]:
    return stripe_form_to_dict(sandbox.requests[-1].body.decode())


def test_implements_the_adapter_protocol(adapter: StripeAdapter) -> None:
    assert isinstance(adapter, ProviderAdapter)
    assert adapter.capabilities.payment_methods == {
        "card",
        "apple_pay",
        "google_pay",
        "klarna",
        "ideal",
        "sepa_debit",
    }
    assert adapter.capabilities.session_types == {
        "one_time",
        "first_in_series",
        "setup",
        "next_in_series",
    }
    assert isinstance(adapter, PaymentOperations)
    assert adapter.capabilities.partial_capture is True
    assert adapter.capabilities.authorization_days == 7


async def test_seed_request_conforms_to_the_spec_and_serves_a_pay_page(
    sandbox: StrictSandbox, adapter: StripeAdapter, http: aiohttp.ClientSession
) -> None:
    data = session_input(seed_request(), key="gw:seed-1")
    session = await adapter.create_session(data, timeout=5)

    assert sandbox.violations == []
    sent = sandbox.requests[-1]
    assert sent.headers["Stripe-Version"] == STRIPE_API_VERSION
    assert sent.headers["Idempotency-Key"] == "gw:seed-1"
    assert sent.headers["Authorization"] == "Bearer sk_test_sandbox"
    form = last_form(sandbox)
    assert form["line_items"] == [
        {
            "price_data": {
                "currency": "aud",
                "unit_amount": 11900,
                "product_data": {"name": "Wireless Headphones"},
            },
            "quantity": 1,
        },
        {
            "price_data": {"currency": "aud", "unit_amount": 1181, "product_data": {"name": "Tax"}},
            "quantity": 1,
        },
    ]
    rate = form["shipping_options"][0]["shipping_rate_data"]
    assert rate["fixed_amount"] == {"amount": 995, "currency": "aud"}
    assert rate["display_name"] == "aus_post"
    expected_metadata = {
        "gateway_session_id": data.session_id,
        "order_reference": "ORD-2024-001",
        "merchant_id": "merchant_42",
        "campaignId": "summer-sale-2024",
        "referralCode": "REF-ABC",
    }
    assert form["metadata"] == expected_metadata
    assert form["payment_intent_data"] == {"metadata": expected_metadata}
    assert form["mode"] == "payment"
    assert form["ui_mode"] == "hosted_page"
    assert form["locale"] == "en"
    assert form["client_reference_id"] == "ORD-2024-001"
    assert form["customer_email"] == "jane.smith@example.com"
    assert form["allowed_payment_method_types"] == ["card"]
    assert form["success_url"] == "https://merchant.example.com/checkout/success"
    assert form["cancel_url"] == "https://merchant.example.com/checkout/failure"

    assert session.reference.startswith("cs_test_")
    assert session.checkout_url == sandbox.url(f"/sandbox/pay/stripe/{session.reference}")
    assert session.expires_at is not None
    assert abs((session.expires_at - data.expires_at).total_seconds()) < 1
    stored = sandbox.state.get_session("stripe", session.reference)
    assert stored is not None
    assert stored.amount == 14076  # the Stripe total equals amount.total exactly

    async with http.get(session.checkout_url) as page:
        html = await page.text()
        assert page.status == 200
    assert page.content_type == "text/html"
    for button in ('id="pay"', 'id="decline"', 'id="cancel"'):
        assert button in html
    assert "140.76 AUD" in html
    assert "ORD-2024-001" in html


@pytest.mark.parametrize(
    ("currency", "unit", "shipping", "tax", "total", "minor_total"),
    [
        ("JPY", "1500", "500", "300", "5300", 5300),
        ("AUD", "19.99", "5.01", "2.50", "67.48", 6748),
        ("USD", "0.99", "0", "0.01", "2.98", 298),
        ("USD", "0.99", "0", "0", "2.97", 297),
        ("KWD", "12.340", "1.500", "0.120", "38.640", 38640),
    ],
)
async def test_amounts_in_minor_units_and_total_equality(
    sandbox: StrictSandbox,
    adapter: StripeAdapter,
    currency: str,
    unit: str,
    shipping: str,
    tax: str,
    total: str,
    minor_total: int,
) -> None:
    request = checkout_request(
        currency=currency,
        amount={"total": total, "shipping": shipping, "tax": tax},
        orderItems=[{"name": "Thing", "quantity": 3, "unitPrice": unit}],
    )
    session = await adapter.create_session(session_input(request), timeout=5)

    assert sandbox.violations == []
    form = last_form(sandbox)
    exp = exponent(currency)
    assert form["line_items"][0]["price_data"]["unit_amount"] == to_minor(Decimal(unit), exp)
    assert form["line_items"][0]["price_data"]["currency"] == currency.lower()
    shipped = form["shipping_options"][0]["shipping_rate_data"]["fixed_amount"]["amount"]
    items = sum(i["price_data"]["unit_amount"] * i["quantity"] for i in form["line_items"])
    assert items + shipped == minor_total
    stored = sandbox.state.get_session("stripe", session.reference)
    assert stored is not None
    assert stored.amount == minor_total
    if tax == "0" or Decimal(tax) == 0:
        assert [i["price_data"]["product_data"]["name"] for i in form["line_items"]] == ["Thing"]


def test_stripe_decimal_exceptions() -> None:
    assert to_stripe_minor(Decimal("500"), "ISK") == 50000  # two-decimal in Stripe's API
    assert to_stripe_minor(Decimal("500"), "JPY") == 500
    assert to_stripe_minor(Decimal("1.234"), "KWD") == 1234


async def test_amounts_stripe_cannot_take_exactly_are_refused_before_any_call(
    sandbox: StrictSandbox, adapter: StripeAdapter
) -> None:
    request = checkout_request(
        currency="KWD",
        amount={"total": "1.235", "shipping": "0", "tax": "0"},
        orderItems=[{"name": "Thing", "quantity": 1, "unitPrice": "1.235"}],
    )
    with pytest.raises(FlowNotSupported, match=r"multiples of 0\.010"):
        await adapter.create_session(session_input(request), timeout=5)
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"paymentMethod": "paypal"}, "not offered"),
        ({"paymentMethod": "ideal"}, "only in EUR"),
        ({"paymentMethod": "sepa_debit", "currency": "EUR", "captureMethod": "manual"}, "manual"),
    ],
)
async def test_flows_stripe_does_not_offer(
    adapter: StripeAdapter, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(FlowNotSupported, match=reason):
        await adapter.create_session(session_input(checkout_request(**changes)), timeout=5)


async def test_payment_method_and_manual_capture(
    sandbox: StrictSandbox, adapter: StripeAdapter
) -> None:
    request = checkout_request(paymentMethod="klarna", captureMethod="manual", locale="de_AT")
    await adapter.create_session(session_input(request), timeout=5)
    assert sandbox.violations == []
    form = last_form(sandbox)
    assert form["allowed_payment_method_types"] == ["klarna"]
    assert form["payment_intent_data"]["capture_method"] == "manual"
    assert form["locale"] == "de"


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en_AU", "en"),
        ("en_GB", "en-GB"),
        ("pt_BR", "pt-BR"),
        ("pt_PT", "pt"),
        ("es_MX", "es-419"),
        ("es_ES", "es"),
        ("zh_TW", "zh-TW"),
        ("no_NO", "nb"),
        ("xx_YY", "auto"),
        (None, "auto"),
    ],
)
def test_locale_mapping(locale: str | None, expected: str) -> None:
    assert stripe_locale(locale) == expected
    assert (
        expected
        in load_spec("stripe")["operation"]["request"]["schema"]["properties"]["locale"]["enum"]
    )


@pytest.mark.parametrize(
    ("expires_in", "low", "high"),
    [(300, 30 * 60, 35 * 60), (3600, 3599, 3601), (48 * 3600, 23 * 3600, 24 * 3600)],
)
async def test_expiry_is_clamped_into_stripes_window(
    sandbox: StrictSandbox, adapter: StripeAdapter, expires_in: int, low: int, high: int
) -> None:
    before = time.time()
    session = await adapter.create_session(session_input(expires_in=expires_in), timeout=5)
    assert sandbox.violations == []
    assert session.expires_at is not None
    assert low <= session.expires_at.timestamp() - before <= high
    now = datetime.now(UTC)
    assert clamp_expiry(now + timedelta(days=3), now) <= now + timedelta(hours=24)


async def test_idempotent_retry_returns_the_same_session(
    sandbox: StrictSandbox, adapter: StripeAdapter
) -> None:
    data = session_input(key="gw:retry-1")
    first = await adapter.create_session(data, timeout=5)
    second = await adapter.create_session(data, timeout=5)
    assert second.reference == first.reference
    assert second.checkout_url == first.checkout_url
    assert sandbox.state.sessions_created["stripe"] == 1
    assert len(sandbox.requests) == 2


async def test_reused_key_with_other_parameters_is_rejected(
    sandbox: StrictSandbox, adapter: StripeAdapter
) -> None:
    await adapter.create_session(session_input(key="gw:reuse"), timeout=5)
    other = session_input(checkout_request(orderReference="ORD-OTHER"), key="gw:reuse")
    with pytest.raises(ProviderKeyConflict) as caught:
        await adapter.create_session(other, timeout=5)
    assert not caught.value.in_flight
    cause = caught.value.__cause__
    assert isinstance(cause, ProviderRejected)
    assert (cause.status, cause.code) == (400, "idempotency_error")
    assert sandbox.state.sessions_created["stripe"] == 1


async def test_concurrent_same_key_conflicts(
    sandbox: StrictSandbox, adapter: StripeAdapter, http: aiohttp.ClientSession
) -> None:
    await set_faults(sandbox, http, processingMs=300)
    data = session_input(key="gw:race")
    results = await asyncio.gather(
        adapter.create_session(data, timeout=5),
        adapter.create_session(data, timeout=5),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, ProviderKeyConflict)]
    assert len(refused) == 1
    assert refused[0].in_flight
    cause = refused[0].__cause__
    assert isinstance(cause, ProviderRejected)
    assert (cause.status, cause.code) == (409, "idempotency_key_in_use")
    assert sandbox.state.sessions_created["stripe"] == 1


async def test_wrong_api_key_is_a_rejection(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    adapter = StripeAdapter(sandbox.provider_config("stripe", api_key="sk_test_wrong"), http)
    with pytest.raises(ProviderRejected) as caught:
        await adapter.create_session(session_input(), timeout=5)
    assert caught.value.status == 401
    assert caught.value.code == "api_key_invalid"
    assert not caught.value.retryable


async def test_server_error_is_unavailable(
    sandbox: StrictSandbox, adapter: StripeAdapter, http: aiohttp.ClientSession
) -> None:
    await set_faults(sandbox, http, errorRate=1)
    with pytest.raises(ProviderUnavailable) as caught:
        await adapter.create_session(session_input(), timeout=5)
    assert caught.value.status == 500
    assert caught.value.retryable
    assert sandbox.state.sessions_created["stripe"] == 0


async def test_rate_limit_carries_retry_after(
    sandbox: StrictSandbox, adapter: StripeAdapter, http: aiohttp.ClientSession
) -> None:
    await set_faults(sandbox, http, rateLimitRate=1, retryAfter=7)
    with pytest.raises(ProviderRateLimited) as caught:
        await adapter.create_session(session_input(), timeout=5)
    assert caught.value.retry_after == 7.0


async def test_no_answer_is_a_timeout(
    sandbox: StrictSandbox, adapter: StripeAdapter, http: aiohttp.ClientSession
) -> None:
    await set_faults(sandbox, http, timeout=True)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await adapter.create_session(session_input(), timeout=0.3)
    assert time.monotonic() - started < 2


async def test_dropped_connection_is_unavailable(
    sandbox: StrictSandbox, adapter: StripeAdapter, http: aiohttp.ClientSession
) -> None:
    await set_faults(sandbox, http, down=True)
    with pytest.raises(ProviderUnavailable, match="connection failed"):
        await adapter.create_session(session_input(), timeout=5)


async def test_connection_refused_is_unavailable(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = sandbox.provider_config("stripe", base_url=f"http://127.0.0.1:{port}/sandbox/stripe")
    with pytest.raises(ProviderUnavailable, match="connection failed"):
        await StripeAdapter(config, http).create_session(session_input(), timeout=5)


async def test_cancel_expires_the_session(
    sandbox: StrictSandbox, adapter: StripeAdapter, http: aiohttp.ClientSession
) -> None:
    session = await adapter.create_session(session_input(), timeout=5)
    await adapter.cancel_session(session.reference, timeout=5)
    stored = sandbox.state.get_session("stripe", session.reference)
    assert stored is not None
    assert stored.status == "expired"
    async with http.get(session.checkout_url) as page:
        assert page.status == 410
        assert "expired" in await page.text()
    with pytest.raises(ProviderRejected) as caught:
        await adapter.cancel_session(session.reference, timeout=5)
    assert caught.value.status == 400


# webhooks -----------------------------------------------------------------------------------


def webhook_adapter(
    http: aiohttp.ClientSession, sandbox: StrictSandbox, now: float
) -> StripeAdapter:
    return StripeAdapter(sandbox.provider_config("stripe"), http, clock=lambda: now)


def test_signature_test_vector_from_the_spec() -> None:
    vector = load_spec("stripe")["x-webhook-signature"]["test_vector"]
    body = vector["body"].encode()
    header_value = vector["header"]
    assert header_value == f"t={vector['t']},v1={sign_payload(vector['secret'], vector['t'], body)}"
    assert (
        verify_signature(vector["secret"], header_value, body, now=vector["t"] + 10) == vector["t"]
    )
    with pytest.raises(WebhookVerificationError):
        verify_signature("whsec_other", header_value, body, now=vector["t"])


async def test_valid_webhook_maps_to_a_completed_event(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    headers, body = signed_event(
        WEBHOOK_SECRET,
        obj={"customer": "cus_9", "payment_intent": {"id": "pi_9", "payment_method": "pm_9"}},
        timestamp=1_700_000_000,
    )
    adapter = webhook_adapter(http, sandbox, 1_700_000_100)
    [event] = await adapter.parse_webhook({k.lower(): v for k, v in headers.items()}, body)
    assert event.status is SessionStatus.COMPLETED
    assert event.event_id == "evt_test_1"
    assert event.event_type == "checkout.session.completed"
    assert event.reference == "cs_test_abc"
    assert event.session_id == "ses_1"
    assert event.customer_id == "cus_9"
    assert event.payment_method_id == "pm_9"
    assert event.extra["payment_intent"] == "pi_9"
    assert event.occurred_at == datetime.fromtimestamp(1_700_000_000, UTC)
    answer = adapter.webhook_answer()
    assert (answer.status, answer.body, answer.content_type) == (
        200,
        b'{"received":true}',
        "application/json",
    )


async def test_tampered_body_is_refused(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    headers, body = signed_event(WEBHOOK_SECRET, timestamp=1_700_000_000)
    adapter = webhook_adapter(http, sandbox, 1_700_000_000)
    with pytest.raises(WebhookVerificationError, match="no matching"):
        await adapter.parse_webhook(headers, body.replace(b'"paid"', b'"PAID"'))


@pytest.mark.parametrize(("age", "ok"), [(299, True), (301, False), (-301, False)])
async def test_signature_age_tolerance(
    sandbox: StrictSandbox, http: aiohttp.ClientSession, age: int, ok: bool
) -> None:
    headers, body = signed_event(WEBHOOK_SECRET, timestamp=1_700_000_000)
    adapter = webhook_adapter(http, sandbox, 1_700_000_000 + age)
    if ok:
        assert len(await adapter.parse_webhook(headers, body)) == 1
    else:
        with pytest.raises(WebhookVerificationError, match="tolerance"):
            await adapter.parse_webhook(headers, body)


async def test_any_of_several_v1_signatures_may_match(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    headers, body = signed_event(WEBHOOK_SECRET, timestamp=1_700_000_000)
    t, good = headers["Stripe-Signature"].split(",")
    bad = "v1=" + "0" * 64
    adapter = webhook_adapter(http, sandbox, 1_700_000_000)
    rotated = {"Stripe-Signature": f"{t},{bad},{good},v0=legacy"}
    assert len(await adapter.parse_webhook(rotated, body)) == 1
    with pytest.raises(WebhookVerificationError):
        await adapter.parse_webhook({"Stripe-Signature": f"{t},{bad}"}, body)
    with pytest.raises(WebhookVerificationError, match="missing"):
        await adapter.parse_webhook({}, body)
    with pytest.raises(WebhookVerificationError, match="v1"):
        await adapter.parse_webhook({"Stripe-Signature": t}, body)


@pytest.mark.parametrize(
    ("event_type", "payment_status", "expected"),
    [
        ("checkout.session.completed", "paid", SessionStatus.COMPLETED),
        ("checkout.session.completed", "unpaid", SessionStatus.PROCESSING),
        ("checkout.session.completed", "no_payment_required", SessionStatus.PROCESSING),
        ("checkout.session.async_payment_succeeded", "paid", SessionStatus.COMPLETED),
        ("checkout.session.async_payment_failed", "unpaid", SessionStatus.FAILED),
        ("checkout.session.expired", "unpaid", SessionStatus.EXPIRED),
        ("checkout.session.created", "unpaid", None),
    ],
)
async def test_event_status_mapping(
    sandbox: StrictSandbox,
    http: aiohttp.ClientSession,
    event_type: str,
    payment_status: str,
    expected: SessionStatus | None,
) -> None:
    headers, body = signed_event(WEBHOOK_SECRET, event_type, obj={"payment_status": payment_status})
    adapter = StripeAdapter(sandbox.provider_config("stripe"), http)
    [event] = await adapter.parse_webhook(headers, body)
    assert event.status is expected
    if expected is SessionStatus.FAILED:
        assert event.failure_reason == "async_payment_failed"


def test_merchant_metadata_stays_within_stripe_limits() -> None:
    from providers.stripe.transformers import _merchant_metadata

    info = {f"k{i:02d}": "v" * 600 for i in range(60)}
    info["x" * 41] = "too long a key"
    info["gateway_session_id"] = "spoofed"
    out = _merchant_metadata(info, used=3)
    assert len(out) == 50 - 3 - 1
    assert all(len(k) <= 40 and len(v) == 500 for k, v in out.items())
    assert "gateway_session_id" not in out
    assert "x" * 41 not in out
