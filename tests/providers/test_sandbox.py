"""The sandbox: hosted pay page, signed webhooks, fault admin, Stripe emulation semantics."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.domain.session import SessionStatus
from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import FaultSettings, SandboxConfig
from providers.stripe.adapter import StripeAdapter
from providers.stripe.transformers import encode_form
from tests.contracts.spec_validator import validate_response
from tests.contracts.strict_sandbox import ServerFactory, StrictSandbox, start_strict_sandbox
from tests.providers.stripe_support import session_input

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
STRIPE_AUTH = {"Authorization": "Bearer sk_test_sandbox"}
SUCCESS = "https://merchant.example.com/checkout/success"
FAILURE = "https://merchant.example.com/checkout/failure"


@dataclass
class Receiver:
    """A stand-in for the gateway's webhook endpoint."""

    url: str
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver(aiohttp_server: ServerFactory) -> Receiver:
    calls: list[tuple[str, dict[str, str], bytes]] = []

    async def take(request: web.Request) -> web.Response:
        calls.append((request.match_info["provider"], dict(request.headers), await request.read()))
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post("/api/v1/webhooks/{provider}", take)
    server = await aiohttp_server(app)
    return Receiver(str(server.make_url("")).rstrip("/"), calls)


@pytest.fixture
async def sandbox(aiohttp_server: ServerFactory, receiver: Receiver) -> StrictSandbox:
    config = SandboxConfig(gateway_base_url=receiver.url, expiry_sweep_seconds=0)
    return await start_strict_sandbox(aiohttp_server, config)


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> StripeAdapter:
    return StripeAdapter(sandbox.provider_config("stripe"), http)


async def press(http: aiohttp.ClientSession, checkout_url: str, action: str) -> tuple[int, str]:
    async with http.post(f"{checkout_url}/{action}", allow_redirects=False) as response:
        return response.status, response.headers.get("Location", "")


# pay page and webhooks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "location", "status", "stored"),
    [
        ("pay", SUCCESS, SessionStatus.COMPLETED, "paid"),
        ("decline", FAILURE, SessionStatus.FAILED, "declined"),
        ("cancel", FAILURE, SessionStatus.EXPIRED, "cancelled"),
    ],
)
async def test_buttons_redirect_and_send_a_signed_webhook(
    sandbox: StrictSandbox,
    adapter: StripeAdapter,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    action: str,
    location: str,
    status: SessionStatus,
    stored: str,
) -> None:
    data = session_input()
    session = await adapter.create_session(data, timeout=5)

    assert await press(http, session.checkout_url, action) == (303, location)

    [(provider, headers, body)] = receiver.calls
    assert provider == "stripe"
    [event] = await adapter.parse_webhook(headers, body)
    assert event.status is status
    assert event.reference == session.reference
    assert event.session_id == data.session_id
    assert event.extra["order_reference"] == "ORD-2024-001"
    record = sandbox.state.get_session("stripe", session.reference)
    assert record is not None
    assert record.status == stored
    assert sandbox.state.stats()["webhooksSent"] == {"stripe": 1}

    async with http.get(session.checkout_url) as page:
        assert page.status in (409, 410)
        assert 'id="pay"' not in await page.text()
    assert await press(http, session.checkout_url, "pay") == (page.status, "")
    assert len(receiver.calls) == 1  # a finished session sends nothing more


async def test_expired_session_page_and_expiry_webhook(
    sandbox: StrictSandbox, adapter: StripeAdapter, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    session = await adapter.create_session(session_input(), timeout=5)
    stored = sandbox.state.get_session("stripe", session.reference)
    assert stored is not None
    stored.expires_at = datetime.now(UTC) - timedelta(seconds=1)

    async with http.get(session.checkout_url) as page:
        assert page.status == 410
        text = await page.text()
    assert "expired" in text
    assert 'id="pay"' not in text
    status, _ = await press(http, session.checkout_url, "pay")
    assert status == 410
    [(_, headers, body)] = receiver.calls
    [event] = await adapter.parse_webhook(headers, body)
    assert event.status is SessionStatus.EXPIRED


async def test_admin_expire_and_the_sweeper(
    aiohttp_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    config = SandboxConfig(gateway_base_url=receiver.url, expiry_sweep_seconds=0.05)
    sandbox = await start_strict_sandbox(aiohttp_server, config)
    adapter = StripeAdapter(sandbox.provider_config("stripe"), http)
    first = await adapter.create_session(session_input(), timeout=5)
    second = await adapter.create_session(session_input(), timeout=5)

    url = sandbox.url(f"/sandbox/admin/sessions/stripe/{first.reference}/expire")
    async with http.post(url) as response:
        assert await response.json() == {
            "id": first.reference,
            "status": "expired",
            "changed": True,
        }
    stored = sandbox.state.get_session("stripe", second.reference)
    assert stored is not None
    stored.expires_at = datetime.now(UTC)
    for _ in range(100):
        if len(receiver.calls) == 2:
            break
        await asyncio.sleep(0.02)
    events = [(await adapter.parse_webhook(h, b))[0] for _, h, b in receiver.calls]
    assert [(e.reference, e.status) for e in events] == [
        (first.reference, SessionStatus.EXPIRED),
        (second.reference, SessionStatus.EXPIRED),
    ]


async def test_webhook_failure_never_breaks_the_redirect(
    aiohttp_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    config = SandboxConfig(gateway_base_url=f"http://127.0.0.1:{closed}", expiry_sweep_seconds=0)
    sandbox = await start_strict_sandbox(aiohttp_server, config)
    adapter = StripeAdapter(sandbox.provider_config("stripe"), http)
    session = await adapter.create_session(session_input(), timeout=5)
    assert await press(http, session.checkout_url, "pay") == (303, SUCCESS)
    assert sandbox.state.stats()["webhooksFailed"] == {"stripe": 1}


async def test_unknown_session_and_action(sandbox: StrictSandbox, adapter: StripeAdapter) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(sandbox.url("/sandbox/pay/stripe/cs_test_missing")) as page:
            assert page.status == 404
        session = await adapter.create_session(session_input(), timeout=5)
        async with client.post(f"{session.checkout_url}/refund", allow_redirects=False) as r:
            assert r.status == 404


# fault admin --------------------------------------------------------------------------------


async def test_faults_admin_set_get_reset_and_stats(
    sandbox: StrictSandbox, adapter: StripeAdapter, http: aiohttp.ClientSession
) -> None:
    faults_url = sandbox.url("/sandbox/admin/faults")
    async with http.get(faults_url) as response:
        initial = await response.json()
    assert set(initial) == {"stripe", "adyen", "paypal"}
    assert initial["stripe"]["errorRate"] == 0

    for bad in (
        {"provider": "acme", "errorRate": 1},
        {"provider": "stripe", "errorRate": 2},
        {"provider": "stripe", "latencyMs": -1},
        {"provider": "stripe", "down": "yes"},
        {"provider": "stripe", "surprise": 1},
    ):
        async with http.post(faults_url, json=bad) as response:
            assert response.status == 400, bad
    async with http.post(faults_url, data=b"{not json") as response:
        assert response.status == 400

    async with http.post(faults_url, json={"provider": "stripe", "latencyMs": 200}) as response:
        assert (await response.json())["stripe"]["latencyMs"] == 200
    started = time.monotonic()
    await adapter.create_session(session_input(), timeout=5)
    assert time.monotonic() - started >= 0.2

    async with http.delete(faults_url) as response:
        assert (await response.json()) == initial
    started = time.monotonic()
    await adapter.create_session(session_input(), timeout=5)
    assert time.monotonic() - started < 0.2

    async with http.get(sandbox.url("/sandbox/admin/stats")) as response:
        stats = await response.json()
    assert stats["sessionsCreated"] == {"stripe": 2}


async def test_start_up_faults_and_provider_error_bodies(
    aiohttp_client: ClientFactory,
) -> None:
    config = SandboxConfig(
        faults={"stripe": FaultSettings(rate_limit_rate=1.0, retry_after_seconds=3)},
        expiry_sweep_seconds=0,
    )
    client = await aiohttp_client(create_sandbox_root(config))
    response = await client.post("/sandbox/stripe/v1/checkout/sessions", headers=STRIPE_AUTH)
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"
    body = await response.json()
    assert body["error"]["code"] == "rate_limit"
    assert validate_response("stripe", 429, body) == []

    await client.post("/sandbox/admin/faults", json={"provider": "stripe", "errorRate": 1})
    response = await client.post("/sandbox/stripe/v1/checkout/sessions", headers=STRIPE_AUTH)
    assert response.status == 500
    body = await response.json()
    assert body["error"]["type"] == "api_error"
    assert validate_response("stripe", 500, body) == []

    # reset returns to the start-up faults, per provider too
    await client.delete("/sandbox/admin/faults", params={"provider": "stripe"})
    response = await client.post("/sandbox/stripe/v1/checkout/sessions", headers=STRIPE_AUTH)
    assert response.status == 429
    # faults never apply to the admin API or the pay page
    assert (await client.get("/sandbox/admin/stats")).status == 200


# Stripe emulation ---------------------------------------------------------------------------


def create_form(**overrides: Any) -> str:
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 1999,
                    "product_data": {"name": "T-shirt"},
                },
                "quantity": 2,
            }
        ],
        "success_url": SUCCESS,
        "cancel_url": FAILURE,
        "client_reference_id": "order_42",
        "metadata": {"gateway_session_id": "ses_1"},
        "expires_at": int(time.time()) + 3600,
    }
    params.update(overrides)
    return encode_form({k: v for k, v in params.items() if v is not None})


FORM_HEADERS = {**STRIPE_AUTH, "Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def stripe(aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(create_sandbox_root(SandboxConfig(expiry_sweep_seconds=0)))


async def test_created_object_matches_the_response_schema(stripe: TestClient[Any, Any]) -> None:
    response = await stripe.post(
        "/sandbox/stripe/v1/checkout/sessions", data=create_form(), headers=FORM_HEADERS
    )
    body = await response.json()
    assert response.status == 200
    assert validate_response("stripe", 200, body) == []
    assert body["object"] == "checkout.session"
    assert body["id"].startswith("cs_test_")
    assert (body["status"], body["payment_status"]) == ("open", "unpaid")
    assert body["amount_total"] == 3998
    assert body["currency"] == "usd"
    assert body["client_reference_id"] == "order_42"
    assert body["metadata"] == {"gateway_session_id": "ses_1"}
    assert body["url"] == str(stripe.make_url(f"/sandbox/pay/stripe/{body['id']}"))

    fetched = await stripe.get(
        f"/sandbox/stripe/v1/checkout/sessions/{body['id']}", headers=STRIPE_AUTH
    )
    assert (await fetched.json())["id"] == body["id"]
    missing = await stripe.get("/sandbox/stripe/v1/checkout/sessions/cs_nope", headers=STRIPE_AUTH)
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "resource_missing"


@pytest.mark.parametrize(
    ("form", "code", "param"),
    [
        (create_form(payment_method_types=["card"]), "parameter_unknown", "payment_method_types"),
        (create_form(line_items=None), "parameter_missing", "line_items"),
        (
            create_form(line_items=[{"price_data": {"currency": "usd"}, "quantity": 1}]),
            "parameter_missing",
            "line_items[0][price_data][product_data]",
        ),
        (create_form(expires_at=int(time.time()) + 60), None, "expires_at"),
        (create_form(locale="en-AU"), None, "locale"),
    ],
)
async def test_parameter_errors_in_stripes_shape(
    stripe: TestClient[Any, Any], form: str, code: str | None, param: str
) -> None:
    response = await stripe.post(
        "/sandbox/stripe/v1/checkout/sessions", data=form, headers=FORM_HEADERS
    )
    body = await response.json()
    assert response.status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"].get("code") == code
    assert body["error"]["param"] == param
    assert validate_response("stripe", 400, body) == []


async def test_wrong_key_is_401_in_stripes_shape(stripe: TestClient[Any, Any]) -> None:
    for auth in ({}, {"Authorization": "Bearer sk_test_other"}):
        response = await stripe.post(
            "/sandbox/stripe/v1/checkout/sessions",
            data=create_form(),
            headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "api_key_invalid"


async def test_idempotency_semantics(stripe: TestClient[Any, Any]) -> None:
    url = "/sandbox/stripe/v1/checkout/sessions"
    headers = {**FORM_HEADERS, "Idempotency-Key": "idem-1"}
    form = create_form()
    first = await stripe.post(url, data=form, headers=headers)
    replay = await stripe.post(url, data=form, headers=headers)
    assert first.status == replay.status == 200
    assert await replay.read() == await first.read()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Request-Id"] == first.headers["Request-Id"]

    other = await stripe.post(url, data=create_form(client_reference_id="x"), headers=headers)
    assert other.status == 400
    assert (await other.json())["error"]["type"] == "idempotency_error"

    # a request that failed validation saved nothing: the key can be used again
    retry_headers = {**FORM_HEADERS, "Idempotency-Key": "idem-2"}
    invalid = await stripe.post(url, data=create_form(line_items=None), headers=retry_headers)
    assert invalid.status == 400
    valid = await stripe.post(url, data=form, headers=retry_headers)
    assert valid.status == 200

    too_long = {**FORM_HEADERS, "Idempotency-Key": "k" * 256}
    assert (await stripe.post(url, data=form, headers=too_long)).status == 400

    stats = await (await stripe.get("/sandbox/admin/stats")).json()
    assert stats["sessionsCreated"] == {"stripe": 2}


async def test_concurrent_requests_with_one_key_conflict(stripe: TestClient[Any, Any]) -> None:
    await stripe.post("/sandbox/admin/faults", json={"provider": "stripe", "processingMs": 200})
    headers = {**FORM_HEADERS, "Idempotency-Key": "race"}
    form = create_form()
    first, second = await asyncio.gather(
        stripe.post("/sandbox/stripe/v1/checkout/sessions", data=form, headers=headers),
        stripe.post("/sandbox/stripe/v1/checkout/sessions", data=form, headers=headers),
    )
    assert sorted([first.status, second.status]) == [200, 409]
    conflict = first if first.status == 409 else second
    assert (await conflict.json())["error"]["type"] == "idempotency_error"
