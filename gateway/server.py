"""Serving the app: the runner ``gateway serve`` (and the tests) use, and its serve loop.

aiohttp answers requests its parser refuses (a bad method, an oversized request line or
header, broken framing) before any middleware runs, as ``text/plain`` echoing the offending
bytes, and logs those bytes on ``aiohttp.server``. aiohttp has no public hook for that answer
(aio-libs/aiohttp#3287), so :class:`GatewayRunner` builds its connections from
:class:`EnvelopeRequestHandler`, which answers in the API's error envelope with an
``X-Request-ID`` and logs only the kind of error, never the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable

from aiohttp import http_exceptions, web
from aiohttp.web_request import BaseRequest

from gateway.domain.errors import ApiError, BadRequest, GatewayTimeout, InternalError
from gateway.metrics import HTTP_REQUESTS
from gateway.middleware import error_response

__all__ = ["EnvelopeRequestHandler", "GatewayRunner", "serve"]

log = logging.getLogger("gateway.access")

#: parser error -> what the client is told (the parser's own message quotes the request bytes)
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "Malformed request line: unknown method"),
    (http_exceptions.LineTooLong, "Request line or header too long"),
    (http_exceptions.BadStatusLine, "Malformed request line"),
    (http_exceptions.InvalidURLError, "Malformed request target"),
    (http_exceptions.InvalidHeader, "Malformed header"),
)


#: the parser's own reason ("Invalid header value char", "Duplicate Content-Length") is the
#: static text before the first colon; anything else (quotes, bytes) is not repeated
_STATIC_REASON = re.compile(r"[A-Za-z][A-Za-z0-9 -]{2,60}")


def protocol_error(status: int, exc: BaseException | None) -> ApiError:
    """The envelope error for a failure aiohttp reports outside the middleware."""
    if status == 504:
        return GatewayTimeout()
    if status >= 500:
        return InternalError()
    for kind, message in _REASONS:
        if isinstance(exc, kind):
            return BadRequest(message)
    if isinstance(exc, http_exceptions.HttpProcessingError):
        reason = exc.message.partition("\n")[0].partition(":")[0].strip()
        if _STATIC_REASON.fullmatch(reason):
            return BadRequest(f"Malformed HTTP request: {reason}")
    return BadRequest("Malformed HTTP request")


class EnvelopeRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with its own error answers in the envelope."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer ``status`` in the envelope and close; log the error's kind only."""
        if request.writer.output_size > 0:
            # part of an answer is on the wire already: only closing is left (as aiohttp does)
            raise ConnectionError("response already started; closing the connection")
        error = protocol_error(status, exc)
        request_id = os.urandom(16).hex()
        response = error_response(error, request_id)
        response.headers["X-Request-ID"] = request_id
        response.force_close()
        HTTP_REQUESTS.labels("unmatched", "OTHER", str(error.status)).inc()
        fields = {
            "request_id": request_id,
            "method": "OTHER",
            "route": "unmatched",
            "status": error.status,
            "reason": type(exc).__name__ if exc is not None else "timeout",
        }
        if error.status >= 500:
            log.error("request failed in the HTTP server", extra=fields)
        else:
            log.info("request refused by the HTTP parser", extra=fields)
        return response


class _EnvelopeServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer protocol errors in the envelope."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _EnvelopeServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )


async def _serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    shutdown_timeout: float,
    on_listening: Callable[[], None],
) -> None:
    runner = GatewayRunner(
        app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        on_listening()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    shutdown_timeout: float,
    on_listening: Callable[[], None],
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully (like ``web.run_app``)."""
    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(
            _serve(
                app,
                host=host,
                port=port,
                reuse_port=reuse_port,
                shutdown_timeout=shutdown_timeout,
                on_listening=on_listening,
            )
        )
