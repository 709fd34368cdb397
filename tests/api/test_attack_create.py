"""Part 1 attacked from outside: real gateway processes sharing a real Redis, real sockets.

Racing retries of one Idempotency-Key (spread over two processes) while the provider is slower
than ``GATEWAY_PROVIDER_TIMEOUT_SECONDS``, a flood with no fault at all, and a provider that
answers "key in use" for as long as the merchant keeps trying. The invariants: the provider
never holds more than one session per derived key; the merchant gets one sessionId per key
and a defined answer every time (201, a replay, 409 with Retry-After, 502/504 in the
envelope), never a 500; an acknowledged 201 is returned identically on every replay.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.idempotency import session_id_for
from tests.api.conftest import headers
from tests.api.test_failover import card_order, sandbox_state
from tests.api.test_retry_after_timeout import held_by
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready

DEFINED = {201, 409, 502, 503, 504}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # one connection per request: the race happens on real, separate sockets
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def two_gateways(
    sandbox: Any, redis_url: str, redis_prefix: str, processes: list[subprocess.Popen[str]]
) -> list[str]:
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "0.5",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "2",
        "GATEWAY_IDEMPOTENCY_LEASE_SECONDS": "5",
    }
    ports = [free_port(), free_port()]
    for port in ports:
        proc = start_gateway(port, env)
        processes.append(proc)
    for port, proc in zip(ports, processes, strict=True):
        await wait_ready(port, proc)
    return [f"http://127.0.0.1:{port}/api/v1/sessions" for port in ports]


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, key: str
) -> tuple[int, bytes, dict[str, str]]:
    async with http.post(url, data=body, headers=headers(key)) as answer:
        return answer.status, await answer.read(), dict(answer.headers)


def check_defined(status: int, raw: bytes, answer_headers: dict[str, str]) -> None:
    """Every answer is one the contract defines, errors in the envelope."""
    assert status in DEFINED, raw
    if status == 201:
        return
    error = orjson.loads(raw)
    assert error["statusCode"] == status
    assert error["requestId"]
    if status == 409:
        assert int(answer_headers["Retry-After"]) >= 1


async def faults(sandbox: Any, **by_provider: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        for provider, settings in by_provider.items():
            url = str(sandbox.make_url("/sandbox/admin/faults"))
            async with session.post(url, json={"provider": provider, **settings}) as answer:
                assert answer.status == 200


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_racing_retries_over_two_processes_while_stripe_is_slow(
    sandbox: Any,
    redis_url: str,
    redis_prefix: str,
    processes: list[subprocess.Popen[str]],
    http: aiohttp.ClientSession,
) -> None:
    urls = await two_gateways(sandbox, redis_url, redis_prefix, processes)
    # Stripe creates 1.5 s after each request (three times the gateway's per-call timeout);
    # Adyen and PayPal drop every connection: there is nowhere to fail over to
    await faults(
        sandbox, stripe={"processingMs": 1500}, adyen={"down": True}, paypal={"down": True}
    )
    key, body = "race-slow", orjson.dumps(card_order("ORD-RACE-SLOW"))
    session_id = session_id_for("merchant-1", key)
    answers = await asyncio.gather(*(post(http, urls[i % 2], body, key) for i in range(40)))
    for status, raw, answer_headers in answers:
        check_defined(status, raw, answer_headers)
    statuses = Counter(status for status, _, _ in answers)
    assert statuses[409] >= 30, statuses  # one holds the claim, the rest are told to retry

    # the merchant keeps retrying (both processes) until the provider's answer is there
    acknowledged: list[bytes] = [raw for status, raw, _ in answers if status == 201]
    for attempt in range(100):
        status, raw, answer_headers = await post(http, urls[attempt % 2], body, key)
        check_defined(status, raw, answer_headers)
        if status == 201:
            acknowledged.append(raw)
            break
        await asyncio.sleep(0.1)
    assert acknowledged, "never got the session"
    for i in range(6):  # every replay, from either process, is the acknowledged answer
        status, raw, answer_headers = await post(http, urls[i % 2], body, key)
        assert status == 201
        assert answer_headers["Idempotent-Replayed"] == "true"
        acknowledged.append(raw)
    assert len(set(acknowledged)) == 1
    assert orjson.loads(acknowledged[0])["sessionId"] == session_id
    assert len(held_by(sandbox, "stripe", session_id)) == 1
    assert sum(sandbox_state(sandbox).sessions_created.values()) == 1


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_a_flood_of_one_key_over_two_processes_opens_one_session(
    sandbox: Any,
    redis_url: str,
    redis_prefix: str,
    processes: list[subprocess.Popen[str]],
    http: aiohttp.ClientSession,
) -> None:
    urls = await two_gateways(sandbox, redis_url, redis_prefix, processes)
    key, body = "flood", orjson.dumps(card_order("ORD-FLOOD"))
    answers = await asyncio.gather(*(post(http, urls[i % 2], body, key) for i in range(50)))
    for status, raw, answer_headers in answers:
        check_defined(status, raw, answer_headers)
    created = {raw for status, raw, _ in answers if status == 201}
    assert len(created) == 1  # the fresh answer and every replay are the same bytes
    assert {status for status, _, _ in answers} <= {201, 409}
    assert sum(sandbox_state(sandbox).sessions_created.values()) == 1


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_a_provider_answering_key_in_use_forever_gets_409_every_time(
    sandbox: Any,
    redis_url: str,
    redis_prefix: str,
    processes: list[subprocess.Popen[str]],
    http: aiohttp.ClientSession,
) -> None:
    """Stripe never finishes the first request: every retry meets its in-flight key. The
    merchant is told to come back (409, Retry-After) each time; nothing is ever created
    elsewhere and no answer is a 502."""
    urls = await two_gateways(sandbox, redis_url, redis_prefix, processes)
    await faults(
        sandbox, stripe={"processingMs": 600_000}, adyen={"down": True}, paypal={"down": True}
    )
    key, body = "forever", orjson.dumps(card_order("ORD-FOREVER"))
    first = await post(http, urls[0], body, key)
    check_defined(*first)
    assert first[0] == 502  # Stripe timed out, Adyen and PayPal dropped the connection
    seen: Counter[int] = Counter()
    for i in range(12):
        status, raw, answer_headers = await post(http, urls[i % 2], body, key)
        check_defined(status, raw, answer_headers)
        seen[status] += 1
        error = orjson.loads(raw)
        assert error["details"]["providerError"] == {"provider": "stripe", "code": "key_conflict"}
    assert seen == {409: 12}
    assert sum(sandbox_state(sandbox).sessions_created.values()) == 0


@pytest.mark.redis
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "stripe_fault",
    [{"latencyMs": 1500}, {"processingMs": 1500}],
    ids=["killed-before-stripe-ran-it", "killed-while-stripe-runs-it"],
)
async def test_sigkill_mid_create_then_racing_retries_on_another_process(
    sandbox: Any,
    redis_url: str,
    redis_prefix: str,
    processes: list[subprocess.Popen[str]],
    http: aiohttp.ClientSession,
    stripe_fault: dict[str, Any],
) -> None:
    """Process A is SIGKILLed while Stripe holds its create (before Stripe's handler ran, or
    while it runs); 20 retries race on process B, through A's lease and after it."""
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "4",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "4.5",
        "GATEWAY_IDEMPOTENCY_LEASE_SECONDS": "5",
    }
    ports = [free_port(), free_port()]
    for port in ports:
        processes.append(start_gateway(port, env))
    for port, proc in zip(ports, processes, strict=True):
        await wait_ready(port, proc)
    await faults(sandbox, stripe=stripe_fault, adyen={"down": True}, paypal={"down": True})
    key, body = "killed-race", orjson.dumps(card_order("ORD-KILLED-RACE"))
    session_id = session_id_for("merchant-1", key)
    url_a, url_b = (f"http://127.0.0.1:{port}/api/v1/sessions" for port in ports)
    in_flight = asyncio.create_task(post(http, url_a, body, key))
    await asyncio.sleep(0.7)  # A holds the claim, Stripe holds A's request
    processes[0].send_signal(signal.SIGKILL)
    with pytest.raises(aiohttp.ClientError):
        await in_flight
    statuses: Counter[int] = Counter()
    acknowledged: set[bytes] = set()
    for _ in range(40):  # rounds of 20 racing retries until the session is there
        answers = await asyncio.gather(*(post(http, url_b, body, key) for _ in range(20)))
        for status, raw, answer_headers in answers:
            check_defined(status, raw, answer_headers)
            statuses[status] += 1
            if status == 201:
                acknowledged.add(raw)
        if acknowledged:
            break
        await asyncio.sleep(0.25)
    assert len(acknowledged) == 1, statuses
    assert orjson.loads(next(iter(acknowledged)))["sessionId"] == session_id
    assert 500 not in statuses
    (held,) = held_by(sandbox, "stripe", session_id)
    status, raw, _ = await post(http, url_b, body, key)
    assert (status, raw) == (201, next(iter(acknowledged)))
    assert orjson.loads(raw)["checkoutUrl"].endswith(held.id)
    assert sum(sandbox_state(sandbox).sessions_created.values()) == 1
