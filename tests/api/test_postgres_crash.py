"""Crash of every gateway process under create load, on PostgreSQL: ``gateway serve
--workers 2`` (the supervisor and both workers) is SIGKILLed while creates are in flight,
then started again. Whatever was answered 201 is still there, unchanged; every key, answered
or cut off, completes on retry with one provider session; acknowledged keys replay their
first answer byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.api.conftest import ROOT, headers
from tests.api.create_load import CreateLoad, settle
from tests.api.test_failover import sandbox_state
from tests.gateway_processes import base_env, free_port, process_alive, stop_process, wait_ready

pytestmark = pytest.mark.postgres


#: keys claimed (their request pinned) and not completed: creates in flight
OPEN_CLAIMS = "SELECT count(*) FROM idempotency_keys WHERE status IS NULL AND pin IS NOT NULL"


def start_supervisor(port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    """``gateway serve --workers 2`` in a process group of its own (so one signal reaches
    the supervisor and every worker at once)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    inherited.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2"],
        cwd=ROOT,
        env={**inherited, **env, "GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[str]]]:
    """Supervisors a test starts; each process group is SIGKILLed and reaped afterwards."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stop_process(proc)


async def worker_pids(http: aiohttp.ClientSession, port: int) -> list[int]:
    async with http.get(f"http://127.0.0.1:{port}/readyz") as answer:
        workers: dict[str, Any] = (await answer.json())["checks"]["workers"]
    assert workers["alive"] == 2, workers
    return list(workers["pids"])


async def until_claims_open(database: str, count: int = 2, timeout: float = 10.0) -> None:
    """Wait until ``count`` creates hold a claim not completed yet (they are in flight)."""
    conn = await asyncpg.connect(database)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while await conn.fetchval(OPEN_CLAIMS) < count:
            assert asyncio.get_running_loop().time() < deadline, "no creates in flight"
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_sigkill_of_every_process_mid_load_loses_no_acknowledged_session(
    sandbox: Any,
    postgres_database: str,
    redis_url: str,
    redis_prefix: str,
    groups: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    env = {
        **base_env(sandbox),
        # the production pairing: records in PostgreSQL, the workers' circuits and statistics
        # in Redis
        "GATEWAY_COORDINATION": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        # the restarted gateway listens on another port: its public URL (in the return URL
        # sent to providers) must not change, as in production, or a retry's create would not
        # be the request the provider holds under the key
        "GATEWAY_PUBLIC_URL": "http://gateway.internal:8080",
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": postgres_database,
        # a key cut off by the kill is taken over by a retry once its lease ran out
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "4",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "4.5",
        "GATEWAY_IDEMPOTENCY_LEASE_SECONDS": "5",
    }
    port = free_port()
    groups.append(start_supervisor(port, env))
    await wait_ready(port, groups[0], timeout=60)
    load = CreateLoad(lambda: f"http://127.0.0.1:{port}/api/v1/sessions", "crash")
    async with aiohttp.ClientSession() as http:
        pids = await worker_pids(http, port)
        for provider in ("stripe", "adyen", "paypal"):
            await http.post(  # creates spend time at the provider: some are in flight
                str(sandbox.make_url("/sandbox/admin/faults")),
                json={"provider": provider, "latencyMs": 150},
            )
        load.start(http)
        await load.until(lambda: load.count(201) >= 40)
        await until_claims_open(postgres_database)
        os.killpg(groups[0].pid, signal.SIGKILL)
        await load.stop()
        assert await asyncio.to_thread(groups[0].wait, 10) == -signal.SIGKILL
        deadline = asyncio.get_running_loop().time() + 10
        while any(process_alive(pid) for pid in pids):
            assert asyncio.get_running_loop().time() < deadline, f"a worker survived: {pids}"
            await asyncio.sleep(0.02)

        statuses = Counter(a.status for a in load.answers)
        assert set(statuses) <= {201, 0}, statuses  # answered, or cut off by the kill
        assert statuses[0] >= 1, "no create was in flight when the processes died"
        conn = await asyncpg.connect(postgres_database)
        try:  # keys claimed and sent to a provider, never completed: the kill's own doing
            cut_off = await conn.fetchval(OPEN_CLAIMS)
        finally:
            await conn.close()
        assert cut_off >= 1
        acknowledged = load.acknowledged()

        port = free_port()
        groups.append(start_supervisor(port, env))
        await wait_ready(port, groups[1], timeout=60)
        base = f"http://127.0.0.1:{port}/api/v1/sessions"
        for key, body in acknowledged.items():
            session_id = json.loads(body)["sessionId"]
            async with http.get(f"{base}/{session_id}", headers=headers(None)) as read:
                assert read.status == 200, key
                view = await read.json()
            # the stored session holds every field of the acknowledged answer, unchanged
            acked = json.loads(body)
            assert {field: view.get(field) for field in acked} == acked, key
            assert view["amount"] == {"total": "140.76", "shipping": "9.95", "tax": "11.81"}

        keys = load.keys()
        finals = await asyncio.gather(*(settle(http, base, key) for key in keys))
        stats = await (await http.get(str(sandbox.make_url("/sandbox/admin/stats")))).json()

    for final in finals:
        assert final.status == 201, (final.key, final.body)
        if final.key in acknowledged:
            assert final.body == acknowledged[final.key], final.key
    session_ids = {json.loads(f.body)["sessionId"] for f in finals}
    assert len(session_ids) == len(keys)
    # one provider session per key, at any provider: a retry after the crash goes back to
    # the provider the cut-off attempt was calling (the claim recorded it before the call)
    held = Counter(
        s.gateway_session_id
        for sessions in sandbox_state(sandbox).sessions.values()
        for s in sessions.values()
    )
    where = {
        sid: [
            (provider, s.id, getattr(s, "status", None))
            for provider, sessions in sandbox_state(sandbox).sessions.items()
            for s in sessions.values()
            if s.gateway_session_id == sid
        ]
        for sid, n in held.items()
        if n > 1
    }
    assert set(held.values()) == {1}, where
    assert sum(stats["sessionsCreated"].values()) == len(keys), stats
    conn = await asyncpg.connect(postgres_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions") == len(keys)
    finally:
        await conn.close()
