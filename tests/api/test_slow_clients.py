"""A real `gateway serve` process cuts off clients that trickle a request or sit idle.

Each client below would hold its connection for far longer than the configured timeout (a byte
every 0.3 s for 30 s); the server must close it within the timeout plus a scheduling margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.gateway_processes import base_env, free_port, start_gateway, stop_process, wait_ready

TIMEOUT_S = 2.0
#: scheduling slack on a loaded machine; the trickles below last 30 s
MARGIN_S = 3.0


@pytest.fixture
async def gateway_port(sandbox: object) -> AsyncIterator[int]:
    port = free_port()
    env = {
        **base_env(sandbox),
        "GATEWAY_KEEPALIVE_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "GATEWAY_REQUEST_HEADER_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "GATEWAY_REQUEST_BODY_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "GATEWAY_LOG_LEVEL": "INFO",
    }
    proc: subprocess.Popen[str] = start_gateway(port, env)
    try:
        await wait_ready(port, proc)
        yield port
    finally:
        stop_process(proc)


async def _trickle_until_closed(port: int, opening: bytes, trickle: bytes) -> tuple[float, bytes]:
    """Send ``opening`` at once, then ``trickle`` one byte every 0.3 s; seconds until the
    server closed the connection (measured from the end of ``opening``) and what it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(opening)
        await writer.drain()
        started = time.monotonic()

        async def read_all() -> None:
            nonlocal received
            while chunk := await reader.read(4096):
                received += chunk

        reading = asyncio.create_task(read_all())
        for byte in trickle:
            if reading.done():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait({reading}, timeout=0.3)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reading, timeout=5)
        return time.monotonic() - started, received
    finally:
        writer.close()


@pytest.mark.timeout(60)
async def test_a_client_trickling_its_headers_is_cut_off(gateway_port: int) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + b"X-Slow: " + b"a" * 100
    elapsed, received = await _trickle_until_closed(gateway_port, b"G", head[1:])
    assert elapsed < TIMEOUT_S + MARGIN_S, elapsed
    assert received == b""  # never answered: the request never arrived


@pytest.mark.timeout(60)
async def test_a_client_trickling_its_body_is_cut_off(gateway_port: int) -> None:
    head = (
        b"POST /api/v1/webhooks/stripe HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    elapsed, received = await _trickle_until_closed(gateway_port, head, b"{" * 100)
    assert elapsed < TIMEOUT_S + MARGIN_S, elapsed
    assert b"HTTP/1.1 2" not in received


@pytest.mark.timeout(60)
async def test_an_idle_keep_alive_connection_is_closed(gateway_port: int) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    try:
        writer.write(request)
        await writer.drain()
        first = await reader.readuntil(b'{"status":"ok"}')
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), timeout=TIMEOUT_S + MARGIN_S)
        assert rest == b""  # EOF: the server closed the idle connection
        assert time.monotonic() - started >= TIMEOUT_S - 0.5
    finally:
        writer.close()


@pytest.mark.timeout(60)
async def test_a_connection_that_never_sends_a_byte_is_closed(gateway_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    try:
        rest = await asyncio.wait_for(reader.read(), timeout=TIMEOUT_S + MARGIN_S)
        assert rest == b""
    finally:
        writer.close()


@pytest.mark.timeout(60)
async def test_a_slow_but_steady_client_within_the_timeouts_is_served(gateway_port: int) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    try:
        for part in (head[:10], head[10:25], head[25:]):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.4)
        answer = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), timeout=5)
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


@pytest.mark.timeout(90)
async def test_many_trickling_clients_do_not_keep_the_gateway_from_answering(
    gateway_port: int,
) -> None:
    # 300 such connections exhausted the file descriptors of a gateway without read deadlines
    opened = [await asyncio.open_connection("127.0.0.1", gateway_port) for _ in range(300)]
    try:
        for _, writer in opened:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: g\r\nX-Slow: a")
        await asyncio.sleep(TIMEOUT_S + MARGIN_S)
        closed = 0
        for reader, _ in opened:
            try:
                closed += await asyncio.wait_for(reader.read(), timeout=1) == b""
            except ConnectionError:
                closed += 1
            except TimeoutError:
                pass
        assert closed == len(opened)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{gateway_port}/healthz") as answer:
                assert answer.status == 200
            async with http.get(f"http://127.0.0.1:{gateway_port}/metrics") as answer:
                metrics = await answer.text()
        cut = re.search(r'^gateway_connections_cut_total\{phase="header"\} (\S+)$', metrics, re.M)
        assert cut is not None
        assert float(cut.group(1)) >= len(opened)
    finally:
        for _, writer in opened:
            writer.close()


@pytest.mark.timeout(60)
async def test_a_client_leaving_mid_body_is_its_fault_not_a_server_error(sandbox: object) -> None:
    port = free_port()
    proc = start_gateway(port, {**base_env(sandbox), "GATEWAY_LOG_LEVEL": "INFO"})
    try:
        await wait_ready(port, proc)
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/v1/webhooks/stripe HTTP/1.1\r\nHost: g\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()  # gone with 99 bytes of the body unsent
        await asyncio.sleep(0.5)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as answer,
        ):
            metrics = await answer.text()
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert re.search(r'^gateway_http_requests_total\{.*status="400"', metrics, re.M)
    assert 'status="500"' not in metrics
    assert "unhandled error" not in stderr
    assert stderr.count('"cause":"client_disconnected"') == 3
