"""`gateway serve --workers N` replaces a worker that dies, and /readyz tells while it is short."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import ROOT, SEED_BYTES, headers
from tests.gateway_processes import base_env, free_port, stop_process, wait_ready


@pytest.fixture
def supervisor(
    sandbox: Any, redis_url: str, redis_prefix: str
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env = {
        **inherited,
        **base_env(sandbox),
        "GATEWAY_PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    stop_process(proc)


async def _workers(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    """/readyz's workers check, on a new connection each time (SO_REUSEPORT spreads new
    connections over the workers). A connection the kernel had queued for the worker that was
    just killed is refused or reset: that poll is repeated."""
    while True:
        try:
            async with http.get(
                f"http://127.0.0.1:{port}/readyz", headers={"Connection": "close"}
            ) as answer:
                return answer.status, (await answer.json())["checks"]["workers"]
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_a_killed_worker_is_replaced_and_the_replacement_serves(
    supervisor: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = supervisor
    await wait_ready(port, proc, timeout=60)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        status, workers = await _workers(http, port)
        assert status == 200
        assert (workers["expected"], workers["alive"], workers["restarts"]) == (2, 2, 0)
        victim, survivor = workers["pids"]
        os.kill(victim, signal.SIGKILL)

        # the survivor tells the truth while the slot is empty, then the slot is refilled
        deadline = loop.time() + 60
        while True:
            assert loop.time() < deadline, "the dead worker was not replaced"
            status, workers = await _workers(http, port)
            if workers["alive"] < 2:
                assert status == 503
            elif workers["restarts"] == 1:
                break
            await asyncio.sleep(0.05)
        assert victim not in workers["pids"]
        assert survivor in workers["pids"]
        replacement = next(pid for pid in workers["pids"] if pid != survivor)

        # the replacement itself answers requests (connections land on both workers)
        answered_by: set[int] = set()
        deadline = loop.time() + 60
        while replacement not in answered_by:
            assert loop.time() < deadline, f"the replacement never answered: {answered_by}"
            status, workers = await _workers(http, port)
            if status == 200:
                answered_by.add(workers["answeredBy"])
        assert status == 200
        # and checkouts work again through the whole instance
        for i in range(6):
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/sessions",
                data=SEED_BYTES.replace(b"ORD-2024-001", f"ORD-W-{i}".encode()),
                headers={**headers(f"workers-{i}"), "Connection": "close"},
            ) as created:
                assert created.status == 201, await created.text()
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert f"(pid {victim}) died with exit code -9" in log


def test_a_worker_that_keeps_dying_is_restarted_with_a_growing_back_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import multiprocessing
    import threading

    from gateway.supervisor import Supervisor, read_worker_state

    ctx = multiprocessing.get_context("spawn")
    state_path = tmp_path / "workers.json"
    supervisor = Supervisor(1, lambda _i: ctx.Process(target=sys.exit, args=(3,)), state_path)
    stopper = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGTERM))
    stopper.start()
    caplog.set_level(logging.INFO, logger="gateway.supervisor")
    try:
        assert supervisor.run() in (0, 3)
    finally:
        stopper.cancel()
    delays = re.findall(r"exit code 3 after [\d.]+ s; restarting it in ([\d.]+) s", caplog.text)
    assert len(delays) >= 2
    assert delays == ["0.5", "1.0", "2.0", "4.0", "8.0"][: len(delays)]
    state = read_worker_state(state_path)
    assert state is not None
    assert state.expected == 1
    assert state.restarts == len(delays) - (state.alive == 0)
