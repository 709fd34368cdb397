"""The outermost layer: request id, the error envelope for every failure, and the access log."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.domain.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from gateway.metrics import HTTP_DURATION, HTTP_REQUESTS
from gateway.store.base import StoreUnavailable

__all__ = [
    "LOG_CONTEXT",
    "REQUEST_ID",
    "error_response",
    "request_context_middleware",
    "request_id_for",
]

log = logging.getLogger("gateway.access")
errors_log = logging.getLogger("gateway.errors")

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
#: handlers put provider / decision id / attempts here for the access log line
LOG_CONTEXT: web.RequestKey[dict[str, Any]] = web.RequestKey("log_context", dict)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
#: methods kept as metric label values; anything else is counted as "OTHER"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: ApiError, request_id: str) -> web.Response:
    """The JSON envelope of ``error`` as a response."""
    response = web.Response(
        status=error.status,
        body=orjson.dumps(error.body(request_id)),
        content_type="application/json",
    )
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def request_id_for(request: web.BaseRequest) -> str:
    """The client's ``X-Request-ID`` when it is well-formed, else a new random id."""
    supplied = request.headers.get("X-Request-ID")
    return supplied if supplied and _VALID_REQUEST_ID.match(supplied) else os.urandom(16).hex()


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound()
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(headers={"Allow": ", ".join(sorted(exc.allowed_methods))})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge()
    if isinstance(exc, web.HTTPUnsupportedMediaType):
        return UnsupportedMediaType()
    if 400 <= exc.status < 500:
        return BadRequest(exc.reason)
    return InternalError()


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id, turn every failure into the envelope, log one line."""
    request_id = request_id_for(request)
    request[REQUEST_ID] = request_id
    request[LOG_CONTEXT] = {}
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        declared = request.content_length
        if declared is not None and declared > request.client_max_size:
            # refused before reading: the client may be holding back a body it cannot send
            raise PayloadTooLarge()
        response = await handler(request)
    except ApiError as exc:
        if exc.status == 503:
            request[LOG_CONTEXT]["cause"] = str(exc.extra.get("reason", "unavailable")).lower()
        response = error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(_from_http_exception(exc), request_id)
    except StoreUnavailable as exc:
        request[LOG_CONTEXT]["cause"] = "store_unavailable"
        errors_log.error(
            "store unavailable", extra={"request_id": request_id, "errors": str(exc)[:300]}
        )
        response = error_response(ServiceUnavailable.store_down(), request_id)
    except web.RequestPayloadError:
        # the body's framing or Content-Encoding did not decode (aiohttp's body parser)
        response = error_response(BadRequest("Malformed request body"), request_id)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and request.transport is None:
            # the client closed its connection before sending the whole body: nobody reads
            # this answer, it is counted and logged as the client's doing, not ours
            request[LOG_CONTEXT]["cause"] = "client_disconnected"
            response = error_response(BadRequest("Request body incomplete"), request_id)
        else:
            errors_log.exception("unhandled error", extra={"request_id": request_id})
            response = error_response(InternalError(), request_id)
    response.headers["X-Request-ID"] = request_id
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    elapsed = time.perf_counter() - started
    method = request.method if request.method in _METHODS else "OTHER"
    HTTP_REQUESTS.labels(route, method, str(response.status)).inc()
    HTTP_DURATION.labels(route, method).observe(elapsed)
    fields: dict[str, Any] = {
        "request_id": request_id,
        "method": method,
        "route": route,
        "status": response.status,
        "duration_ms": round(elapsed * 1000, 3),
    }
    context: dict[str, Any] = request[LOG_CONTEXT]
    fields.update(context)
    log.info("request", extra=fields)
    return response
