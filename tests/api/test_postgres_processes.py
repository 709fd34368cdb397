"""`gateway serve` and `gateway db` as real OS processes on a real PostgreSQL: the schema gate,
concurrent upgrades, a create and its GET, and a request storm across two processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.store.postgres_schema import migrations
from tests.api.conftest import ROOT, SEED_BYTES, headers
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.postgres_support import create_database, drop_database, unique_name

pytestmark = pytest.mark.postgres

#: what production mode needs besides the provider URLs of :func:`base_env`
PRODUCTION = {
    "GATEWAY_ENV": "production",
    "GATEWAY_PROVIDER_STRIPE_API_KEY": "sk_test_x",
    "GATEWAY_PROVIDER_STRIPE_WEBHOOK_SECRET": "whsec_x",
    "GATEWAY_PROVIDER_ADYEN_API_KEY": "adyen_x",
    "GATEWAY_PROVIDER_ADYEN_MERCHANT_ACCOUNT": "Acct",
    "GATEWAY_PROVIDER_ADYEN_HMAC_KEY": "44782DEF547AAA06C910C43932B1EB0C",
    "GATEWAY_PROVIDER_PAYPAL_CLIENT_ID": "id",
    "GATEWAY_PROVIDER_PAYPAL_CLIENT_SECRET": "secret",
    "GATEWAY_PROVIDER_PAYPAL_WEBHOOK_ID": "WH1",
}


def gateway_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
async def empty_database() -> Any:
    """A database without the schema, dropped afterwards."""
    name = unique_name("empty")
    url = await create_database(name, migrate=False)
    yield url
    await drop_database(name)


async def test_two_upgrades_at_once_apply_each_migration_once(empty_database: str) -> None:
    env = {"GATEWAY_DATABASE_URL": empty_database}
    status = await asyncio.to_thread(gateway_command, "db", "status", env=env)
    assert status.returncode == 1
    assert "schema version 0" in status.stdout
    assert "gateway db upgrade" in status.stdout
    both = await asyncio.gather(
        asyncio.to_thread(gateway_command, "db", "upgrade", env=env),
        asyncio.to_thread(gateway_command, "db", "upgrade", env=env),
    )
    assert [r.returncode for r in both] == [0, 0], [r.stderr for r in both]
    outputs = sorted(r.stdout for r in both)
    assert "nothing to apply" in outputs[1]
    assert "0001_records" in outputs[0]
    conn = await asyncpg.connect(empty_database)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == [m.version for m in migrations()]
    again = await asyncio.to_thread(gateway_command, "db", "status", env=env)
    assert again.returncode == 0
    assert "up to date" in again.stdout


async def test_serve_refuses_an_outdated_schema_and_names_the_command(
    sandbox: Any, empty_database: str
) -> None:
    env = {
        **base_env(sandbox),
        **PRODUCTION,
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": empty_database.replace("postgres@", "postgres:pw-secret@"),
        "GATEWAY_PORT": str(free_port()),
    }
    refused = await asyncio.to_thread(gateway_command, "serve", env=env)
    assert refused.returncode == 2
    assert "run `gateway db upgrade`" in refused.stderr
    assert "schema" in refused.stderr
    assert "pw-secret" not in refused.stderr + refused.stdout


@pytest.mark.timeout(60)
async def test_serve_in_sandbox_mode_upgrades_by_itself(
    sandbox: Any, empty_database: str, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    env = {**base_env(sandbox), "GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": empty_database}
    processes.append(start_gateway(port, env))
    await wait_ready(port, processes[0])
    status = await asyncio.to_thread(gateway_command, "db", "status", env=env)
    assert status.returncode == 0, status.stdout


@pytest.mark.timeout(60)
async def test_a_create_its_get_and_its_order_search_through_a_real_gateway_process(
    sandbox: Any, postgres_database: str, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": postgres_database,
    }
    processes.append(start_gateway(port, env))
    await wait_ready(port, processes[0])
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/api/v1/sessions"
        async with http.post(url, data=SEED_BYTES, headers=headers("pg-one")) as created:
            assert created.status == 201, await created.text()
            body = await created.json()
        async with http.get(f"{url}/{body['sessionId']}", headers=headers(None)) as read:
            assert read.status == 200
            stored = await read.json()
        query = f"{url}?orderReference=ORD-2024-001&limit=5"
        async with http.get(query, headers=headers(None)) as found:
            assert found.status == 200
            page = await found.json()
    assert stored["sessionId"] == body["sessionId"]
    assert stored["checkoutUrl"] == body["checkoutUrl"]
    assert [s["sessionId"] for s in page["data"]] == [body["sessionId"]]
    assert page["nextCursor"] is None
    conn = await asyncpg.connect(postgres_database)
    try:
        row = await conn.fetchrow(
            "SELECT merchant_id, keep_until > now() + interval '29 days' AS kept FROM sessions "
            "WHERE session_id = $1",
            body["sessionId"],
        )
        key = await conn.fetchrow("SELECT status, token FROM idempotency_keys")
    finally:
        await conn.close()
    assert row is not None
    assert (row["merchant_id"], row["kept"]) == ("merchant-1", True)
    assert (key["status"], key["token"]) == (201, None)


@pytest.mark.timeout(90)
async def test_fifty_identical_creates_across_two_processes_make_one_session(
    sandbox: Any, postgres_database: str, processes: list[subprocess.Popen[str]]
) -> None:
    ports = [free_port(), free_port()]
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": postgres_database,
    }
    for port in ports:
        processes.append(start_gateway(port, env))
    for port, proc in zip(ports, processes, strict=True):
        await wait_ready(port, proc)
    async with aiohttp.ClientSession() as http:
        await http.post(
            str(sandbox.make_url("/sandbox/admin/faults")),
            json={"provider": "stripe", "latencyMs": 200},
        )
        first_statuses: list[int] = []

        async def one(i: int) -> bytes:
            """POST until the answer is final (a 409 says another copy is in flight)."""
            url = f"http://127.0.0.1:{ports[i % 2]}/api/v1/sessions"
            for attempt in range(100):
                async with http.post(url, data=SEED_BYTES, headers=headers("pg-race")) as answer:
                    if attempt == 0:
                        first_statuses.append(answer.status)
                    if answer.status != 409:
                        assert answer.status == 201, await answer.text()
                        return await answer.read()
                await asyncio.sleep(0.05)
            raise AssertionError("still in flight")

        answers = await asyncio.gather(*(one(i) for i in range(50)))
        stats = await (await http.get(str(sandbox.make_url("/sandbox/admin/stats")))).json()
    assert set(Counter(first_statuses)) <= {201, 409}
    assert len(set(answers)) == 1  # byte-identical answers
    assert sum(stats["sessionsCreated"].values()) == 1
    conn = await asyncpg.connect(postgres_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 1
    finally:
        await conn.close()
