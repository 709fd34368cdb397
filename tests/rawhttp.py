"""Raw HTTP/1.1 over a real socket: send bytes no HTTP client would, read the answer as sent."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

__all__ = ["RawResponse", "exchange", "read_answer", "request_bytes"]


@dataclass(frozen=True)
class RawResponse:
    """A parsed answer: status, headers (names lower-cased), body."""

    status: int
    headers: dict[str, str]
    body: bytes


def request_bytes(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    """A request with ``Content-Length`` and ``Connection: close`` added, bytes as given."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: gateway"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def exchange(host: str, port: int, raw: bytes, timeout: float = 5.0) -> RawResponse:
    """Write ``raw`` and read the first final answer; TimeoutError when none comes in time."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        # the server may answer and close before reading everything: the answer is still there
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await asyncio.wait_for(read_answer(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> RawResponse:
    """The first final answer on ``reader`` (interim 1xx answers skipped)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise AssertionError(f"not an HTTP answer: {head[:200]!r}")
        status = int(parts[1])
        if status >= 200:
            break  # skip interim answers (100 Continue)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return RawResponse(status, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return out
        out += await reader.readexactly(size)
        await reader.readexactly(2)
