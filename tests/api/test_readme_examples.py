"""The README's JSON examples are real answers of a running gateway, so they cannot drift.

Each example in the README is a ```json block preceded by ``<!-- example: NAME -->``. This test
sends the requests behind them to a gateway and the sandbox on real sockets, as the merchant
``demo-merchant`` that ``make run``'s curl uses, and compares every block with the real
answer. Only what differs from run to run is replaced by a fixed stand-in: times are shifted
so the session was created at 2026-01-15T11:00:00.000Z, provider and decision ids end in
``…``, durations read 212.4 ms (41.7 in the log) and the test servers' addresses read
``http://127.0.0.1:8080`` (``make run``'s).

After a change of the API (or of ``routing_rules.yaml``, whose hash is in ``rulesVersion``),
``make docs`` rewrites the blocks (``README_EXAMPLES=update`` and this test).
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.auth import Authenticator
from gateway.cli import example_curl
from gateway.domain.session import isoformat
from gateway.examples import SEED_REQUEST_JSON
from gateway.logs import JsonFormatter
from gateway.settings import Settings
from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import SandboxConfig
from tests.api.conftest import JWT_SECRET, ROOT, SEED, SEED_BYTES, GatewayFactory, headers

README = ROOT / "README.md"
PROVIDERS = ("stripe", "adyen", "paypal")
MERCHANT = "demo-merchant"
IDEMPOTENCY_KEY = "3f2c8a4e-order-2024-001"
REQUEST_ID = "req-7f3a9c"
CREATED_AT = datetime(2026, 1, 15, 11, 0, tzinfo=UTC)
MAKE_RUN_URL = "http://127.0.0.1:8080"
DURATION_MS = 212.4
#: values that differ on every run, by key: durations, and decision ids (random per decision)
BY_KEY: dict[str, Any] = {
    "durationMs": DURATION_MS,
    "duration_ms": 41.7,
    "decisionId": "rd_…",
    "decision_id": "rd_…",
    "ts": "2026-01-15T11:00:00.042+00:00",  # the log line's time, a few ms after createdAt
}

#: a slow sandbox on a busy machine must not fail the examples over to another provider
PATIENT = {
    "provider_timeout_seconds": 20.0,
    "request_deadline_seconds": 30.0,
    "idempotency_lease_seconds": 60,
}

#: every example block of the README; "notification" is checked by
#: tests/lifecycle/test_readme_notification.py (a real delivery after a payment)
EXAMPLES = {
    "request",
    "created",
    "session",
    "sessions-page",
    "bad-request",
    "access-log",
    "readyz-refused-reload",
    "notification",
    "refund-notification",
}

#: the 400 example: the seed order with three mistakes, one of them in the amounts
BAD_REQUEST_CHANGES = {"locale": "english", "email": "jane.smith@", "total": "140.67"}

_BLOCK = re.compile(r"(<!-- example: ([\w-]+) -->\n```json\n)(.*?)(```)", re.S)
_LOG_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
_ORIGIN = re.compile(r"http://127\.0\.0\.1:\d+")


def render(value: Any) -> str:
    """A JSON example as the README shows it; a log line (text) as it is."""
    if isinstance(value, str):
        return value + "\n"
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


class Masker:
    """Replaces what differs between runs by fixed stand-ins (see the module docstring)."""

    def __init__(self, created_at: str, provider_ids: list[str]) -> None:
        self.shift = CREATED_AT - datetime.fromisoformat(created_at)
        self.provider_ids = {pid: pid[: pid.rfind("_") + 1] or pid[:2] for pid in provider_ids}

    def __call__(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, key) for v in value]
        if key in BY_KEY:
            return BY_KEY[key]
        if isinstance(value, str):
            return self.text(value)
        return value

    def text(self, value: str) -> str:
        if _TIMESTAMP.match(value):
            moment = datetime.fromisoformat(value) + self.shift
            return isoformat(moment)
        if _LOG_TS.match(value):
            moment = datetime.fromisoformat(value) + self.shift
            return moment.isoformat(timespec="milliseconds")
        for pid, prefix in self.provider_ids.items():
            value = value.replace(pid, prefix + "…")
        return _ORIGIN.sub(MAKE_RUN_URL, value)


def bad_request_body() -> bytes:
    body: dict[str, Any] = json.loads(SEED_BYTES)
    body["locale"] = BAD_REQUEST_CHANGES["locale"]
    body["customer"]["email"] = BAD_REQUEST_CHANGES["email"]
    text = json.dumps(body)
    return text.replace('"total": 140.76', f'"total": {BAD_REQUEST_CHANGES["total"]}').encode()


def demo_headers(key: str | None) -> dict[str, str]:
    out = headers(key, merchant=MERCHANT)
    out["X-Request-ID"] = REQUEST_ID
    return out


def access_line(records: list[logging.LogRecord], mask: Masker) -> str:
    """The gateway's JSON access-log line of the create request, masked."""
    lines = [
        json.loads(JsonFormatter().format(record))
        for record in records
        if record.name == "gateway.access" and record.__dict__.get("status") == 201
    ]
    assert len(lines) == 1
    line = mask(lines[0])
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


async def real_examples(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> dict[str, Any]:
    """Every README example, from the gateway's real answers, masked."""
    caplog.clear()
    created_response = await client.post(
        "/api/v1/sessions", data=SEED_BYTES, headers=demo_headers(IDEMPOTENCY_KEY)
    )
    assert created_response.status == 201, await created_response.text()
    created = await created_response.json()
    session_response = await client.get(
        f"/api/v1/sessions/{created['sessionId']}", headers=demo_headers(None)
    )
    assert session_response.status == 200
    session = await session_response.json()
    page_response = await client.get(
        "/api/v1/sessions",
        params={"orderReference": SEED["orderReference"], "limit": 20},
        headers=demo_headers(None),
    )
    assert page_response.status == 200
    page = await page_response.json()
    invalid = await client.post(
        "/api/v1/sessions", data=bad_request_body(), headers=demo_headers("another-key")
    )
    assert invalid.status == 400
    mask = Masker(created["createdAt"], [session["providerSessionId"]])
    return {
        "request": SEED,
        "created": mask(created),
        "session": mask(session),
        "sessions-page": mask(page),
        "bad-request": mask(await invalid.json()),
        "access-log": access_line(caplog.records, mask),
    }


async def refused_reload_example(gateway: GatewayFactory, tmp_path: Path) -> Any:
    """/readyz after an edit of the rules file was refused: still 200, the error shown."""
    rules = tmp_path / "routing_rules.yaml"
    text = (ROOT / "routing_rules.yaml").read_text()
    rules.write_text(text)
    client = await gateway(rules_path=rules, **PATIENT)
    rules.write_text(text.replace("preference: 60", "preference: 160", 1))
    reload = await client.post("/api/v1/routing/reload", headers=demo_headers(None))
    assert reload.status == 422
    ready = await client.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    return json.loads(json.dumps(body).replace(f"{tmp_path}/", ""))


def readme_blocks(text: str) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    for match in _BLOCK.finditer(text):
        blocks.setdefault(match.group(2), []).append(match.group(3))
    return blocks


def rewrite(text: str, examples: dict[str, Any]) -> str:
    def block(match: re.Match[str]) -> str:
        name = match.group(2)
        body = render(examples[name]) if name in examples else match.group(3)
        return match.group(1) + body + match.group(4)

    return _BLOCK.sub(block, text)


def check_readme(examples: dict[str, Any]) -> None:
    """Each example block equals its real answer (``README_EXAMPLES=update`` rewrites them)."""
    text = README.read_text()
    if os.environ.get("README_EXAMPLES") == "update":
        text = rewrite(text, examples)
        README.write_text(text)
    blocks = readme_blocks(text)
    for name, example in examples.items():
        assert blocks.get(name) == [render(example)], (
            f"README example {name!r} is not the gateway's answer: run `make docs`"
        )


def test_every_example_block_is_checked() -> None:
    blocks = readme_blocks(README.read_text())
    assert set(blocks) == EXAMPLES
    assert all(len(found) == 1 for found in blocks.values())


async def test_the_readme_examples_are_real_answers(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    client = await gateway(**PATIENT)
    examples = await real_examples(client, caplog)
    examples["readyz-refused-reload"] = await refused_reload_example(gateway, tmp_path)
    check_readme(examples)


async def test_a_second_run_gives_the_same_examples(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, aiohttp_server: Any
) -> None:
    # nothing that differs between runs is left unmasked; the second run has its own sandbox
    # (the same one would hold the first run's session under the same idempotency key)
    caplog.set_level(logging.INFO, logger="gateway.access")
    first = await real_examples(await gateway(**PATIENT), caplog)
    other = await aiohttp_server(
        create_sandbox_root(SandboxConfig(expiry_sweep_seconds=0, random_seed=7))
    )
    base = str(other.make_url("/sandbox")).rstrip("/")
    providers = {f"provider_{name}_base_url": f"{base}/{name}" for name in PROVIDERS}
    second = await real_examples(await gateway(**PATIENT, **providers), caplog)
    assert first == second


def test_make_run_sends_the_documented_request() -> None:
    assert json.loads(SEED_REQUEST_JSON) == SEED


def test_the_printed_token_is_the_documented_one() -> None:
    settings = Settings(_env_file=None, jwt_secret=JWT_SECRET)  # type: ignore[call-arg]
    curl = example_curl(settings)
    found = re.search(r"Bearer ([A-Za-z0-9_.-]+)", curl)
    assert found is not None
    merchant = Authenticator(settings).verify(found.group(1))
    claims = jwt.decode(found.group(1), options={"verify_signature": False})
    assert merchant.merchant_id == MERCHANT
    assert claims["exp"] - claims["iat"] == 24 * 3600
    documented = (
        f"for the merchant\n**`{MERCHANT}`** with the scopes `{claims['scope']}`, valid 24 hours."
    )
    assert documented in README.read_text()


def test_the_masks_shift_times_and_hide_ids() -> None:
    mask = Masker("2026-03-02T09:30:00.000Z", ["cs_test_a1B2c3", "CSF00D"])
    assert mask(
        {
            "createdAt": "2026-03-02T09:30:00.000Z",
            "expiresAt": "2026-03-02T10:30:00.000Z",
            "checkoutUrl": "http://127.0.0.1:41234/sandbox/pay/stripe/cs_test_a1B2c3",
            "attempts": [{"durationMs": 3.2, "provider": "adyen", "id": "CSF00D"}],
            "score": 58.99,
        }
    ) == {
        "createdAt": "2026-01-15T11:00:00.000Z",
        "expiresAt": "2026-01-15T12:00:00.000Z",
        "checkoutUrl": "http://127.0.0.1:8080/sandbox/pay/stripe/cs_test_…",
        "attempts": [{"durationMs": DURATION_MS, "provider": "adyen", "id": "CS…"}],
        "score": 58.99,
    }
