"""``/api/v1/sessions``: create (idempotent), read, find by orderReference and cancel checkout
sessions."""

from __future__ import annotations

import uuid

from aiohttp import web
from pydantic import ValidationError

from gateway.api.bodies import json_response, read_checkout_request, require_json
from gateway.api.payments import cancel_with_key
from gateway.api.session_query import encode_cursor, parse_session_query
from gateway.appkeys import LIFECYCLE, MERCHANTS, RATE_LIMITS, RETURN_WAITERS, SERVICES, SETTINGS
from gateway.auth import require
from gateway.domain.errors import ApiError, BadRequest, NotFound
from gateway.domain.models import CancelRequest, describe_errors
from gateway.domain.session import SessionStatus
from gateway.idempotency import validate_idempotency_key
from gateway.middleware import LOG_CONTEXT, REQUEST_ID
from gateway.ratelimit import RateLimit, enforce
from gateway.sessions import SessionService

__all__ = ["setup_session_routes"]


async def _merchant_limit(request: web.Request, merchant_id: str) -> None:
    """429 with Retry-After when the merchant is over its rate limit (``merchants.yaml``)."""
    limit = request.app[MERCHANTS].rate_limit_for(merchant_id)
    await enforce(request.app[RATE_LIMITS], "merchant", merchant_id, limit)


async def create_session(request: web.Request) -> web.Response:
    """``POST /api/v1/sessions``."""
    merchant = await require(request, "sessions:write")
    context = request[LOG_CONTEXT]
    context["merchant"] = merchant.merchant_id
    await _merchant_limit(request, merchant.merchant_id)
    require_json(request)
    key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
    checkout = await read_checkout_request(request)
    service: SessionService = request.app[SERVICES]
    try:
        outcome = await service.create(merchant, key, checkout, request_id=request[REQUEST_ID])
    except ApiError as exc:  # 502/504 name the decision and its attempts: log them too
        details = exc.details if isinstance(exc.details, dict) else {}
        if isinstance(details.get("decisionId"), str):
            context["decision_id"] = details["decisionId"]
        if isinstance(details.get("attempts"), list):
            context["attempts"] = len(details["attempts"])
        raise
    response = web.Response(
        status=outcome.status, body=outcome.body, content_type="application/json"
    )
    if outcome.location:
        response.headers["Location"] = outcome.location
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
        context["replayed"] = True
    context.update(
        {
            k: v
            for k, v in (
                ("provider", outcome.provider),
                ("decision_id", outcome.decision_id),
                ("attempts", outcome.attempts or None),
            )
            if v is not None
        }
    )
    return response


def _session_id(request: web.Request) -> str:
    """The path's session id; anything but a UUID is an unknown session (404)."""
    session_id = request.match_info["sessionId"]
    try:
        uuid.UUID(session_id)
    except ValueError:
        raise NotFound("Session not found") from None
    return session_id


async def get_session(request: web.Request) -> web.Response:
    """``GET /api/v1/sessions/{sessionId}``."""
    merchant = await require(request, "sessions:read")
    request[LOG_CONTEXT]["merchant"] = merchant.merchant_id
    await _merchant_limit(request, merchant.merchant_id)
    session_id = _session_id(request)
    service: SessionService = request.app[SERVICES]
    record = await service.get(merchant, session_id)
    if record is None:
        raise NotFound("Session not found")
    return json_response(record.public())


async def find_sessions(request: web.Request) -> web.Response:
    """``GET /api/v1/sessions?orderReference=...``: the merchant's sessions of an order, newest
    first, a page at a time (``limit``, ``cursor``)."""
    merchant = await require(request, "sessions:read")
    request[LOG_CONTEXT]["merchant"] = merchant.merchant_id
    await _merchant_limit(request, merchant.merchant_id)
    query = parse_session_query(request.query)
    service: SessionService = request.app[SERVICES]
    page, more = await service.find(
        merchant, query.orderReference, limit=query.limit, before=query.before
    )
    next_cursor = encode_cursor(page[-1]) if more and page else None
    return json_response({"data": [r.public() for r in page], "nextCursor": next_cursor})


async def cancel_session(request: web.Request) -> web.Response:
    """``POST /api/v1/sessions/{sessionId}/cancel``: cancel at the provider, then locally (an
    AUTHORIZED session's authorization is voided); an ``Idempotency-Key`` is optional here."""
    merchant = await require(request, "sessions:write")
    request[LOG_CONTEXT]["merchant"] = merchant.merchant_id
    await _merchant_limit(request, merchant.merchant_id)
    require_json(request)
    session_id = _session_id(request)
    try:
        body = CancelRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        raise BadRequest(describe_errors(exc)) from None
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        key = validate_idempotency_key(key)
        return await cancel_with_key(
            request, merchant.merchant_id, session_id, key, body.cancellationReason
        )
    record = await request.app[LIFECYCLE].cancel(
        merchant.merchant_id, session_id, body.cancellationReason
    )
    request[LOG_CONTEXT]["provider"] = record.provider
    # a void the provider accepted for later: its webhook moves the session to CANCELLED
    accepted = record.status is SessionStatus.AUTHORIZED
    return json_response(record.public(), status=202 if accepted else 200)


async def return_from_provider(request: web.Request) -> web.Response:
    """``GET /api/v1/sessions/{sessionId}/return``: the customer back from the provider's page
    (unauthenticated: it only redirects, and only with the provider's own session id)."""
    settings = request.app[SETTINGS]
    limit = RateLimit(settings.return_page_rate_per_second, settings.return_page_burst)
    await enforce(request.app[RATE_LIMITS], "return_page", "*", limit)
    session_id = _session_id(request)
    provider_session_id = request.query.get("sessionId", "")
    service: SessionService = request.app[SERVICES]
    waiters = request.app[RETURN_WAITERS]
    if waiters.locked():  # as many pages as allowed are waiting: answer from the state now
        target = await service.returning(session_id, provider_session_id, wait=False)
    else:
        async with waiters:
            target = await service.returning(session_id, provider_session_id)
    if target is None:
        raise NotFound("Session not found")
    return web.Response(status=303, headers={"Location": target})


def setup_session_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/sessions", create_session)
    app.router.add_get("/api/v1/sessions", find_sessions)
    app.router.add_get("/api/v1/sessions/{sessionId}", get_session)
    app.router.add_post("/api/v1/sessions/{sessionId}/cancel", cancel_session)
    app.router.add_get("/api/v1/sessions/{sessionId}/return", return_from_provider)
