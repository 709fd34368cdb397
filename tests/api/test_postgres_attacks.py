"""Attacks on the PostgreSQL record store from outside, through real `gateway serve` processes:
the database connection cut or blackholed at the worst moments (tests/fault_proxy.py). The
promise under attack: a retry never creates a second provider session, what was answered 201
survives, and every fault is a defined answer (the seed's envelope), never a 500 or a hang."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.store.postgres_schema import migrations
from tests.api.conftest import ROOT, SEED_BYTES, headers, seed
from tests.api.test_postgres_processes import PRODUCTION
from tests.fault_proxy import FaultProxy
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.lifecycle.conftest import merchants_file
from tests.postgres_support import outbox_drained

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


def through(proxy: FaultProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = (
        f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    )
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def proxy(postgres_database: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(postgres_database)
    faults = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await faults.start()
    yield faults
    await faults.close()


async def created(sandbox: Any) -> int:
    """Provider sessions the sandbox created."""
    url = str(sandbox.make_url("/sandbox/admin/stats"))
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        stats = await answer.json()
    return int(sum(stats["sessionsCreated"].values()))


async def serve(
    sandbox: Any,
    url: str,
    processes: list[subprocess.Popen[str]],
    **settings: str,
) -> str:
    """Start a gateway on the records at ``url``; its sessions URL."""
    port = free_port()
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": url,
        "GATEWAY_DATABASE_COMMAND_TIMEOUT_SECONDS": "1",
        "GATEWAY_DATABASE_CONNECT_TIMEOUT_SECONDS": "1",
        "GATEWAY_DATABASE_POOL_TIMEOUT_SECONDS": "1",
        **settings,
    }
    processes.append(start_gateway(port, env))
    await wait_ready(port, processes[-1])
    return f"http://127.0.0.1:{port}/api/v1/sessions"


def order(reference: str) -> dict[str, Any]:
    """The seed request for order ``reference``."""
    return seed(orderReference=reference)


def assert_store_down(status: int, body: dict[str, Any], retry_after: str | None) -> None:
    assert status == 503, body
    assert body["code"] == 503
    assert retry_after is not None


async def test_a_commit_whose_reply_is_lost_answers_503_and_the_retry_replays_the_session(
    sandbox: Any, postgres_database: str, proxy: FaultProxy, processes: list[Any]
) -> None:
    sessions = await serve(sandbox, through(proxy, postgres_database), processes)
    proxy.cut_after = b"checkoutUrl"  # only the commit's parameters hold the answer's body
    async with aiohttp.ClientSession() as http:
        async with http.post(sessions, data=SEED_BYTES, headers=headers("lost-reply")) as first:
            assert_store_down(first.status, await first.json(), first.headers.get("Retry-After"))
        assert proxy.cuts == 1
        async with http.post(sessions, data=SEED_BYTES, headers=headers("lost-reply")) as again:
            assert again.status == 201, await again.text()
            assert again.headers.get("Idempotent-Replayed") == "true"
            replayed = await again.read()
    conn = await asyncpg.connect(postgres_database)
    try:
        stored = await conn.fetchval("SELECT body FROM idempotency_keys")
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 1
    finally:
        await conn.close()
    assert bytes(stored) == replayed
    assert await created(sandbox) == 1


async def test_a_blackholed_database_answers_503_within_the_deadline_and_recovers(
    sandbox: Any, postgres_database: str, proxy: FaultProxy, processes: list[Any]
) -> None:
    sessions = await serve(sandbox, through(proxy, postgres_database), processes)
    base = sessions.removesuffix("/api/v1/sessions")
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.post(sessions, json=order("before"), headers=headers("before")) as ok:
            assert ok.status == 201, await ok.text()
        proxy.blackhole()
        started = time.monotonic()

        async def create(key: str) -> tuple[int, dict[str, Any], str | None]:
            async with http.post(sessions, json=order(key), headers=headers(key)) as answer:
                return answer.status, await answer.json(), answer.headers.get("Retry-After")

        answers = await asyncio.gather(*(create(f"dark-{i}") for i in range(4)))
        elapsed = time.monotonic() - started
        for status, body, retry_after in answers:
            assert_store_down(status, body, retry_after)
        assert elapsed < 8, elapsed  # 1 s command timeout: far inside the 15 s deadline
        started = time.monotonic()
        async with http.get(f"{base}/readyz") as ready:
            assert ready.status == 503
        # the commit (1 s command timeout) and giving the claim up fit the 3 s deadline
        assert time.monotonic() - started < 3.5
        proxy.heal()

        async def recovered() -> bool:
            async with http.post(sessions, json=order("after"), headers=headers("after")) as answer:
                return answer.status == 201

        deadline = time.monotonic() + 15
        while not await recovered():
            assert time.monotonic() < deadline, "the gateway did not recover"
            await asyncio.sleep(0.2)


#: text PostgreSQL cannot hold as it is (NUL, lone surrogates, the store's escape mark), text
#: that looks like SQL, and long text within the API's limits
HOSTILE = (
    "nul\x00byte",
    "\ud800lone",
    "lone\udfff",
    "\x01starts-with-the-escape-mark",
    "'; DROP TABLE sessions; --",
    "$1 $$ \\x00 %s E'\\\\'",
    "ü" * 128,
    "\U0001f4b3" * 128,
)


async def test_hostile_text_is_stored_and_read_back_exactly_or_refused(
    sandbox: Any, postgres_database: str, processes: list[Any]
) -> None:
    sessions = await serve(sandbox, postgres_database, processes)
    async with aiohttp.ClientSession() as http:
        for i, text in enumerate(HOSTILE):
            ref = text[:128]
            body = seed(orderReference=ref, additionalInformation={"k": text[:512], "x": "y"})
            payload = json.dumps(body).encode()  # JSON escapes NUL and lone surrogates
            async with http.post(sessions, data=payload, headers=headers(f"h-{i}")) as answer:
                text_answer = await answer.text()
                assert answer.status in (201, 400, 422), (text, answer.status, text_answer)
                if answer.status != 201:
                    continue
                made = json.loads(text_answer)
            async with http.get(f"{sessions}/{made['sessionId']}", headers=headers(None)) as read:
                assert read.status == 200, await read.text()
                stored = json.loads(await read.text())
            assert stored["orderReference"] == ref
            query = {"orderReference": ref}
            async with http.get(sessions, params=query, headers=headers(None)) as found:
                assert found.status == 200, (text, await found.text())
                page = json.loads(await found.text())
            assert [s["sessionId"] for s in page["data"]] == [made["sessionId"]], text
        # cursors at the ends of time, and ones this API never issues
        for created_at in ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"):
            for session_id in ("00000000-0000-0000-0000-000000000000", made["sessionId"]):
                raw = json.dumps([created_at, session_id]).encode()
                cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
                query = {"orderReference": "ORD", "cursor": cursor, "limit": "100"}
                async with http.get(sessions, params=query, headers=headers(None)) as found:
                    assert found.status == 200, await found.text()
        for cursor in ("A" * 200, "A" * 201, "_-" * 50, "W10", "WyIiLCIiXQ"):
            query = {"orderReference": "ORD", "cursor": cursor}
            async with http.get(sessions, params=query, headers=headers(None)) as found:
                assert found.status == 400, await found.text()


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


async def test_a_schema_upgraded_by_a_newer_gateway_is_neither_served_nor_downgraded(
    sandbox: Any, postgres_database: str
) -> None:
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')"
        )
        env = {
            **base_env(sandbox),
            **PRODUCTION,
            "GATEWAY_STORE": "postgres",
            "GATEWAY_DATABASE_URL": postgres_database,
            "GATEWAY_PORT": str(free_port()),
        }
        sandboxed = {**env, "GATEWAY_ENV": "sandbox"}
        runs = await asyncio.gather(
            asyncio.to_thread(gateway_command, "serve", env=env),
            asyncio.to_thread(gateway_command, "serve", env=sandboxed),
            asyncio.to_thread(gateway_command, "db", "status", env=env),
            asyncio.to_thread(gateway_command, "db", "upgrade", env=env),
        )
        for run in runs:
            assert run.returncode == 2, (run.args, run.stdout, run.stderr)
            assert "9999" in run.stderr
            assert "newer gateway" in run.stderr
            assert "Traceback" not in run.stderr
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
        await conn.close()
    assert [r["version"] for r in versions] == [*(m.version for m in migrations()), 9999]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://gw:pw-s3cret@127.0.0.1:99999/db",
        "postgresql://gw:pw-s3cret@[::1/db",
        "postgresql://gw:pw-s3cret@127.0.0.1:54x/db",
        "http://gw:pw-s3cret@127.0.0.1/db",
        "postgresql://gw:pw-s3cret@127.0.0.1:1/db",
    ],
)
async def test_a_bad_database_url_is_a_clear_refusal_that_never_shows_its_password(
    sandbox: Any, url: str
) -> None:
    env = {**base_env(sandbox), "GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url}
    env["GATEWAY_PORT"] = str(free_port())
    runs = await asyncio.gather(
        asyncio.to_thread(gateway_command, "db", "status", env=env),
        asyncio.to_thread(gateway_command, "db", "upgrade", env=env),
        asyncio.to_thread(gateway_command, "serve", env=env),
    )
    for run in runs:
        assert run.returncode == 2, (run.args, run.stderr)
        assert "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith("gateway: "), run.stderr
        assert "pw-s3cret" not in run.stdout + run.stderr


async def test_an_exhausted_pool_answers_503_or_409_and_every_retry_ends_in_one_session(
    sandbox: Any, postgres_database: str, processes: list[Any]
) -> None:
    sessions = await serve(
        sandbox,
        postgres_database,
        processes,
        GATEWAY_DATABASE_POOL_MIN_SIZE="1",
        GATEWAY_DATABASE_POOL_MAX_SIZE="1",
        GATEWAY_DATABASE_POOL_TIMEOUT_SECONDS="0.05",
    )
    first: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:

        async def create(key: str) -> bytes:
            seen = []
            for attempt in range(200):
                async with http.post(sessions, json=order(key), headers=headers(key)) as answer:
                    if attempt == 0:
                        first[key] = answer.status
                    seen.append((answer.status, (await answer.text())[:120]))
                    if answer.status == 201:
                        return await answer.read()
                    assert answer.status in (409, 503), (answer.status, await answer.text())
                    assert answer.headers.get("Retry-After") is not None
                await asyncio.sleep(0.05)
            raise AssertionError(f"{key} never completed: {seen}")

        keys = [f"crowd-{i}" for i in range(50)]
        bodies = await asyncio.gather(*(create(k) for k in keys))
    assert 503 in first.values()  # the pool was exhausted
    assert len({json.loads(b)["sessionId"] for b in bodies}) == 50
    assert await created(sandbox) == 50
    conn = await asyncpg.connect(postgres_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 50
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE status = 201") == 50
    finally:
        await conn.close()


async def two_gateways(sandbox: Any, url: str, processes: list[Any], **settings: str) -> list[str]:
    """Two gateway processes on the same records, with Redis for their coordination."""
    return list(
        await asyncio.gather(
            serve(sandbox, url, processes, **settings), serve(sandbox, url, processes, **settings)
        )
    )


async def slow_provider(sandbox: Any, latency_ms: int) -> None:
    async with aiohttp.ClientSession() as http:
        for provider in ("stripe", "adyen", "paypal"):
            await http.post(
                str(sandbox.make_url("/sandbox/admin/faults")),
                json={"provider": provider, "latencyMs": latency_ms},
            )


async def test_one_order_under_many_keys_across_two_processes_gets_one_provider_session(
    sandbox: Any, postgres_database: str, processes: list[Any]
) -> None:
    gateways = await two_gateways(sandbox, postgres_database, processes)
    await slow_provider(sandbox, 200)
    async with aiohttp.ClientSession() as http:

        async def create(i: int) -> tuple[int, str]:
            key = f"order-race-{i}"
            async with http.post(
                gateways[i % 2], json=order("ONE-ORDER"), headers=headers(key)
            ) as answer:
                return answer.status, await answer.text()

        answers = await asyncio.gather(*(create(i) for i in range(30)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] + [409] * 29, answers
    assert await created(sandbox) == 1
    conn = await asyncpg.connect(postgres_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 1
    finally:
        await conn.close()


async def test_one_key_with_different_bodies_across_two_processes_creates_at_most_once(
    sandbox: Any, postgres_database: str, processes: list[Any]
) -> None:
    gateways = await two_gateways(sandbox, postgres_database, processes)
    await slow_provider(sandbox, 200)
    async with aiohttp.ClientSession() as http:

        async def create(i: int) -> int:
            body = seed(orderReference="SAME-KEY", additionalInformation={"variant": str(i % 3)})
            async with http.post(gateways[i % 2], json=body, headers=headers("k")) as answer:
                assert answer.status in (201, 409, 422), await answer.text()
                return answer.status

        statuses = await asyncio.gather(*(create(i) for i in range(30)))
    assert statuses.count(201) <= 1
    assert 422 in statuses
    assert await created(sandbox) == statuses.count(201)


async def test_the_database_password_never_shows_in_logs_readyz_metrics_or_errors(
    sandbox: Any, postgres_database: str, proxy: FaultProxy, processes: list[Any]
) -> None:
    secret = "pw-s3cret-Zq9"
    url = through(proxy, postgres_database).replace("postgres@", f"postgres:{secret}@")
    sessions = await serve(sandbox, url, processes, GATEWAY_LOG_LEVEL="DEBUG")
    base = sessions.removesuffix("/api/v1/sessions")
    seen: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:

        async def visit() -> None:
            async with http.post(sessions, json=order("s"), headers=headers("s")) as answer:
                seen.append(await answer.text())
            for path in ("/readyz", "/healthz", "/metrics", "/api/v1/sessions/nope"):
                async with http.get(base + path, headers=headers(None)) as answer:
                    seen.append(await answer.text())

        await visit()
        proxy.blackhole()
        await visit()
        assert "503" in seen[-5] or '"code":503' in seen[-5]
        proxy.heal()
        await visit()
    proc = processes[-1]
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert "store unavailable" in err + out  # the outage was logged
    for text in [*seen, out, err]:
        assert secret not in text


async def test_two_processes_deliver_every_notification_once(
    sandbox: Any,
    postgres_database: str,
    processes: list[Any],
    aiohttp_server: Any,
    tmp_path: Path,
) -> None:
    received: Counter[str] = Counter()

    async def hook(request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        received[event["data"]["payment_session"]["sessionId"]] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    receiver = await aiohttp_server(app)
    merchants = merchants_file(tmp_path, str(receiver.make_url("")).rstrip("/"))
    gateways = await two_gateways(
        sandbox,
        postgres_database,
        processes,
        GATEWAY_MERCHANTS_PATH=str(merchants),
        GATEWAY_NOTIFICATION_POLL_INTERVAL_SECONDS="0.02",
    )
    async with aiohttp.ClientSession() as http:

        async def create(i: int) -> str:
            key = f"notify-{i}"
            async with http.post(gateways[i % 2], json=order(key), headers=headers(key)) as made:
                assert made.status == 201, await made.text()
                return str((await made.json())["sessionId"])

        ids = await asyncio.gather(*(create(i) for i in range(40)))
    await outbox_drained(postgres_database)
    assert set(received) == set(ids)
    assert set(received.values()) == {1}, received


@pytest.mark.parametrize("delivered", [True, False], ids=["commit-ran", "commit-lost"])
async def test_a_commit_blackholed_answers_503_and_retries_end_in_the_same_session(
    sandbox: Any, postgres_database: str, proxy: FaultProxy, processes: list[Any], delivered: bool
) -> None:
    sessions = await serve(
        sandbox,
        through(proxy, postgres_database),
        processes,
        GATEWAY_REQUEST_DEADLINE_SECONDS="3",
        GATEWAY_PROVIDER_TIMEOUT_SECONDS="2",
        GATEWAY_IDEMPOTENCY_LEASE_SECONDS="5",
    )
    proxy.blackhole_at = b"checkoutUrl"
    proxy.deliver_trigger = delivered
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        started = time.monotonic()
        async with http.post(sessions, json=order("bh"), headers=headers("bh")) as first:
            assert_store_down(first.status, await first.json(), first.headers.get("Retry-After"))
        # the commit (1 s command timeout) and giving the claim up fit the 3 s deadline
        assert time.monotonic() - started < 3.5
        proxy.heal()
        deadline = time.monotonic() + 20
        while True:
            async with http.post(sessions, json=order("bh"), headers=headers("bh")) as again:
                if again.status == 201:
                    answered = await again.read()
                    break
                assert again.status in (409, 503), await again.text()
                assert again.headers.get("Retry-After") is not None
            assert time.monotonic() < deadline, "the key never completed"
            await asyncio.sleep(0.2)
    conn = await asyncpg.connect(postgres_database)
    try:
        stored = await conn.fetchval("SELECT body FROM idempotency_keys")
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 1
    finally:
        await conn.close()
    assert bytes(stored) == answered
    assert await created(sandbox) == 1
