"""The runner ``gateway serve`` (through :mod:`gateway.serving`) and the tests use.

aiohttp answers some requests before any middleware runs: those its parser refuses (a bad
method, an oversized request line or header, broken framing), as ``text/plain`` quoting the
offending bytes which it also logs on ``aiohttp.server``; an ``Expect`` other than
100-continue, as text echoing the header; and a request it parsed but cannot represent
(``CONNECT`` with an empty target), with no answer at all; and a body whose framing or
``Content-Encoding`` breaks after the handler started reading it, with a handler waiting on it
until the client leaves. aiohttp has no public hook for
these (aio-libs/aiohttp#3287), so :class:`GatewayRunner` builds the server from
:class:`EnvelopeRequestHandler` and wraps the app's handler and request factory: every such
answer is the API's error envelope with an ``X-Request-ID``, logged by its kind, never its
bytes. It overrides ``AppRunner._make_server`` and reads ``Server._kwargs``: an aiohttp
upgrade must keep ``tests/api/test_hostile_bytes.py`` and the fuzz test passing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.domain.errors import (
    ApiError,
    BadRequest,
    ExpectationFailed,
    GatewayTimeout,
    InternalError,
)
from gateway.metrics import HTTP_REQUESTS
from gateway.middleware import error_response, request_id_for

__all__ = ["EnvelopeRequestHandler", "GatewayRunner"]

log = logging.getLogger("gateway.access")

_Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]
_RequestFactory = Callable[
    [
        RawRequestMessage,
        StreamReader,
        web.RequestHandler,
        AbstractStreamWriter,
        "asyncio.Task[None]",
    ],
    BaseRequest,
]

#: parser error -> what the client is told (the parser's own message quotes the request bytes)
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "Malformed request line: unknown method"),
    (http_exceptions.LineTooLong, "Request line or header too long"),
    (http_exceptions.BadStatusLine, "Malformed request line"),
    (http_exceptions.InvalidURLError, "Malformed request target"),
    (http_exceptions.InvalidHeader, "Malformed header"),
    (http_exceptions.ContentEncodingError, "Malformed request body"),
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

    def data_received(self, data: bytes) -> None:
        """aiohttp's, plus: a parser failure in the middle of a body already handed to a
        handler fails that body. aiohttp only queues the failure as a next message, so the
        handler (a broken chunk, a deflate body that ends early) would wait on the body for
        as long as the client keeps the connection open, past every read deadline."""
        queued = len(self._messages)
        reading = [payload for _, payload in self._messages]
        if self._current_request is not None:
            reading.append(self._current_request.content)
        super().data_received(data)
        failed = any(
            not isinstance(message, RawRequestMessage)
            for message, _ in list(self._messages)[queued:]
        )
        if failed:
            for payload in reading:
                if not payload.is_eof() and payload.exception() is None:
                    payload.set_exception(web.RequestPayloadError("Malformed request body"))

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
        reason = type(exc).__name__ if exc is not None else "timeout"
        response = _answer(protocol_error(status, exc), os.urandom(16).hex(), reason, exc)
        response.force_close()
        return response

    def log_exception(self, *args: object, **kwargs: Any) -> None:
        """aiohttp's log of a failure outside any handler; a body that fails to decode while
        aiohttp drains it after the answer (a handler that did not read it) is the client's
        fault: one info line, no traceback."""
        if isinstance(kwargs.get("exc_info"), web.RequestPayloadError):
            log.info("request body left unread was malformed", extra={"reason": "body"})
            return
        super().log_exception(*args, **kwargs)


def _answer(
    error: ApiError, request_id: str, reason: str, exc: BaseException | None = None
) -> web.Response:
    """The envelope for an answer aiohttp gives outside the middleware, counted and logged."""
    response = error_response(error, request_id)
    response.headers["X-Request-ID"] = request_id
    HTTP_REQUESTS.labels("unmatched", "OTHER", str(error.status)).inc()
    fields = {
        "request_id": request_id,
        "method": "OTHER",
        "route": "unmatched",
        "status": error.status,
        "reason": reason,
    }
    if error.status >= 500:
        # a failure outside the middleware is aiohttp's or ours: keep its traceback
        log.error("request failed in the HTTP server", extra=fields, exc_info=exc)
    else:
        log.info("request refused by the HTTP server", extra=fields)
    return response


#: stands in for a request aiohttp parsed but cannot represent (``CONNECT`` with an empty
#: target has no URL, and building its request object raises outside any handler)
_UNREPRESENTABLE = RawRequestMessage(
    "GET",
    "/",
    HttpVersion11,
    CIMultiDictProxy(CIMultiDict()),
    (),
    True,
    None,
    False,
    False,
    URL("/"),
)
_MALFORMED: web.RequestKey[bool] = web.RequestKey("gateway_malformed", bool)


def _tolerant(factory: _RequestFactory) -> _RequestFactory:
    """``factory``, with a request it cannot build replaced by a stand-in marked malformed."""

    def make(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        try:
            return factory(message, payload, protocol, writer, task)
        except Exception:  # aiohttp would drop the connection without an answer
            request = factory(_UNREPRESENTABLE, payload, protocol, writer, task)
            request[_MALFORMED] = True
            return request

    return make


def _before_the_app(handler: _Handler) -> _Handler:
    """``handler`` behind the checks aiohttp makes before any middleware runs.

    An ``Expect`` other than 100-continue would get aiohttp's text answer echoing the
    header (a 500 when it holds undecodable bytes); here it is a 417 in the envelope. A
    request :func:`_tolerant` stood in for is a 400.
    """

    async def handle(request: BaseRequest) -> web.StreamResponse:
        if request.get(_MALFORMED):
            response = _answer(BadRequest("Malformed request line"), os.urandom(16).hex(), "URL")
        else:
            expect = request.headers.get("Expect")
            if expect is None or expect.lower() == "100-continue":
                return await handler(request)
            response = _answer(ExpectationFailed(), request_id_for(request), "Expect")
        response.force_close()  # the client may be holding its body back
        return response

    return handle


class _EnvelopeServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer protocol errors in the envelope."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _EnvelopeServer(
            _before_the_app(server.request_handler),
            request_factory=_tolerant(server.request_factory),
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )
