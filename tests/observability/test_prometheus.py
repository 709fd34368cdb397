"""The dashboards and alert rules against the real Prometheus scraping a real gateway.

A `gateway serve` process takes a short, mixed load through the sandbox providers (creates at
every provider, failovers and an open circuit, a replay, a mismatch, an in-flight 409, a 401, a
502, rules reloads that succeed and fail). Prometheus scrapes it every second and evaluates the
alert rules. Then every query of every dashboard panel, annotation and variable, and every
alert expression, goes through Prometheus's HTTP API: each must parse, and each panel query
must return at least one number. A renamed metric or label breaks this test, not a dashboard.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import SandboxConfig
from tests.api.conftest import headers, seed
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.observability.promtools import (
    ALERT_FILES,
    ROOT,
    alert_rules,
    annotation_queries,
    panel_queries,
    promql,
    require_tool,
    variable_queries,
)

MERCHANT_SECRET = "merchant-webhook-secret-0123456789"


class Prometheus:
    """A Prometheus server on a free port with its own storage, scraping one target."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in ALERT_FILES],
            "scrape_configs": [
                {"job_name": "gateway", "static_configs": [{"targets": [target]}]},
            ],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited; see prometheus.log"
            try:
                async with http.get(f"{self.url}/-/ready") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("prometheus did not become ready")

    async def query(self, http: aiohttp.ClientSession, expr: str) -> dict[str, Any]:
        """The /api/v1/query answer (``status`` ``success`` or ``error`` with ``error``)."""
        async with http.post(f"{self.url}/api/v1/query", data={"query": expr}) as answer:
            body: dict[str, Any] = await answer.json()
            return body

    async def value(self, http: aiohttp.ClientSession, expr: str) -> float | None:
        body = await self.query(http, expr)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    async def wait_for(
        self, http: aiohttp.ClientSession, expr: str, expected: float, timeout: float = 15
    ) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = await self.value(http, expr)
            if seen == expected:
                return
            await asyncio.sleep(0.25)
        raise AssertionError(f"{expr} is {seen}, expected {expected}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


class Load:
    """Drives the gateway and the sandbox; counts what it expects to see in the metrics."""

    def __init__(self, http: aiohttp.ClientSession, gateway: str, sandbox: str) -> None:
        self.http = http
        self.gateway = gateway
        self.sandbox = sandbox
        self.created = 0

    async def create(self, key: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        async with self.http.post(
            f"{self.gateway}/api/v1/sessions", json=body, headers=headers(key)
        ) as answer:
            payload: dict[str, Any] = await answer.json()
            assert answer.status == expect, payload
            if expect == 201 and answer.headers.get("Idempotent-Replayed") != "true":
                self.created += 1
            return payload

    async def fault(self, provider: str, **faults: Any) -> None:
        async with self.http.post(
            f"{self.sandbox}/admin/faults", json={"provider": provider, **faults}
        ) as answer:
            assert answer.status == 200, await answer.text()

    async def pay(self, checkout_url: str) -> None:
        """The payer pays on the hosted page; the sandbox then sends the provider webhook."""
        async with self.http.post(f"{checkout_url}/pay", allow_redirects=False) as answer:
            assert answer.status == 303, await answer.text()

    async def phase(self, n: int) -> None:
        """Card, PayPal and iDEAL creates, a payment (webhook, notification), a replay, a
        mismatch, a read, a 401, a 404 and a 502."""
        first: dict[str, Any] = {}
        for i in range(4):
            body = seed(orderReference=f"ORD-{n}-{i}")
            made = await self.create(f"p{n}-seed-{i}", body, 201)
            first = first or {"body": body, "made": made}
        await self.create(f"p{n}-seed-0", first["body"], 201)  # replay
        await self.create(f"p{n}-seed-0", seed(orderReference=f"ORD-{n}-other"), 422)
        await self.create(
            f"p{n}-paypal", seed(orderReference=f"ORD-{n}-pp", paymentMethod="paypal"), 201
        )
        ideal = seed(orderReference=f"ORD-{n}-ideal", currency="EUR", paymentMethod="ideal")
        for address in ("billingAddress", "shippingAddress"):
            ideal["customer"][address]["country"] = "NL"
        await self.create(f"p{n}-ideal", ideal, 201)
        await self.pay(first["made"]["checkoutUrl"])
        async with self.http.get(
            f"{self.gateway}/api/v1/sessions/{first['made']['sessionId']}", headers=headers(None)
        ) as answer:
            assert answer.status == 200
        bad = {**headers("p-bad"), "Authorization": "Bearer not-a-token"}
        async with self.http.post(
            f"{self.gateway}/api/v1/sessions", json=seed(), headers=bad
        ) as answer:
            assert answer.status == 401
        async with self.http.get(f"{self.gateway}/no/such/page") as answer:
            assert answer.status == 404
        await self.fault("paypal", down=True)
        paypal_down = seed(orderReference=f"ORD-{n}-pp-down", paymentMethod="paypal")
        await self.create(f"p{n}-paypal-down", paypal_down, 502)
        await self.fault("paypal", down=False)

    async def in_flight_conflict(self) -> None:
        """Two requests with one key at once: the second gets 409 while the first waits."""
        body = seed(orderReference="ORD-in-flight")
        provider = await self.first_choice(body)
        await self.fault(provider, latencyMs=800)
        first = asyncio.create_task(self.create("in-flight", body, 201))
        await asyncio.sleep(0.3)
        await self.create("in-flight", body, 409)
        await first
        await self.fault(provider, latencyMs=0)

    async def first_choice(self, body: dict[str, Any]) -> str:
        async with self.http.post(
            f"{self.gateway}/api/v1/routing/simulate", json=body, headers=headers(None)
        ) as answer:
            assert answer.status == 200, await answer.text()
            provider: str = (await answer.json())["candidates"][0]["provider"]
            return provider

    async def failovers(self, n: int, count: int, provider: str) -> None:
        """EUR card orders while ``provider`` fails: each fails over to the next candidate.
        Each order is one whose decision ranks ``provider`` first (the learner explores other
        providers for some orders: the draw is fixed per order, so simulate finds them)."""
        bodies = []
        for i in range(count):
            for j in range(100):
                body = card_order(f"ORD-{n}-fo-{i}-{j}")
                if await self.first_choice(body) == provider:
                    bodies.append(body)
                    break
            else:
                raise AssertionError(f"no order ranks {provider} first")
        await self.fault(provider, errorRate=1.0)
        for i, body in enumerate(bodies):
            await self.create(f"p{n}-failover-{i}", body, 201)
        await self.fault(provider, errorRate=0.0)

    async def reload_unchanged(self) -> None:
        scopes = ["routing:admin"]
        async with self.http.post(
            f"{self.gateway}/api/v1/routing/reload", headers=headers(None, scopes=scopes)
        ) as answer:
            assert answer.status == 200, await answer.text()

    async def rules_state(self) -> tuple[str, bool]:
        """The active rules version and whether the file on disk was refused."""
        async with self.http.get(f"{self.gateway}/readyz") as answer:
            rules: dict[str, Any] = (await answer.json())["checks"]["rules"]
            return rules["version"], bool(rules.get("lastReloadError"))


def card_order(ref: str) -> dict[str, Any]:
    """A EUR card order from Germany: two card providers are eligible, no rule pins one."""
    body = seed(orderReference=ref, currency="EUR")
    for address in ("billingAddress", "shippingAddress"):
        body["customer"][address]["country"] = "DE"
    return body


async def wait_until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.fixture
async def merchant_endpoint(aiohttp_server: Any) -> TestServer:
    """The merchant's notification webhook: every third delivery fails with a 503."""
    received: list[int] = []

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        received.append(1)
        return web.Response(status=503 if len(received) % 3 == 0 else 204)

    app = web.Application()
    app.router.add_post("/hooks", receive)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.fixture
async def sandbox_for(aiohttp_server: Any) -> Any:
    """Start a sandbox whose webhooks go to the gateway on ``port``."""

    async def start(port: int) -> TestServer:
        config = SandboxConfig(
            expiry_sweep_seconds=0, random_seed=7, gateway_base_url=f"http://127.0.0.1:{port}"
        )
        server: TestServer = await aiohttp_server(create_sandbox_root(config))
        return server

    return start


@pytest.mark.timeout(120)
async def test_every_dashboard_query_and_alert_works_against_real_prometheus(
    tmp_path: Path, sandbox_for: Any, merchant_endpoint: TestServer
) -> None:
    binary = require_tool("prometheus")
    port = free_port()
    sandbox = await sandbox_for(port)
    rules = tmp_path / "routing_rules.yaml"
    original = (ROOT / "routing_rules.yaml").read_text()
    rules.write_text(original)
    merchants = tmp_path / "merchants.yaml"
    merchants.write_text(
        yaml.safe_dump(
            {
                "merchants": {
                    "merchant-1": {
                        "webhook": {
                            "url": str(merchant_endpoint.make_url("/hooks")),
                            "secret": MERCHANT_SECRET,
                        }
                    }
                }
            }
        )
    )
    env = {
        **base_env(sandbox),
        "GATEWAY_RULES_PATH": str(rules),
        "GATEWAY_RULES_WATCH_INTERVAL_SECONDS": "0.2",
        "GATEWAY_CIRCUIT_FAILURE_THRESHOLD": "3",
        "GATEWAY_CIRCUIT_WINDOW_SECONDS": "300",
        "GATEWAY_CIRCUIT_OPEN_SECONDS": "300",
        "GATEWAY_MERCHANTS_PATH": str(merchants),
        "GATEWAY_NOTIFICATION_POLL_INTERVAL_SECONDS": "0.2",
        "GATEWAY_NOTIFICATION_BACKOFF_BASE_SECONDS": "0.2",
    }
    gateway = start_gateway(port, env)
    prometheus = Prometheus(binary, tmp_path, f"127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(wait_ready(port, gateway), prometheus.wait_ready(http))
            load = Load(http, f"http://127.0.0.1:{port}", str(sandbox.make_url("/sandbox")))
            created = "sum(gateway_sessions_created_total)"

            # phase 1, then at least one scrape, so every rate sees an increase in phase 2
            failing = await load.first_choice(card_order("ORD-probe"))
            await load.phase(1)
            await load.in_flight_conflict()
            await load.failovers(1, 1, failing)
            await load.reload_unchanged()
            await prometheus.wait_for(http, created, load.created)

            await load.phase(2)
            await load.failovers(2, 3, failing)  # two more failures open its circuit
            changed = re.sub(r"(?m)^version: .*$", 'version: "obs-test.2"', original, count=1)
            assert changed != original
            rules.write_text(changed)

            async def reloaded() -> bool:
                version, refused = await load.rules_state()
                return version.startswith("obs-test.2@") and not refused

            await wait_until(reloaded)
            rules.write_text(original + "\nthis is: [not valid\n")

            async def refused() -> bool:
                version, refused = await load.rules_state()
                return refused and version.startswith("obs-test.2@")

            await wait_until(refused)
            await prometheus.wait_for(http, created, load.created)
            await prometheus.wait_for(http, "min(gateway_rules_last_reload_success)", 0)
            circuit = f'max(gateway_circuit_state{{provider="{failing}"}})'
            await prometheus.wait_for(http, circuit, 2)
            await prometheus.wait_for(http, 'max(gateway_rules_info{version="obs-test.2"})', 1)
            for counter in (
                "webhooks_received",
                "notification_deliveries",
                "notification_failures",
            ):
                await prometheus.wait_for(http, f"sum(gateway_{counter}_total) > bool 0", 1)
            await _assert_alert_rules_evaluated(prometheus, http)
            await _assert_every_query(prometheus, http)
    finally:
        prometheus.stop()
        if gateway.poll() is None:
            gateway.terminate()
            gateway.wait(timeout=20)
        for stream in (gateway.stdout, gateway.stderr):
            if stream is not None:
                stream.close()


async def _assert_alert_rules_evaluated(
    prometheus: Prometheus, http: aiohttp.ClientSession
) -> None:
    """Prometheus loaded every rule of the shipped files and evaluates each without error."""
    expected = {rule["alert"] for rule in alert_rules()}
    deadline = time.monotonic() + 10
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        async with http.get(f"{prometheus.url}/api/v1/rules") as answer:
            body = await answer.json()
        health = {
            rule["name"]: rule["health"]
            for group in body["data"]["groups"]
            for rule in group["rules"]
        }
        if set(health) == expected and all(h == "ok" for h in health.values()):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"alert rules not all loaded and healthy: {health}")


async def _assert_every_query(prometheus: Prometheus, http: aiohttp.ClientSession) -> None:
    problems: list[str] = []
    for query in panel_queries():
        body = await prometheus.query(http, promql(query.expr))
        if body["status"] != "success":
            problems.append(f"{query.name}: {body.get('error')}")
            continue
        values = [float(sample["value"][1]) for sample in body["data"]["result"]]
        if any(not math.isnan(v) for v in values):
            continue
        problems.append(f"{query.name}: no data ({promql(query.expr)})")
    for name, expr in [*annotation_queries(), *variable_queries()]:
        body = await prometheus.query(http, promql(expr))
        if body["status"] != "success" or not body["data"]["result"]:
            problems.append(f"{name}: {body.get('error') or 'no data'}")
    for rule in alert_rules():
        body = await prometheus.query(http, rule["expr"])
        if body["status"] != "success":
            problems.append(f"alert {rule['alert']}: {body.get('error')}")
    assert not problems, "\n".join(problems)
