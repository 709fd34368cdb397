"""Running the HTTP server with read deadlines on every connection.

aiohttp closes a connection that stays idle between requests (``keepalive_timeout``) but puts
no bound on how long a client may take to send a request it has started: a client trickling
one header byte a second, or one body byte a second, holds its connection (and a file
descriptor) for as long as it likes. :class:`GuardedRequestHandler` adds the two missing
deadlines, per connection:

- idle: no byte of a next request ``keepalive_timeout_seconds`` after the connection opened or
  the previous response went out: closed (aiohttp's own keep-alive timer);
- head: the request line and headers are not complete ``request_header_timeout_seconds``
  after their first byte: closed;
- body: the body is not complete ``request_body_timeout_seconds`` after the head: closed, and
  a handler waiting on it gets :class:`~gateway.domain.errors.RequestTimeout` (408).

A cut connection is counted in ``gateway_connections_cut_total{phase}``. After the body, the
request deadline (``request_deadline_seconds``) bounds the gateway's own work.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader

from gateway.domain.errors import RequestTimeout
from gateway.metrics import CONNECTIONS_CUT
from gateway.server import EnvelopeRequestHandler, GatewayRunner
from gateway.settings import Settings

__all__ = ["GuardedRequestHandler", "ReadLimits", "run_server"]

log = logging.getLogger("gateway.serving")


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How long a client may take to send a request (seconds)."""

    keepalive_s: float
    header_s: float
    body_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadLimits:
        return cls(
            keepalive_s=settings.keepalive_timeout_seconds,
            header_s=settings.request_header_timeout_seconds,
            body_s=settings.request_body_timeout_seconds,
        )


class GuardedRequestHandler(EnvelopeRequestHandler):
    """The envelope-answering connection protocol (:mod:`gateway.server`) with a deadline on
    reading each request's head and body."""

    def __init__(self, manager: web.Server, *, limits: ReadLimits, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=limits.keepalive_s, **kwargs)
        self._limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        #: the body being received, while it is incomplete
        self._body: StreamReader | None = None

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if self.transport is None or self._force_close:
            return
        if len(self._messages) > queued:  # a request head completed
            payload = self._messages[-1][1]
            self._disarm()
            if not payload.is_eof():
                self._body = payload
                self._arm(self._limits.body_s, "body")
            return
        if self._body is not None:
            if self._body.is_eof():
                self._body = None
                self._disarm()
            return
        if data and self._deadline is None:
            # the first bytes of a request head: the head deadline replaces the idle timer
            # (keep_alive() cancels that timer; the current keep-alive decision stays)
            self.keep_alive(self._keepalive)
            self._arm(self._limits.header_s, "header")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._body = None
        super().connection_lost(exc)

    def _arm(self, seconds: float, phase: str) -> None:
        self._deadline = self._loop.call_later(seconds, self._expire, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, phase: str) -> None:
        self._deadline = None
        if self.transport is None:
            return
        CONNECTIONS_CUT.labels(phase).inc()
        log.warning("closing a connection: the request %s was not received in time", phase)
        if self._body is not None and self._current_request is not None:
            # the handler may be waiting on the body: it answers 408 (to no one), not a 500
            self._body.set_exception(RequestTimeout())
        self._body = None
        self.force_close()


class _GuardedSite(web.TCPSite):
    """A TCP site whose connections are :class:`GuardedRequestHandler` s."""

    def __init__(self, runner: web.AppRunner, limits: ReadLimits, **kwargs: Any) -> None:
        super().__init__(runner, **kwargs)
        self._limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        limits = self._limits

        kwargs = {k: v for k, v in server._kwargs.items() if k != "keepalive_timeout"}
        kwargs["access_log"] = None

        def protocol() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, limits=limits, loop=loop, **kwargs)

        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


async def _serve(
    app: web.Application, settings: Settings, *, reuse_port: bool, announce: Callable[[], None]
) -> None:
    runner = GatewayRunner(
        app, access_log=None, shutdown_timeout=settings.request_deadline_seconds + 5
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()
    try:
        site = _GuardedSite(
            runner,
            ReadLimits.from_settings(settings),
            host=settings.host,
            port=settings.port,
            reuse_port=reuse_port,
        )
        await site.start()
        announce()
        await stop.wait()
    finally:
        # stop listening, let in-flight requests finish (up to shutdown_timeout), clean up
        await runner.cleanup()


def run_server(
    app: web.Application, settings: Settings, *, reuse_port: bool, announce: Callable[[], None]
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain in-flight requests and clean up."""
    asyncio.run(_serve(app, settings, reuse_port=reuse_port, announce=announce))
