"""Running the gateway as a real OS process in tests: ports, environment, readiness, clean-up."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.api.conftest import JWT_SECRET, ROOT, sandbox_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gateway(
    port: int, env: dict[str, str], *, output: Path | None = None
) -> subprocess.Popen[str]:
    """``gateway serve`` on ``port``. Its stdout and stderr are pipes, or both go to the file
    ``output``: a gateway that logs a lot (e.g. an error line per request during an outage)
    would block on a full pipe nobody reads."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env = {**inherited, "GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1", **env}
    command = [sys.executable, "-m", "gateway", "serve"]
    if "PRINT" in env:
        command.append("--print-curl")
    if output is None:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    with open(output, "ab") as log:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True
        )


async def wait_ready(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("gateway did not become ready")


async def readyz_checks(port: int) -> dict[str, Any]:
    """The ``checks`` of the gateway's ``/readyz`` on ``port``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/readyz") as answer,
    ):
        checks: dict[str, Any] = (await answer.json())["checks"]
        return checks


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs, reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed process whose parent,
    e.g. init after a reparenting, has not reaped it yet is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read()
    except OSError:
        return False
    # the command name (field 2) is in parentheses and may hold spaces; the state follows it
    return fields.rsplit(")", 1)[-1].split()[0] != "Z"


def base_env(sandbox: Any) -> dict[str, str]:
    base = sandbox_url(sandbox)
    return {
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_SANDBOX_EMBEDDED": "false",
        "GATEWAY_PROVIDER_STRIPE_BASE_URL": f"{base}/stripe",
        "GATEWAY_PROVIDER_ADYEN_BASE_URL": f"{base}/adyen",
        "GATEWAY_PROVIDER_PAYPAL_BASE_URL": f"{base}/paypal",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
