"""A series at each provider through a real ``gateway serve`` process and its embedded sandbox,
over real sockets: the customer saves a method (``first_in_series`` or ``setup``) on the
sandbox's hosted page, the provider's webhook completes the session, then the merchant charges
the saved method with no customer present (``next_in_series``) and refunds part of the charge.

The gateway runs as `make run` does (sandbox mode, the sandbox mounted under ``/sandbox``, its
webhooks sent back to the same process), on the memory store and on Redis.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.api.conftest import JWT_SECRET, ROOT, headers, processes, seed
from tests.gateway_processes import free_port, start_gateway, wait_ready

__all__ = ["processes"]

pytestmark = pytest.mark.timeout(60)

#: how each provider's mandate is made, and the request fields that send a session there
MANDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "stripe": ("first_in_series", {}),
    "adyen": ("setup", {}),
    "paypal": ("first_in_series", {"paymentMethod": "paypal"}),
}
STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


def pinning_rules(tmp_path: Path) -> Path:
    """The default rules, plus: ``additionalInformation.pin`` names the provider to use."""
    rules = yaml.safe_load((ROOT / "routing_rules.yaml").read_text())
    rules["scoring"]["exploration"] = 0
    for provider in MANDATES:
        rules["rules"].insert(
            0,
            {
                "id": f"e2e-pin-{provider}",
                "priority": 5000,
                "when": {"additional_information": {"key": "pin", "values": [provider]}},
                "then": {"pin": provider},
            },
        )
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


@dataclass
class Gateway:
    """A running gateway process: its base URL and an HTTP client."""

    base: str
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.request(
            method, f"{self.base}{path}", json=body, headers=headers(key)
        ) as answer:
            return answer.status, await answer.json()

    async def read(self, session_id: str) -> dict[str, Any]:
        status, view = await self.call("GET", f"/api/v1/sessions/{session_id}")
        assert status == 200, view
        return view

    async def faults(self, **faults: Any) -> None:
        async with self.http.post(f"{self.base}/sandbox/admin/faults", json=faults) as answer:
            assert answer.status == 200, await answer.text()


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """The first truthy result of ``check()``, polled until ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture(params=STORES)
async def gateway(
    request: pytest.FixtureRequest,
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> AsyncIterator[Gateway]:
    """``gateway serve`` in sandbox mode with the embedded sandbox, on the parametrized store."""
    port = free_port()
    env = {
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_RULES_PATH": str(pinning_rules(tmp_path)),
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    if request.param == "redis":
        env |= {
            "GATEWAY_STORE": "redis",
            "GATEWAY_REDIS_URL": request.getfixturevalue("redis_url"),
            "GATEWAY_REDIS_PREFIX": request.getfixturevalue("redis_prefix"),
        }
    processes.append(start_gateway(port, env, output=tmp_path / "gateway.log"))
    await wait_ready(port, processes[-1])
    async with aiohttp.ClientSession() as http:
        yield Gateway(f"http://127.0.0.1:{port}", http)


async def saved_mandate(gw: Gateway, provider: str) -> dict[str, Any]:
    """The provider's mandate session, saved on the hosted page: its view, COMPLETED."""
    session_type, fields = MANDATES[provider]
    body = seed(
        sessionType=session_type,
        orderReference=f"ORD-{provider}-mandate",
        customerReference="cust-42",
        additionalInformation={"pin": provider},
        **fields,
    )
    if session_type == "setup":
        body["amount"] = {"total": 0}
        del body["orderItems"]
    status, created = await gw.call("POST", "/api/v1/sessions", body, key=f"{provider}-mandate")
    assert status == 201, created
    assert created["routing"]["selectedProvider"] == provider
    async with gw.http.post(f"{created['checkoutUrl']}/pay", allow_redirects=False) as pressed:
        assert pressed.status == 303

    async def completed() -> dict[str, Any] | None:
        view = await gw.read(created["sessionId"])
        return view if view["status"] == "COMPLETED" else None

    view: dict[str, Any] = await until(completed)
    assert view["sessionType"] == session_type
    assert view["paymentMethodId"]
    assert view["customerId"]
    return view


def next_payment(mandate_id: str, provider: str) -> dict[str, Any]:
    """A next payment of 50.00 AUD charged to the mandate (no pin: the mandate decides)."""
    body = seed(
        sessionType="next_in_series",
        mandateSessionId=mandate_id,
        orderReference=f"ORD-{provider}-next",
        amount={"total": "50.00"},
        orderItems=[{"name": "Monthly plan", "sku": "PLAN-M", "quantity": 1, "unitPrice": "50"}],
        **MANDATES[provider][1],
    )
    del body["redirectUrls"]
    return body


@pytest.mark.parametrize("provider", list(MANDATES))
async def test_a_series_charged_and_refunded_at_the_mandates_provider(
    gateway: Gateway, provider: str
) -> None:
    gw = gateway
    mandate = await saved_mandate(gw, provider)
    body = next_payment(mandate["sessionId"], provider)
    # the decision's explanation: only the mandate's provider, and why
    status, decision = await gw.call("POST", "/api/v1/routing/simulate", body)
    assert status == 200, decision
    assert decision["notes"][0] == (
        f"next_in_series: routed only to {provider}, which holds the mandate"
    )
    assert {e["reason"] for e in decision["excluded"]} == {f"mandate is held by {provider}"}

    status, charged = await gw.call("POST", "/api/v1/sessions", body, key=f"{provider}-next")
    assert status == 201, charged
    assert (charged["checkoutUrl"], charged["status"]) == (None, "COMPLETED")
    assert charged["routing"]["selectedProvider"] == provider
    assert [(a["provider"], a["outcome"]) for a in charged["routing"]["attempts"]] == [
        (provider, "charged")
    ]
    session_id = charged["sessionId"]
    view = await gw.read(session_id)
    assert view["mandateSessionId"] == mandate["sessionId"]
    assert (view["customerId"], view["paymentMethodId"]) == (
        mandate["customerId"],
        mandate["paymentMethodId"],
    )
    assert (view["amountCaptured"], view["amountRefunded"]) == ("50.00", "0.00")
    assert [(t["status"], t["source"]) for t in view["transitions"]] == [
        ("PENDING", "gateway"),
        ("COMPLETED", f"api:{provider}"),
    ]

    refunds = f"/api/v1/sessions/{session_id}/refunds"
    status, refund = await gw.call(
        "POST", refunds, {"amount": "12.50", "reason": "requested_by_customer"}, f"{provider}-rf"
    )
    assert status == 201, refund
    assert (refund["amount"], refund["currency"]) == ("12.50", "AUD")

    async def settled() -> list[dict[str, Any]] | None:
        status, listed = await gw.call("GET", refunds)
        assert status == 200, listed
        done = [r for r in listed["data"] if r["status"] != "PENDING"]
        return listed["data"] if done else None

    listed = await until(settled)  # the provider's refund webhook moves it
    assert [(r["refundId"], r["status"]) for r in listed] == [(refund["refundId"], "SUCCEEDED")]
    assert listed[0]["providerRefundId"]
    view = await gw.read(session_id)
    assert (view["status"], view["amountCaptured"], view["amountRefunded"]) == (
        "COMPLETED",
        "50.00",
        "12.50",
    )


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
async def test_a_declined_next_payment_is_a_failed_session(gateway: Gateway) -> None:
    gw = gateway
    mandate = await saved_mandate(gw, "adyen")
    await gw.faults(provider="adyen", declineOffSession=True)
    body = next_payment(mandate["sessionId"], "adyen")
    status, charged = await gw.call("POST", "/api/v1/sessions", body, key="adyen-declined")
    assert status == 201, charged
    assert (charged["checkoutUrl"], charged["status"]) == (None, "FAILED")
    assert [(a["provider"], a["outcome"]) for a in charged["routing"]["attempts"]] == [
        ("adyen", "declined")
    ]
    view = await gw.read(charged["sessionId"])
    assert view["status"] == "FAILED"
    assert view["failureReason"]
    assert view["amountCaptured"] == "0.00"
    # nothing was captured: nothing to refund
    status, refused = await gw.call(
        "POST", f"/api/v1/sessions/{charged['sessionId']}/refunds", {"amount": "1.00"}, "rf"
    )
    assert status == 409, refused
    assert refused["status"] == "FAILED"
