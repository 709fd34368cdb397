"""The logs a real `gateway serve` writes: one JSON object per line, one access line per request
with its request id, merchant, route, status, duration, provider, decision id and attempts, and
never the customer's personal data, a token or a secret, whatever the requests carried."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.logs import configure_logging
from gateway.settings import SANDBOX_SECRETS
from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import SandboxConfig
from tests.api.conftest import JWT_SECRET, SEED, headers, seed, token
from tests.gateway_processes import base_env, free_port, start_gateway, stop_process, wait_ready
from tests.rawhttp import exchange

MERCHANT_SECRET = "merchant-hook-secret-abcdefghijklmnop"
PERSONAL = [
    SEED["customer"]["email"],
    SEED["customer"]["phone"],
    SEED["customer"]["phone"].lstrip("+"),
    SEED["customer"]["firstName"],
    SEED["customer"]["lastName"],
    SEED["customer"]["billingAddress"]["line1"],
    SEED["customer"]["billingAddress"]["line2"],
    SEED["customer"]["billingAddress"]["city"],
    "Collins",
]
SECRETS = [
    JWT_SECRET,
    MERCHANT_SECRET,
    "eyJ",  # the start of every JWT (and of base64-encoded JSON)
    *(
        value
        for provider in SANDBOX_SECRETS.values()
        for name, value in provider.items()
        if name in {"api_key", "webhook_secret", "hmac_key", "client_secret"}
    ),
]


async def _merchant_app() -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", receive)
    return app


@pytest.mark.timeout(90)
async def test_request_logs_are_structured_and_carry_no_personal_data_or_secrets(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    port = free_port()
    sandbox: TestServer = await aiohttp_server(
        create_sandbox_root(
            SandboxConfig(
                expiry_sweep_seconds=0, random_seed=7, gateway_base_url=f"http://127.0.0.1:{port}"
            )
        )
    )
    merchant: TestServer = await aiohttp_server(await _merchant_app())
    merchants = tmp_path / "merchants.yaml"
    hook = {"url": str(merchant.make_url("/hooks")), "secret": MERCHANT_SECRET}
    merchants.write_text(yaml.safe_dump({"merchants": {"merchant-1": {"webhook": hook}}}))
    env = {
        **base_env(sandbox),
        "GATEWAY_LOG_LEVEL": "DEBUG",
        "GATEWAY_MERCHANTS_PATH": str(merchants),
        "GATEWAY_NOTIFICATION_POLL_INTERVAL_SECONDS": "0.2",
    }
    proc = start_gateway(port, env)
    url = f"http://127.0.0.1:{port}"
    bearer = token()
    try:
        await wait_ready(port, proc)
        async with aiohttp.ClientSession() as http:
            created = await http.post(
                f"{url}/api/v1/sessions",
                json=SEED,
                headers={**headers("logs-1"), "X-Request-ID": "req-logs-1"},
            )
            assert created.status == 201, await created.text()
            session = await created.json()
            async with http.post(f"{session['checkoutUrl']}/pay", allow_redirects=False) as paid:
                assert paid.status == 303
            bad_token = {**headers("logs-2"), "Authorization": f"Bearer {bearer}x"}
            async with http.post(f"{url}/api/v1/sessions", json=SEED, headers=bad_token) as a:
                assert a.status == 401
            invalid = seed(orderReference="ORD-LOGS-3")
            invalid["customer"]["email"] = "jane.smith@example"
            async with http.post(
                f"{url}/api/v1/sessions", json=invalid, headers=headers("logs-3")
            ) as a:
                assert a.status == 400
            await http.post(f"{url}/sandbox/admin/faults", json={})  # unmatched route (404)
            async with http.post(
                str(sandbox.make_url("/sandbox/admin/faults")),
                json={"provider": "paypal", "down": True},
            ):
                pass
            failing = seed(orderReference="ORD-LOGS-4", paymentMethod="paypal")
            async with http.post(
                f"{url}/api/v1/sessions",
                json=failing,
                headers={**headers("logs-4"), "X-Request-ID": "req-logs-4"},
            ) as a:
                assert a.status == 502
            async with http.get(
                f"{url}/api/v1/sessions/{session['sessionId']}", headers=headers(None)
            ) as a:
                assert (await a.json())["status"] == "COMPLETED"
            await asyncio.sleep(0.6)  # let the merchant notification go out
        # requests aiohttp's parser refuses, one carrying a token: the envelope, and no bytes
        long_token = b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer " + bearer.encode() * 40
        for raw in (b"G\x01T / HTTP/1.1\r\n\r\n", long_token + b"\r\n\r\n"):
            refused = await exchange("127.0.0.1", port, raw)
            assert refused.status == 400
            assert json.loads(refused.body)["requestId"] == refused.headers["x-request-id"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        assert proc.stderr is not None
        output = proc.stderr.read()
    finally:
        stop_process(proc)

    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    other = [line for line in output.splitlines() if line and not line.startswith("{")]
    assert all(line.startswith("gateway: ") for line in other), other
    access = {r.get("request_id"): r for r in records if r["logger"] == "gateway.access"}
    ok = access["req-logs-1"]
    assert ok["merchant"] == "merchant-1"
    assert ok["route"] == "/api/v1/sessions"
    assert ok["method"] == "POST"
    assert ok["status"] == 201
    assert isinstance(ok["duration_ms"], float)
    assert ok["provider"] == session["routing"]["selectedProvider"]
    assert ok["decision_id"] == session["routing"]["decisionId"]
    assert ok["attempts"] == 1
    failed = access["req-logs-4"]
    assert failed["status"] == 502
    assert failed["decision_id"].startswith("rd_")
    assert failed["attempts"] == 1
    routes = {(r["route"], r["status"]) for r in access.values()}
    assert ("/api/v1/sessions", 401) in routes
    assert ("/api/v1/sessions", 400) in routes
    assert ("/api/v1/webhooks/{provider}", 200) in routes
    assert ("unmatched", 404) in routes
    parser = [r for r in records if r["msg"] == "request refused by the HTTP server"]
    assert [(r["route"], r["status"], r["reason"]) for r in parser] == [
        ("unmatched", 400, "BadHttpMethod"),
        ("unmatched", 400, "LineTooLong"),
    ]
    moves = [r for r in records if r["msg"] == "session status changed"]
    assert {(r["from_status"], r["to_status"], r["source"]) for r in moves} >= {
        ("PENDING", "COMPLETED", f"webhook:{session['routing']['selectedProvider']}")
    }
    assert all(r["session_id"] == session["sessionId"] for r in moves)
    assert all(r["level"] in {"debug", "info", "warning", "error"} for r in records)
    leaked = [item for item in PERSONAL + SECRETS + [bearer] if item in output]
    assert not leaked, f"found in the logs: {leaked}"


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_log_level_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("warning")
    logging.getLogger("gateway.access").info("request", extra={"request_id": "r-1"})
    logging.getLogger("gateway.errors").error("boom", extra={"request_id": "r-2", "email": "x@y"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["msg"], r["request_id"], r["level"]) for r in lines] == [("boom", "r-2", "error")]
    assert "email" not in lines[0]
