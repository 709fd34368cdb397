"""A PostgreSQL outage under create load: a private server (tests/pg_instance.py) is stopped
(``pg_ctl stop -m immediate``) or SIGKILLed while a gateway process creates sessions on it.
While it is down the gateway answers the seed's 503 quickly, with Retry-After, never a 500,
and /readyz says the store is down; once the server is back the same process recovers by
itself, and nothing it acknowledged is lost: every 201 reads back, every key completes."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.api.conftest import headers
from tests.api.create_load import Answer, CreateLoad, settle
from tests.api.test_failover import sandbox_state
from tests.api.test_postgres_processes import gateway_command
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.pg_instance import PrivatePostgres

pytestmark = pytest.mark.postgres

#: the seed's answer when the service cannot serve (003: API contract, error bodies)
SEED_503 = {
    "error": "Service Unavailable",
    "message": "The service is temporarily unavailable. Please try again later",
    "code": 503,
}
#: how long a 503 may take while the database is down (95th percentile)
QUICK_S = 2.0


async def readiness(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/readyz") as answer:
        return answer.status, (await answer.json())["checks"]["store"]


async def ready_again(http: aiohttp.ClientSession, port: int, timeout: float = 20.0) -> float:
    """Poll /readyz until the store check passes; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        status, store = await readiness(http, port)
        if status == 200:
            assert store["ok"] is True
            return loop.time() - started
        assert loop.time() - started < timeout, f"the gateway did not recover: {store}"
        await asyncio.sleep(0.05)


def check_unavailable(answer: Answer) -> None:
    """``answer`` is the seed's 503 with Retry-After."""
    assert answer.status == 503, (answer.key, answer.status, answer.body)
    body = json.loads(answer.body)
    assert {k: body.get(k) for k in SEED_503} == SEED_503, body
    assert answer.retry_after is not None
    assert int(answer.retry_after) >= 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("outage", ["stop -m immediate", "SIGKILL"])
async def test_a_database_outage_answers_503_quickly_and_the_gateway_recovers_by_itself(
    sandbox: Any,
    private_postgres: PrivatePostgres,
    processes: list[subprocess.Popen[str]],
    outage: str,
    tmp_path: Path,
) -> None:
    server = private_postgres
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute("CREATE DATABASE gateway")
    finally:
        await admin.close()
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": server.database_url("gateway"),
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "4",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "4.5",
        "GATEWAY_IDEMPOTENCY_LEASE_SECONDS": "5",
    }
    upgraded = await asyncio.to_thread(gateway_command, "db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    port = free_port()
    log = tmp_path / "gateway.log"
    processes.append(start_gateway(port, env, output=log))
    gateway = processes[0]
    await wait_ready(port, gateway)
    load = CreateLoad(lambda: f"http://127.0.0.1:{port}/api/v1/sessions", "outage")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        load.start(http)
        await load.until(lambda: load.count(201) >= 20)

        if outage == "SIGKILL":
            await asyncio.to_thread(server.kill)
        else:
            await asyncio.to_thread(server.stop, "immediate")
        down_at = loop.time()
        await load.until(lambda: sum(a.started > down_at for a in load.answers) >= 30)
        status, store = await readiness(http, port)
        assert status == 503
        assert (store["ok"], store["backend"]) == (False, "postgres")

        restart_at = loop.time()
        await asyncio.to_thread(server.start)
        up_at = loop.time()
        recovery_s = await ready_again(http, port)
        recovered = len(load.answers)
        await load.until(lambda: sum(a.status == 201 for a in load.answers[recovered:]) >= 20)
        await load.stop()

        assert gateway.poll() is None  # the same process, never restarted
        statuses = Counter(a.status for a in load.answers)
        # never a 500, never a dropped connection
        unhandled = [line for line in log.read_text().splitlines() if "unhandled" in line]
        assert set(statuses) <= {201, 503}, (statuses, unhandled[:1])
        during = [
            a for a in load.answers if a.started > down_at and a.started + a.elapsed < restart_at
        ]
        assert len(during) >= 30
        for answer in during:
            check_unavailable(answer)
        p95 = statistics.quantiles([a.elapsed for a in during], n=20)[-1]
        assert p95 < QUICK_S, f"503s took {p95:.2f}s (p95) while the database was down"
        assert recovery_s < 10
        after = [a for a in load.answers if a.started > up_at + recovery_s]
        assert after
        assert all(a.status == 201 for a in after), Counter(a.status for a in after)

        acknowledged = load.acknowledged()
        base = f"http://127.0.0.1:{port}/api/v1/sessions"
        for key, body in acknowledged.items():
            acked = json.loads(body)
            async with http.get(f"{base}/{acked['sessionId']}", headers=headers(None)) as read:
                assert read.status == 200, key
                view = await read.json()
            assert {field: view.get(field) for field in acked} == acked, key
        keys = load.keys()
        finals = await asyncio.gather(*(settle(http, base, key) for key in keys))
        stats = await (await http.get(str(sandbox.make_url("/sandbox/admin/stats")))).json()

    for final in finals:
        assert final.status == 201, (final.key, final.body)
        if final.key in acknowledged:
            assert final.body == acknowledged[final.key], final.key
    assert len({json.loads(f.body)["sessionId"] for f in finals}) == len(keys)
    assert sum(stats["sessionsCreated"].values()) == len(keys)
    for provider, sessions in sandbox_state(sandbox).sessions.items():
        held = Counter(s.gateway_session_id for s in sessions.values())
        assert set(held.values()) <= {1}, provider
