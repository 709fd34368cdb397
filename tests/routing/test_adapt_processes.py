"""Two ``gateway serve`` processes sharing one Redis (own prefix) learn from each other's
outcomes and converge on the same estimates, as ``/routing/simulate`` explains them."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import headers, processes, seed  # noqa: F401
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready


async def explained(http: aiohttp.ClientSession, port: int) -> dict[str, dict[str, Any]]:
    """Each candidate's details in the process on ``port``."""
    async with http.post(
        f"http://127.0.0.1:{port}/api/v1/routing/simulate",
        json=seed(orderReference="SHARED-SIM"),
        headers=headers(None, scopes=["routing:read"]),
    ) as answer:
        assert answer.status == 200, await answer.text()
        body = await answer.json()
    return {c["provider"]: c["details"] for c in body["candidates"]}


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_two_processes_converge_on_the_same_estimates(
    sandbox: Any,
    redis_url: str,
    redis_prefix: str,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    ports = [free_port(), free_port()]
    env = {
        **base_env(sandbox),
        "GATEWAY_COORDINATION": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
    }
    for port in ports:
        processes.append(start_gateway(port, env))
    for port, proc in zip(ports, processes, strict=True):
        await wait_ready(port, proc)
    async with aiohttp.ClientSession() as http:
        for n in range(12):  # half the orders through each process
            port = ports[n % 2]
            body = seed(orderReference=f"SHARED-{n}")
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/sessions", json=body, headers=headers(f"sh-{n}")
            ) as answer:
                assert answer.status == 201, await answer.text()
        deadline = time.monotonic() + 15
        while True:  # each process refreshes its snapshot from Redis every 1.5 s
            views = [await explained(http, port) for port in ports]
            samples = [sum(d["successSamples"] for d in view.values()) for view in views]
            if all(s == pytest.approx(12, abs=0.5) for s in samples):
                break
            assert time.monotonic() < deadline, (samples, views)
            await asyncio.sleep(0.3)
    one, two = views
    assert one.keys() == two.keys()
    for provider in one:  # snapshots taken up to 1.5 s apart: decayed by at most 0.03 %
        for field in ("successRate", "successSamples", "successVariance", "latencySamples"):
            assert one[provider][field] == pytest.approx(two[provider][field], rel=1e-3), field
        assert one[provider]["successSegment"] == two[provider]["successSegment"]
