"""A series at each provider through a real ``gateway serve`` process and its embedded sandbox,
over real sockets: the customer saves a method (``first_in_series`` or ``setup``) on the
sandbox's hosted page, the provider's webhook completes the session, then the merchant charges
the saved method with no customer present (``next_in_series``) and refunds part of the charge.

The gateway runs as `make run` does (sandbox mode, the sandbox mounted under ``/sandbox``, its
webhooks sent back to the same process), on the memory store, Redis and PostgreSQL: one process
per store serves the three providers' series. A declined customer-absent charge (the sandbox's
``declineOffSession``) is a 201 with the session FAILED.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.store.keys import RedisKeys
from tests.api.conftest import JWT_SECRET, ROOT, headers, seed
from tests.gateway_processes import free_port, start_gateway, stop_process, wait_ready
from tests.postgres_support import create_database, drop_database, run_sync, unique_name
from tests.redis_cleanup import delete_matching_at

pytestmark = pytest.mark.timeout(60)

#: how each provider's mandate is made, and the request fields that send a session there
MANDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "stripe": ("first_in_series", {}),
    "adyen": ("setup", {}),
    "paypal": ("first_in_series", {"paymentMethod": "paypal"}),
}
#: a refund's status in the 201: Stripe and Adyen decide later and their refund webhook settles
#: it (sent by the sandbox to the gateway process; it may land before the refund call's answer
#: is recorded, and then the 201 already reads SUCCEEDED); PayPal's answer is final
REFUND_ANSWER = {
    "stripe": {"PENDING", "SUCCEEDED"},
    "adyen": {"PENDING", "SUCCEEDED"},
    "paypal": {"SUCCEEDED"},
}
STORES = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]
#: what `make run` leaves at its defaults, set for the test: its token secret, quiet logs
SERVE_ENV = {"GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_LOG_LEVEL": "WARNING"}


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


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], str]:
    """``gateway serve`` in sandbox mode with the embedded sandbox and ``env``; its base URL."""
    port = free_port()
    process = start_gateway(port, {**SERVE_ENV, **env}, output=log)
    try:
        run_sync(wait_ready(port, process))
    except BaseException:
        stop_process(process)
        raise
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module", params=STORES)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One gateway process per store for the module's series (each provider's sessions have
    keys and orders of their own); its base URL."""
    tmp = tmp_path_factory.mktemp(f"series-{request.param}")
    env = {"GATEWAY_RULES_PATH": str(pinning_rules(tmp))}
    with ExitStack() as cleanup:
        if request.param == "redis":
            url: str = request.getfixturevalue("redis_url")
            prefix = f"test:{uuid.uuid4().hex}:"
            cleanup.callback(delete_matching_at, [url], RedisKeys(prefix).match_all())
            env |= {"GATEWAY_STORE": "redis", "GATEWAY_REDIS_URL": url}
            env["GATEWAY_REDIS_PREFIX"] = prefix
        elif request.param == "postgres":
            request.getfixturevalue("postgres_url")  # skips (fails under CI) without PostgreSQL
            name = unique_name("series")
            database = run_sync(create_database(name))
            cleanup.callback(lambda: run_sync(drop_database(name)))
            env |= {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": database}
        process, base = _serve(env, tmp / "gateway.log")
        cleanup.callback(stop_process, process)  # stopped first: before its store goes
        yield base


@pytest.fixture
async def gateway(served: str) -> AsyncIterator[Gateway]:
    """The module's gateway of the store under test, with an HTTP client of this test."""
    async with aiohttp.ClientSession() as http:
        yield Gateway(served, http)


@pytest.fixture
async def fresh_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway of this test alone (memory store): its sandbox faults touch no other test."""
    process, base = _serve({"GATEWAY_RULES_PATH": str(pinning_rules(tmp_path))}, tmp_path / "log")
    try:
        async with aiohttp.ClientSession() as http:
            yield Gateway(base, http)
    finally:
        stop_process(process)


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
    assert refund["status"] in REFUND_ANSWER[provider]

    async def settled() -> list[dict[str, Any]] | None:
        status, listed = await gw.call("GET", refunds)
        assert status == 200, listed
        done = [r for r in listed["data"] if r["status"] != "PENDING"]
        return listed["data"] if done else None

    listed = await until(settled)
    assert [(r["refundId"], r["status"]) for r in listed] == [(refund["refundId"], "SUCCEEDED")]
    assert listed[0]["providerRefundId"]
    view = await gw.read(session_id)
    assert (view["status"], view["amountCaptured"], view["amountRefunded"]) == (
        "COMPLETED",
        "50.00",
        "12.50",
    )


async def test_a_declined_next_payment_is_a_failed_session(fresh_gateway: Gateway) -> None:
    gw = fresh_gateway
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
