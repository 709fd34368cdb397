"""A create load for crash and outage tests against real gateway processes: concurrent
clients POST checkout sessions, each with an Idempotency-Key and orderReference of its own,
and every answer is kept (status, body, Retry-After, when it started, how long it took) so
the test can check afterwards what was acknowledged and replay every key."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tests.api.conftest import SEED_BYTES, headers

#: how many creates are in flight at any time
CLIENTS = 6


@dataclass(frozen=True)
class Answer:
    """One HTTP answer to a create (``status`` 0: the connection failed, no answer)."""

    key: str
    status: int
    body: bytes
    retry_after: str | None
    started: float
    elapsed: float


def order_body(key: str) -> bytes:
    """The seed request with an orderReference of ``key``'s own."""
    return SEED_BYTES.replace(b"ORD-2024-001", f"ORD-{key}".encode())


async def post_create(http: aiohttp.ClientSession, url: str, key: str) -> Answer:
    """POST one create for ``key`` (a new connection each time, so a dead worker's kept-alive
    connection is never reused); a connection error is status 0."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with http.post(
            url, data=order_body(key), headers={**headers(key), "Connection": "close"}
        ) as answer:
            body = await answer.read()
            return Answer(
                key,
                answer.status,
                body,
                answer.headers.get("Retry-After"),
                started,
                loop.time() - started,
            )
    except (aiohttp.ClientError, TimeoutError):
        return Answer(key, 0, b"", None, started, loop.time() - started)


@dataclass
class CreateLoad:
    """``CLIENTS`` loops POSTing new keys to ``url()`` until :meth:`stop`."""

    url: Callable[[], str]
    prefix: str
    answers: list[Answer] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def start(self, http: aiohttp.ClientSession) -> None:
        """Start the client loops."""
        self._tasks = [asyncio.create_task(self._client(http)) for _ in range(CLIENTS)]

    async def _client(self, http: aiohttp.ClientSession) -> None:
        while not self._stopping.is_set():
            key = f"{self.prefix}-{next(self._numbers)}"
            self.answers.append(await post_create(http, self.url(), key))

    async def stop(self) -> None:
        """Let every client finish the create it has in flight, then return."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    def count(self, status: int) -> int:
        """How many answers so far had ``status``."""
        return sum(1 for a in self.answers if a.status == status)

    async def until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait while the load runs until ``condition()`` holds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                statuses = sorted({a.status for a in self.answers})
                raise AssertionError(f"load condition not reached; statuses so far {statuses}")
            await asyncio.sleep(0.02)

    def keys(self) -> list[str]:
        """Every key a create was sent for, in order of first answer."""
        return list(dict.fromkeys(a.key for a in self.answers))

    def acknowledged(self) -> dict[str, bytes]:
        """Each key answered 201, with the body of that answer."""
        return {a.key: a.body for a in self.answers if a.status == 201}


async def settle(
    http: aiohttp.ClientSession, url: str, key: str, *, timeout: float = 20.0
) -> Answer:
    """Retry ``key``'s create until the answer is final: 409 (another attempt holds the key,
    e.g. a dead process's lease) and 503 are retried; a key still open after ``timeout``
    seconds is stuck, and fails the test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await post_create(http, url, key)
        if answer.status not in (0, 409, 503):
            return answer
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"key {key} is still open: {answer.status} {answer.body!r}")
        await asyncio.sleep(0.2)
