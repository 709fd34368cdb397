"""Hostile amounts at both endpoints that take a checkout body, over the real HTTP stack.

Each amount is sent as the raw JSON text of the only line item's ``unitPrice`` and of the
``total`` (shipping and tax zero), so the order is consistent whenever the number is valid.
Every answer is a defined one: 201/200 with the amount rendered as a plain decimal string with
the currency's exponent (never rounded, never signed zero, never an exponent), or a 400 in the
error envelope; ``POST /routing/simulate`` and ``POST /sessions`` agree on every one.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import SEED_BYTES, GatewayFactory, headers
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready

#: (raw JSON number, currency, the total as rendered, or None when refused with a 400)
CASES: list[tuple[str, str, str | None]] = [
    ("1e99999999999999999999", "AUD", None),  # no Decimal holds this exponent
    ("-1e99999999999999999999", "AUD", None),
    ("1e-99999999999999999999", "AUD", None),
    ("1" * 41, "AUD", None),  # an integer longer than any amount
    ("9" * 5000, "AUD", None),  # longer than Python converts to int by default
    ("1e20", "AUD", None),
    ("1e999999999", "AUD", None),
    ("1" + "0" * 39, "AUD", None),
    ("1000000000000000", "AUD", None),
    ("999999999999999.99", "AUD", "999999999999999.99"),
    ("99999999999999999E-2", "AUD", "999999999999999.99"),
    ("1E+2", "AUD", "100.00"),
    ("1E+2", "JPY", "100"),
    ("1.10E+1", "KWD", "11.000"),
    ("-0", "AUD", "0.00"),
    ("-0.00", "AUD", "0.00"),
    ("-0.00", "JPY", "0"),
    ("-0E+5", "KWD", "0.000"),
    ("0.000", "AUD", "0.00"),
    ("0E-1000", "AUD", "0.00"),
    ('"100.00"', "AUD", "100.00"),
    ('"1E+2"', "AUD", "100.00"),
    ('"1_000"', "AUD", None),  # Decimal reads 1000, JavaScript's parseFloat 1
    ('" 100"', "AUD", None),
    ('"100.00\\n"', "AUD", None),
    ('"+100"', "AUD", None),
    ('"\uff11\uff10\uff10"', "AUD", None),  # fullwidth digits
    ('"\u0663"', "AUD", None),  # an Arabic-Indic digit
    ('"0x10"', "AUD", None),
    ('""', "AUD", None),
    ("1.00000000000000000000", "AUD", "1.00"),
    ("1.005", "AUD", None),
    ("0.5", "JPY", None),
    ("-0.01", "AUD", None),
]


ZERO = {"AUD": "0.00", "JPY": "0", "KWD": "0.000"}


def order(number: str, currency: str, reference: str) -> bytes:
    text = SEED_BYTES.decode()
    for old, new in (
        ('"total": 140.76', f'"total": {number}'),
        ('"shipping": 9.95', '"shipping": 0'),
        ('"tax": 11.81', '"tax": 0'),
        ('"unitPrice": 119', f'"unitPrice": {number}'),
        ('"currency": "AUD"', f'"currency": "{currency}"'),
        ('"ORD-2024-001"', json.dumps(reference)),
    ):
        assert old in text
        text = text.replace(old, new)
    return text.encode()


def envelope(body: dict[str, Any], status: int) -> None:
    assert body["statusCode"] == status
    assert body["error"]
    assert body["message"]
    text = json.dumps(body)
    assert "Traceback" not in text
    assert "sys." not in text  # no interpreter advice in an answer


@pytest.mark.parametrize(("number", "currency", "rendered"), CASES)
async def test_a_hostile_amount_gets_a_defined_answer_and_simulate_agrees(
    gateway: GatewayFactory, number: str, currency: str, rendered: str | None
) -> None:
    client = await gateway()
    body = order(number, currency, f"ORD-HOSTILE-{abs(hash((number, currency)))}")
    simulated = await client.post("/api/v1/routing/simulate", data=body, headers=headers(None))
    created = await client.post(
        "/api/v1/sessions", data=body, headers=headers(f"hostile-{hash((number, currency))}")
    )
    if rendered is None:
        for answer in (simulated, created):
            assert answer.status == 400, await answer.text()
            envelope(await answer.json(), 400)
        return
    assert simulated.status == 200, await simulated.text()
    assert created.status == 201, await created.text()
    made = await created.json()
    assert made["routing"]["selectedProvider"] == (await simulated.json())["selectedProvider"]
    view = await client.get(f"/api/v1/sessions/{made['sessionId']}", headers=headers(None))
    zero = ZERO[currency]
    assert (await view.json())["amount"] == {"total": rendered, "shipping": zero, "tax": zero}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"total": 140.76', '"total": 1.00, "total": 140.76'),
        ('"total": 140.76', '"total": 140.76, "total": 1.00'),
        ('"currency": "AUD"', '"currency": "JPY", "currency": "AUD"'),
        ('"unitPrice": 119', '"unitPrice": 119, "unitPrice": 119'),
    ],
)
async def test_a_duplicate_key_is_refused_never_first_or_last_wins(
    gateway: GatewayFactory, old: str, new: str
) -> None:
    client = await gateway()
    text = SEED_BYTES.decode()
    assert old in text
    body = text.replace(old, new, 1).encode()
    for path, key in (("/api/v1/routing/simulate", None), ("/api/v1/sessions", "dup-1")):
        answer = await client.post(path, data=body, headers=headers(key))
        assert answer.status == 400, await answer.text()
        problem = await answer.json()
        envelope(problem, 400)
        assert "duplicate key" in problem["message"][0]


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_every_hostile_amount_against_a_real_process_on_redis(
    sandbox: Any, redis_url: str, redis_prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    """The same amounts, sent to a ``gateway serve`` process storing in Redis: the answers are
    the same, and the process never logs an unhandled error."""
    port = free_port()
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
    }
    processes.append(start_gateway(port, env))
    await wait_ready(port, processes[0])
    base = f"http://127.0.0.1:{port}/api/v1"
    async with aiohttp.ClientSession() as http:
        for i, (number, currency, rendered) in enumerate(CASES):
            body = order(number, currency, f"ORD-PROC-{i}")
            async with http.post(
                f"{base}/routing/simulate", data=body, headers=headers(None)
            ) as simulated:
                sim_status, sim = simulated.status, await simulated.json()
            async with http.post(
                f"{base}/sessions", data=body, headers=headers(f"proc-{i}")
            ) as created:
                status, made = created.status, await created.json()
            if rendered is None:
                assert (sim_status, status) == (400, 400), (number, sim, made)
                envelope(made, 400)
                continue
            assert (sim_status, status) == (200, 201), (number, sim, made)
            assert made["routing"]["selectedProvider"] == sim["selectedProvider"]
            async with http.get(
                f"{base}/sessions/{made['sessionId']}", headers=headers(None)
            ) as view:
                assert (await view.json())["amount"]["total"] == rendered
    proc = processes.pop()
    proc.terminate()
    _, stderr = proc.communicate(timeout=20)
    assert "unhandled error" not in stderr
    assert "Traceback" not in stderr
