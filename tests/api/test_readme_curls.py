"""The README's shell examples after the checkout (capture, refunds, void, setup and
next_in_series) run as written against a real ``gateway serve`` set up as `make run` sets it up
(sandbox mode, embedded sandbox, memory store, the development JWT secret, the default routing
rules), in one bash session, so the variables one block sets serve the next.

Only the address changes (the test's own port). A comment line asking to press Pay (or Save) on
the checkout page is done by the test: it posts that button's form, as the browser does."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import ROOT
from tests.gateway_processes import free_port, start_gateway, wait_ready

pytestmark = pytest.mark.timeout(90)

README = (ROOT / "README.md").read_text()
#: the README sections whose ``sh`` blocks run here, in README order
SECTIONS = [
    ("### `POST /api/v1/sessions/{sessionId}/capture`", "### Errors"),
    ("### Capture and void", "### Expiry"),
    ("### Session types", "## Providers and going live"),
]
END = "__readme_block_done__"


def shell_blocks(start: str, end: str) -> list[str]:
    """The ``sh`` code blocks of the README between the headings ``start`` and ``end``."""
    section = README[README.index(start) : README.index(end, README.index(start))]
    parts = section.split("```sh\n")[1:]
    return [part.split("```", 1)[0] for part in parts]


def json_documents(text: str) -> list[Any]:
    """Every JSON object printed in ``text`` (curl prints no newline after a body)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    at = text.find("{")
    while at != -1:
        try:
            value, after = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at = text.find("{", at + 1)
            continue
        found.append(value)
        at = text.find("{", after)
    return found


class Shell:
    """One bash process fed block by block (its variables persist between blocks)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def run(self, script: str) -> str:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{script}\necho; echo {END}\n".encode())
        await self.process.stdin.drain()
        lines: list[str] = []
        while True:
            line = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode()
            assert line, "bash exited: " + "".join(lines)
            if line.strip() == END:
                return "".join(lines)
            lines.append(line)


@pytest.fixture
async def make_run(processes: list[subprocess.Popen[str]]) -> AsyncIterator[tuple[str, Shell]]:
    """A gateway as `make run` starts it, and a bash in the repository with its environment
    that ran the curl the gateway printed first (as the Quick start does)."""
    port = free_port()
    gateway = start_gateway(port, {"PRINT": "1", "GATEWAY_LOG_LEVEL": "WARNING"})
    processes.append(gateway)
    await wait_ready(port, gateway)
    assert gateway.stdout is not None
    printed = ""
    while "-d '" not in printed:
        printed += await asyncio.to_thread(gateway.stdout.readline)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    bash = await asyncio.create_subprocess_exec(
        "bash",
        "--noprofile",
        "--norc",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    shell = Shell(bash)
    try:
        quick_start = json_documents(await shell.run(printed[printed.index("curl") :]))
        assert quick_start[-1]["status"] == "PENDING", quick_start
        yield f"http://127.0.0.1:{port}", shell
    finally:
        if bash.returncode is None:
            bash.kill()
        await bash.wait()


async def read_until(http: aiohttp.ClientSession, url: str, token: str, status: str) -> Any:
    """The session at ``url`` once it reads ``status`` (a provider's webhook may move it)."""
    for _ in range(100):
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as answer:
            view = await answer.json()
        if view["status"] == status:
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} reads {view['status']}, not {status}")


async def test_the_after_checkout_examples_work_against_make_run(
    make_run: tuple[str, Shell],
) -> None:
    base, shell = make_run
    blocks = [block for start, end in SECTIONS for block in shell_blocks(start, end)]
    # capture, refund, list refunds, void, setup, next_in_series
    assert len(blocks) == 6
    answers: list[list[Any]] = []  # the JSON each command printed, block by block
    async with aiohttp.ClientSession() as http:
        for block in blocks:
            block = block.replace("http://127.0.0.1:8080", base).replace(
                ".venv/bin/gateway", f"{shlex.quote(sys.executable)} -m gateway"
            )
            printed: list[Any] = []
            for chunk in _chunks(block):
                if chunk.startswith("#"):
                    # Pay authorizes a manual-capture session; Save completes a setup session
                    assert "press Pay" in chunk or "press Save" in chunk, chunk
                    created = printed[-1]
                    assert "checkoutUrl" in created, created
                    async with http.post(
                        f"{created['checkoutUrl']}/pay", allow_redirects=False
                    ) as pressed:
                        assert pressed.status == 303
                    token = (await shell.run('printf %s "$TOKEN"')).strip()
                    session = f"{base}/api/v1/sessions/{created['sessionId']}"
                    paid = "COMPLETED" if "press Save" in chunk else "AUTHORIZED"
                    await read_until(http, session, token, paid)
                    continue
                output = await shell.run(chunk)
                documents = json_documents(output)
                assert documents, output
                printed.extend(documents)
            answers.append(printed)
        token = (await shell.run('printf %s "$TOKEN"')).strip()

        created, captured = answers[0]
        assert (created["status"], created["checkoutUrl"] is not None) == ("PENDING", True)
        session = f"{base}/api/v1/sessions/{created['sessionId']}"
        # captured at once (200), or accepted by Adyen (202) and completed by its webhook
        assert captured["status"] in ("COMPLETED", "AUTHORIZED"), captured
        view = await read_until(http, session, token, "COMPLETED")
        assert view["amountCaptured"] == "100.00"

        [refund] = answers[1]
        assert (refund["sessionId"], refund["amount"]) == (created["sessionId"], "40.00")
        assert refund["status"] in ("PENDING", "SUCCEEDED"), refund
        [listed] = answers[2]
        assert [r["refundId"] for r in listed["data"]] == [refund["refundId"]]

        created, voided = answers[3]
        assert created["status"] == "PENDING"
        assert voided["status"] in ("CANCELLED", "AUTHORIZED"), voided  # Adyen: 202
        view = await read_until(
            http, f"{base}/api/v1/sessions/{created['sessionId']}", token, "CANCELLED"
        )
        assert view["cancellationReason"] == "requested_by_customer"

        [setup] = answers[4]
        assert setup["status"] == "PENDING"
        [charged] = answers[5]
        assert (charged["checkoutUrl"], charged["status"]) == (None, "COMPLETED"), charged
        async with http.get(
            f"{base}/api/v1/sessions/{charged['sessionId']}",
            headers={"Authorization": f"Bearer {token}"},
        ) as answer:
            view = await answer.json()
        assert view["mandateSessionId"] == setup["sessionId"]
        assert view["paymentMethodId"]


def _chunks(block: str) -> list[str]:
    """The block split at its comment lines: commands, comment, commands, ..."""
    chunks: list[str] = []
    commands: list[str] = []
    for line in block.splitlines():
        if line.startswith("#"):
            if commands:
                chunks.append("\n".join(commands))
                commands = []
            chunks.append(line)
        else:
            commands.append(line)
    if commands:
        chunks.append("\n".join(commands))
    return chunks
