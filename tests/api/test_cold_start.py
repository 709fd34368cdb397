"""A burst of creates right after start, on a cold Redis connection pool, gets no false 503."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import SEED_BYTES, headers
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready

BURST = 200


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_a_burst_of_creates_right_after_start_gets_no_503(
    sandbox: Any, redis_url: str, redis_prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    """Two gateway processes sharing Redis, started together; as soon as they are ready each
    gets BURST concurrent creates (distinct keys and orders). None may answer 503."""
    ports = [free_port(), free_port()]
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "30",
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "30",
    }
    for port in ports:
        processes.append(start_gateway(port, env))
    for port, proc in zip(ports, processes, strict=True):
        await wait_ready(port, proc)
    connector = aiohttp.TCPConnector(limit=2 * BURST)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def create(i: int) -> tuple[int, str]:
            url = f"http://127.0.0.1:{ports[i % 2]}/api/v1/sessions"
            body = SEED_BYTES.replace(b"ORD-2024-001", f"ORD-BURST-{i}".encode())
            async with http.post(url, data=body, headers=headers(f"burst-{i}")) as answer:
                return answer.status, await answer.text()

        results = await asyncio.gather(*(create(i) for i in range(2 * BURST)))
    statuses = Counter(status for status, _ in results)
    if statuses != {201: 2 * BURST}:
        causes = []
        for proc in processes:
            proc.terminate()
            _, err = await asyncio.to_thread(proc.communicate, timeout=30)
            causes += [line for line in err.splitlines() if "gateway.errors" in line][:3]
        raise AssertionError(f"{statuses}: {causes}")
