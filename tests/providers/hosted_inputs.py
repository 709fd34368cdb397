"""Inputs, a webhook sink and sandbox helpers shared by the Adyen and PayPal adapter tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.domain.models import CheckoutRequest, parse_checkout_request, semantic_problems
from gateway.domain.session import utcnow
from providers.base import CreateSessionInput
from providers.sandbox.state import SandboxConfig
from tests.contracts.strict_sandbox import ServerFactory, StrictSandbox, start_strict_sandbox

SEED_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "seed_request.json"


def seed_request() -> CheckoutRequest:
    """The seed request, parsed exactly as the gateway parses request bodies."""
    return parse_checkout_request(SEED_PATH.read_bytes())


def seed_data() -> dict[str, Any]:
    """The seed request as JSON data with exact ``Decimal`` amounts, for variations."""
    data: dict[str, Any] = json.loads(SEED_PATH.read_text(), parse_float=Decimal)
    return data


def request_from(data: dict[str, Any]) -> CheckoutRequest:
    """Validate a variation of the seed; fails the test if the variation itself is invalid."""
    request = CheckoutRequest.model_validate(data)
    problems = semantic_problems(request)
    assert not problems, problems
    return request


def order(
    currency: str,
    unit: str,
    quantity: int = 1,
    shipping: str = "0",
    tax: str = "0",
    **changes: Any,
) -> CheckoutRequest:
    """The seed with one item line in ``currency`` and totals that add up exactly."""
    data = seed_data()
    unit_price, ship, vat = Decimal(unit), Decimal(shipping), Decimal(tax)
    data["currency"] = currency
    data["orderItems"] = [
        {"name": "Thing", "sku": "T-1", "quantity": quantity, "unitPrice": unit_price}
    ]
    data["amount"] = {"total": unit_price * quantity + ship + vat, "shipping": ship, "tax": vat}
    data.update(changes)
    return request_from(data)


def checkout_input(
    request: CheckoutRequest,
    *,
    key: str = "merchant-1:order-key-1:provider",
    session_id: str = "ses_01HTESTSESSION0001",
    expires_in: int | None = None,
) -> CreateSessionInput:
    """A create-session input as the gateway builds it."""
    seconds = expires_in if expires_in is not None else request.expiresIn
    return CreateSessionInput(
        session_id=session_id,
        merchant_id="merchant-1",
        idempotency_key=key,
        request=request,
        expires_at=utcnow() + timedelta(seconds=seconds),
    )


@dataclass
class Received:
    """One webhook call the sink received."""

    provider: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookSink:
    """A stand-in for the gateway's webhook endpoint that records every call."""

    server: TestServer
    calls: list[Received] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


async def start_sink(aiohttp_server: ServerFactory) -> WebhookSink:
    """Start a recording ``POST /api/v1/webhooks/{provider}`` endpoint on a real socket."""
    app = web.Application()
    calls: list[Received] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        calls.append(Received(request.match_info["provider"], dict(request.headers), body))
        return web.Response(text="[accepted]")

    app.router.add_post("/api/v1/webhooks/{provider}", hook)
    sink = WebhookSink(await aiohttp_server(app))
    sink.calls = calls
    return sink


async def start_sandbox_with_sink(
    aiohttp_server: ServerFactory,
) -> tuple[StrictSandbox, WebhookSink]:
    """A strict-contract sandbox whose webhooks go to a recording sink."""
    sink = await start_sink(aiohttp_server)
    config = SandboxConfig(gateway_base_url=sink.base_url, expiry_sweep_seconds=0)
    return await start_strict_sandbox(aiohttp_server, config), sink


async def set_fault(sandbox: StrictSandbox, provider: str, **fault: Any) -> None:
    """Inject faults through the sandbox admin API."""
    async with aiohttp.ClientSession() as client:
        url = sandbox.url("/sandbox/admin/faults")
        async with client.post(url, json={"provider": provider, **fault}) as response:
            assert response.status == 200, await response.text()


async def press(checkout_url: str, action: str) -> tuple[int, str]:
    """Press Pay / Decline / Cancel on the hosted page like a browser; (status, Location)."""
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{checkout_url}/{action}", allow_redirects=False) as response,
    ):
        return response.status, response.headers.get("Location", "")
