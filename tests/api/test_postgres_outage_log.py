"""A real `gateway serve` process through a PostgreSQL outage: every request answers the seed's
503 while the database is away, the process recovers by itself, and its log stays one JSON
line per failure with no traceback (asyncpg's own reconnect warnings included)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from tests.api.conftest import SEED_BYTES, headers
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=headers(None)) as answer:
        return answer.status, await answer.json()


@pytest.mark.timeout(60)
async def test_an_outage_logs_one_line_per_failure_and_the_gateway_recovers(
    sandbox: Any, postgres_database: str, processes: list[subprocess.Popen[str]]
) -> None:
    target = urlsplit(postgres_database)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    port = free_port()
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{proxy.port}{target.path}",
        "GATEWAY_DATABASE_POOL_MIN_SIZE": "2",
        "GATEWAY_NOTIFICATION_POLL_INTERVAL_SECONDS": "0.2",
        "GATEWAY_EXPIRY_SWEEP_INTERVAL_SECONDS": "0.2",
        "GATEWAY_RETENTION_INTERVAL_SECONDS": "0.2",
    }
    proc = start_gateway(port, env)
    processes.append(proc)
    try:
        await wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}/api/v1/sessions"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=SEED_BYTES, headers=headers("outage-1")) as created:
                assert created.status == 201, await created.text()
                session_id = (await created.json())["sessionId"]
            await proxy.stop()
            for _ in range(5):
                began = time.monotonic()
                status, body = await _get(http, f"{url}/{session_id}")
                assert (status, body["error"]) == (503, "Service Unavailable"), body
                assert time.monotonic() - began < 3.0
            await asyncio.sleep(1.5)  # background rounds and the pool's reconnects fail too
            await proxy.start()
            deadline = time.monotonic() + 15
            while (await _get(http, f"{url}/{session_id}"))[0] != 200:
                assert time.monotonic() < deadline, "the gateway did not recover"
                await asyncio.sleep(0.1)
    finally:
        await proxy.stop()
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=20)
    lines = stderr.splitlines()
    assert lines[0].startswith("gateway: listening on ")  # the one line that is not a record
    records = [orjson.loads(line) for line in lines[1:] if line.strip()]
    assert records, "nothing was logged"
    with_traceback = [r for r in records if "exc" in r]
    assert with_traceback == [], with_traceback[0]["exc"] if with_traceback else None
    store_down = [r for r in records if r["msg"] == "store unavailable"]
    assert len(store_down) >= 5
    assert all("postgres" in str(r.get("errors", "")) for r in store_down)
