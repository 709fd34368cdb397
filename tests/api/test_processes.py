"""The gateway as real OS processes: `gateway serve` (SIGTERM drains in-flight requests), the
printed curl of `make run`, and two processes sharing one Redis under a request storm."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.idempotency import session_id_for
from tests.api.conftest import JWT_SECRET, ROOT, SEED_BYTES, headers
from tests.api.test_failover import sandbox_state
from tests.api.test_retry_after_timeout import until
from tests.gateway_processes import (
    base_env,
    free_port,
    start_gateway,
    wait_ready,
)


@pytest.mark.timeout(90)
async def test_make_run_curl_creates_a_session_with_a_working_pay_page(
    processes: list[subprocess.Popen[str]],
) -> None:
    port = free_port()
    env = {"PRINT": "1", "GATEWAY_LOG_LEVEL": "WARNING"}
    proc = start_gateway(port, env)
    processes.append(proc)
    await wait_ready(port, proc)
    assert proc.stdout is not None
    printed = ""
    while "-d '" not in printed:
        printed += await asyncio.to_thread(proc.stdout.readline)
    args = shlex.split(printed[printed.index("curl") :].replace("\\\n", " "))
    completed = await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=30
    )
    assert '"status":"PENDING"' in completed.stdout, completed.stdout + completed.stderr
    url = re.search(r'"checkoutUrl":"([^"]+)"', completed.stdout)
    assert url is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(url.group(1)) as page:
            assert page.status == 200
            assert 'id="pay"' in await page.text()
        # Pay lands on the session's result page on the gateway, not on merchant.example.com
        async with http.post(f"{url.group(1)}/pay") as landed:
            assert landed.status == 200
            assert str(landed.url).startswith(f"http://127.0.0.1:{port}/demo/result?session=")
            assert 'id="status">COMPLETED<' in await landed.text()
        assert f"The demo shop: http://127.0.0.1:{port}/demo\n" in printed
        async with http.get(f"http://127.0.0.1:{port}/demo") as shop:
            assert shop.status == 200
            assert 'id="buy"' in await shop.text()


@pytest.mark.timeout(60)
async def test_sigterm_drains_in_flight_requests_then_exits_0(
    sandbox: Any, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = start_gateway(port, base_env(sandbox))
    processes.append(proc)
    await wait_ready(port, proc)
    async with aiohttp.ClientSession() as http:
        await http.post(
            str(sandbox.make_url("/sandbox/admin/faults")),
            json={"provider": "stripe", "latencyMs": 1500},
        )
        url = f"http://127.0.0.1:{port}/api/v1/sessions"
        in_flight = asyncio.create_task(http.post(url, data=SEED_BYTES, headers=headers("drain")))
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        response = await in_flight
        assert response.status == 201, await response.text()
    assert await asyncio.to_thread(proc.wait, 20) == 0


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_two_processes_sharing_redis_make_one_session(
    sandbox: Any, redis_url: str, redis_prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    ports = [free_port(), free_port()]
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
    }
    for port in ports:
        processes.append(start_gateway(port, env))
    for port, proc in zip(ports, processes, strict=True):
        await wait_ready(port, proc)
    async with aiohttp.ClientSession() as http:
        await http.post(
            str(sandbox.make_url("/sandbox/admin/faults")),
            json={"provider": "stripe", "latencyMs": 100},
        )

        async def one(i: int) -> tuple[int, str | None]:
            url = f"http://127.0.0.1:{ports[i % 2]}/api/v1/sessions"
            async with http.post(url, data=SEED_BYTES, headers=headers("two-procs")) as answer:
                body = await answer.json()
                return answer.status, body.get("sessionId")

        results = await asyncio.gather(*(one(i) for i in range(50)))
        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {201, 409}, statuses
        assert len({sid for status, sid in results if status == 201}) == 1
        stats = await (await http.get(str(sandbox.make_url("/sandbox/admin/stats")))).json()
        assert sum(stats["sessionsCreated"].values()) == 1


def test_python_dash_m_gateway_has_the_documented_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    for command in ("serve", "token", "sandbox", "rules"):
        assert command in out
    token = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--merchant", "m-9", "--scope", "sessions:read"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={**os.environ, "GATEWAY_JWT_SECRET": JWT_SECRET},
    ).stdout.strip()
    from gateway.auth import Authenticator
    from gateway.settings import Settings

    merchant = Authenticator(Settings(_env_file=None, jwt_secret=JWT_SECRET)).verify(token)  # type: ignore[call-arg]
    assert merchant.merchant_id == "m-9"
    assert merchant.scopes == {"sessions:read"}
    assert Path(ROOT / "routing_rules.yaml").is_file()


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_a_retry_after_sigkill_mid_create_gets_the_providers_session(
    sandbox: Any, redis_url: str, redis_prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    """The gateway dies (SIGKILL) while Stripe is creating the session; Stripe finishes it.
    Another process, after the dead one's lease ran out, re-sends the pinned request and gets
    Stripe's session back: one session at the provider, none elsewhere."""
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "4",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "4.5",
        "GATEWAY_IDEMPOTENCY_LEASE_SECONDS": "5",
    }
    session_id = session_id_for("merchant-1", "killed")
    state = sandbox_state(sandbox)
    first_port = free_port()
    first = start_gateway(first_port, env)
    processes.append(first)
    await wait_ready(first_port, first)
    async with aiohttp.ClientSession() as http:
        admin = str(sandbox.make_url("/sandbox/admin/faults"))
        for provider in ("adyen", "paypal"):
            await http.post(admin, json={"provider": provider, "down": True})
        await http.post(admin, json={"provider": "stripe", "processingMs": 1500})
        url = f"http://127.0.0.1:{first_port}/api/v1/sessions"
        in_flight = asyncio.create_task(http.post(url, data=SEED_BYTES, headers=headers("killed")))

        async def stripe_holds_it() -> bool:
            return bool(state.idempotency.get("stripe"))

        await until(stripe_holds_it)
        first.send_signal(signal.SIGKILL)
        with pytest.raises(aiohttp.ClientError):
            await in_flight

        async def stripe_created_it() -> bool:  # Stripe finishes on its own clock
            return bool(state.sessions.get("stripe"))

        await until(stripe_created_it)
        second_port = free_port()
        second = start_gateway(second_port, env)
        processes.append(second)
        await wait_ready(second_port, second)
        url = f"http://127.0.0.1:{second_port}/api/v1/sessions"
        for _ in range(200):  # 409 until the dead process's lease runs out
            async with http.post(url, data=SEED_BYTES, headers=headers("killed")) as answer:
                status, text = answer.status, await answer.text()
            if status != 409:
                break
            assert "still being processed" in text
            await asyncio.sleep(0.1)
        assert status == 201, text
        view_url = f"http://127.0.0.1:{second_port}/api/v1/sessions/{session_id}"
        async with http.get(view_url, headers=headers(None)) as got:
            view = await got.json()
    (held,) = [s for s in state.sessions["stripe"].values() if s.gateway_session_id == session_id]
    assert (view["provider"], view["providerSessionId"]) == ("stripe", held.id)
    assert sum(state.sessions_created.values()) == 1
