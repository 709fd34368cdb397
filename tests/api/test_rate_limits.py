"""Per-merchant rate limits (token buckets shared across processes) and the bounded return page."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.notifications.merchants import load_merchants
from gateway.ratelimit import MemoryTokenBuckets, RateLimit, RedisTokenBuckets, enforce
from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.keys import RedisKeys
from gateway.store.redis_client import open_redis
from tests.api.conftest import SEED_BYTES, GatewayFactory, headers
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready

MERCHANTS_YAML = """
defaults:
  rate_limit: {per_second: 0.1, burst: 3}
merchants:
  m-limited:
    rate_limit: {per_second: 0.1, burst: 5}
"""
UNKNOWN = "/api/v1/sessions/6f1c4a52-9c51-4c55-9a8e-0a1f0d6d7c11"


@pytest.fixture
def merchants_file(tmp_path: Path) -> Path:
    path = tmp_path / "merchants.yaml"
    path.write_text(MERCHANTS_YAML)
    return path


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_a_merchant_limit_is_shared_by_two_processes(
    sandbox: Any,
    redis_url: str,
    redis_prefix: str,
    merchants_file: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    ports = [free_port(), free_port()]
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_MERCHANTS_PATH": str(merchants_file),
        "GATEWAY_METRICS_MERCHANTS": "m-limited",
    }
    for port in ports:
        processes.append(start_gateway(port, env))
    for port, proc in zip(ports, processes, strict=True):
        await wait_ready(port, proc)
    async with aiohttp.ClientSession() as http:

        async def read(i: int, merchant: str) -> tuple[int, str | None, dict[str, Any]]:
            url = f"http://127.0.0.1:{ports[i % 2]}{UNKNOWN}"
            async with http.get(url, headers=headers(None, merchant=merchant)) as answer:
                return answer.status, answer.headers.get("Retry-After"), await answer.json()

        limited = [await read(i, "m-limited") for i in range(12)]
        # burst 5 for the merchant across both processes (0.1/s refill adds none in this time)
        assert Counter(status for status, _, _ in limited) == {404: 5, 429: 7}
        assert [status for status, _, _ in limited[:5]] == [404] * 5
        _status, retry_after, body = limited[-1]
        assert retry_after is not None
        assert 1 <= int(retry_after) <= 10
        assert body["error"] == "Too Many Requests"
        assert body["code"] == 429
        assert body["statusCode"] == 429
        assert isinstance(body["requestId"], str)
        # another merchant has its own bucket, with the default limit (burst 3)
        others = [await read(i, "m-other") for i in range(5)]
        assert [status for status, _, _ in others] == [404, 404, 404, 429, 429]
        async with http.get(f"http://127.0.0.1:{ports[0]}/metrics") as answer:
            text = await answer.text()
    assert 'gateway_rate_limited_total{limit="merchant",merchant="m-limited"} ' in text
    assert 'gateway_rate_limited_total{limit="merchant",merchant="other"} ' in text


async def test_a_refused_create_leaves_the_idempotency_key_unused(
    gateway: GatewayFactory, merchants_file: Path
) -> None:
    client = await gateway(merchants_path=merchants_file)
    for i in range(5):
        answer = await client.get(UNKNOWN, headers=headers(None, merchant="m-limited"))
        assert answer.status == 404, i
    refused = await client.post(
        "/api/v1/sessions", data=SEED_BYTES, headers=headers("rl-1", merchant="m-limited")
    )
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    # a merchant with room uses the same key: nothing was claimed for the refused request
    ok = await client.post(
        "/api/v1/sessions", data=SEED_BYTES, headers=headers("rl-1", merchant="m-roomy")
    )
    assert ok.status == 201


async def test_without_a_configured_limit_nothing_is_refused(gateway: GatewayFactory) -> None:
    client = await gateway()
    answers = await asyncio.gather(*(client.get(UNKNOWN, headers=headers(None)) for _ in range(50)))
    assert {a.status for a in answers} == {404}


def test_limits_come_from_merchants_yaml_with_a_default(merchants_file: Path) -> None:
    directory = load_merchants(merchants_file, allow_http_localhost=True, required=True)
    assert directory.rate_limit_for("m-limited") == RateLimit(0.1, 5)
    assert directory.rate_limit_for("anyone-else") == RateLimit(0.1, 3)
    merchants_file.write_text("merchants: {}\n")
    plain = load_merchants(merchants_file, allow_http_localhost=True, required=True)
    assert plain.rate_limit_for("anyone") is None


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_bucket_refills_at_its_rate(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        conn = open_redis(Settings(_env_file=None, redis_url=url))  # type: ignore[call-arg]
        buckets: Any = RedisTokenBuckets(conn, RedisKeys(request.getfixturevalue("redis_prefix")))
    else:
        buckets = MemoryTokenBuckets()
    limit = RateLimit(per_second=5.0, burst=2)
    try:
        assert await buckets.take("t", "s", limit) is None
        assert await buckets.take("t", "s", limit) is None
        wait = await buckets.take("t", "s", limit)
        assert wait is not None
        assert 0 < wait <= 0.2
        await asyncio.sleep(wait + 0.05)
        assert await buckets.take("t", "s", limit) is None
        assert await buckets.take("t", "other", limit) is None  # one bucket per subject
    finally:
        if kind == "redis":
            await conn.close()


async def test_an_unreachable_bucket_store_lets_the_request_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    conn = open_redis(Settings(_env_file=None, redis_url=url))  # type: ignore[call-arg]
    buckets = RedisTokenBuckets(conn, RedisKeys("gw:"))
    try:
        with pytest.raises(StoreUnavailable, match="rate_limit"):
            await buckets.take("merchant", "m-1", RateLimit(per_second=1.0, burst=1))
        await enforce(buckets, "merchant", "m-1", RateLimit(per_second=1.0, burst=1))
    finally:
        await conn.close()
    assert "rate limit merchant not checked: StoreUnavailable" in caplog.text


async def test_the_return_page_is_rate_limited_for_the_whole_gateway(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(return_page_rate_per_second=0.1, return_page_burst=3)
    url = f"{UNKNOWN}/return?sessionId=CS1"
    statuses = [(await client.get(url, allow_redirects=False)).status for _ in range(5)]
    assert statuses == [404, 404, 404, 429, 429]
    refused = await client.get(url, allow_redirects=False)
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await refused.json())["code"] == 429


async def test_return_pages_beyond_the_waiting_cap_answer_without_waiting(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(return_wait_seconds=5, return_page_max_waiting=1)
    created = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("rp-1"))
    session = await created.json()
    view = await (
        await client.get(f"/api/v1/sessions/{session['sessionId']}", headers=headers(None))
    ).json()
    url = f"/api/v1/sessions/{session['sessionId']}/return"
    query = {"sessionId": view["providerSessionId"]}
    waiting = asyncio.create_task(client.get(url, params=query, allow_redirects=False))
    await asyncio.sleep(0.3)  # the first page now waits for the outcome (up to 5 s)
    started = time.monotonic()
    second = await client.get(url, params=query, allow_redirects=False)
    assert second.status == 303
    assert time.monotonic() - started < 2.0  # answered from the current state, no wait
    assert (await waiting).status == 303
