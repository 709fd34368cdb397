"""The calls after the checkout, on one session:

- ``POST /api/v1/sessions/{id}/capture`` (sessions:write): capture an AUTHORIZED session,
  all of it or less (:mod:`gateway.captures`); ``Idempotency-Key`` required
- ``POST /api/v1/sessions/{id}/refunds`` (refunds:write): refund captured money
  (:mod:`gateway.refunds`); ``Idempotency-Key`` required
- ``GET  /api/v1/sessions/{id}/refunds`` (sessions:read): the session's refunds
- ``POST /api/v1/sessions/{id}/cancel`` with an ``Idempotency-Key``: :func:`cancel_with_key`
  (the route is :mod:`gateway.api.sessions`'; it voids an AUTHORIZED session)

Keys follow :mod:`gateway.operation_keys`: a replay answers the stored answer with
``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import orjson
from aiohttp import web

from gateway.api.bodies import json_response, read_model
from gateway.appkeys import LIFECYCLE, MERCHANTS, RATE_LIMITS
from gateway.auth import require
from gateway.captures import Captures
from gateway.domain.errors import ApiError, BadRequest, NotFound
from gateway.domain.models import CaptureRequest, RefundRequest
from gateway.domain.money import exponent, scale_of
from gateway.idempotency import validate_idempotency_key
from gateway.middleware import LOG_CONTEXT, REQUEST_ID
from gateway.operation_keys import OperationKeys, Prepared, Replay, finished, operation_fingerprint
from gateway.payment_calls import Answer
from gateway.ratelimit import enforce
from gateway.refunds import Refunds

__all__ = ["cancel_with_key", "setup_payment_routes"]

CANCEL = "cancel"


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["sessionId"]
    try:
        uuid.UUID(session_id)
    except ValueError:
        raise NotFound("Session not found") from None
    return session_id


async def _merchant(request: web.Request, scope: str) -> str:
    merchant = await require(request, scope)
    request[LOG_CONTEXT]["merchant"] = merchant.merchant_id
    limit = request.app[MERCHANTS].rate_limit_for(merchant.merchant_id)
    await enforce(request.app[RATE_LIMITS], "merchant", merchant.merchant_id, limit)
    return merchant.merchant_id


def _respond(request: web.Request, answer: Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body, content_type="application/json")
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
        request[LOG_CONTEXT]["replayed"] = True
    return response


def _positive(amount: Decimal) -> None:
    if amount <= 0:
        raise BadRequest(["amount: must be more than 0"])


class _Places:
    """Checks an amount's decimal places once the session's currency is known."""

    def __init__(self, amount: Decimal | None) -> None:
        self.amount = amount

    def check(self, currency: str) -> None:
        places = exponent(currency)
        if self.amount is not None and scale_of(self.amount) > places:
            raise BadRequest(
                [f"amount: must have no more than {places} decimal places for {currency}"]
            )


async def capture_session(request: web.Request) -> web.Response:
    """``POST /api/v1/sessions/{sessionId}/capture``."""
    merchant_id = await _merchant(request, "sessions:write")
    session_id = _session_id(request)
    key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
    body = await read_model(request, CaptureRequest, optional=True)
    if body.amount is not None:
        _positive(body.amount)
    captures = Captures(request.app[LIFECYCLE])
    answer = await captures.capture(
        merchant_id,
        session_id,
        key,
        body.amount,
        request_id=request[REQUEST_ID],
        places=_Places(body.amount).check,
    )
    return _respond(request, answer)


async def create_refund(request: web.Request) -> web.Response:
    """``POST /api/v1/sessions/{sessionId}/refunds``."""
    merchant_id = await _merchant(request, "refunds:write")
    session_id = _session_id(request)
    key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
    body = await read_model(request, RefundRequest)
    _positive(body.amount)
    refunds = Refunds(request.app[LIFECYCLE])
    answer = await refunds.refund(
        merchant_id,
        session_id,
        key,
        body.amount,
        body.reason,
        request_id=request[REQUEST_ID],
        places=_Places(body.amount).check,
    )
    return _respond(request, answer)


async def list_refunds(request: web.Request) -> web.Response:
    """``GET /api/v1/sessions/{sessionId}/refunds``."""
    merchant_id = await _merchant(request, "sessions:read")
    session_id = _session_id(request)
    refunds = await Refunds(request.app[LIFECYCLE]).listed(merchant_id, session_id)
    return json_response({"data": refunds})


async def cancel_with_key(
    request: web.Request, merchant_id: str, session_id: str, key: str, reason: str
) -> web.Response:
    """A merchant's cancel (a void for an AUTHORIZED session) under an ``Idempotency-Key``:
    the answer is stored in the same write as the move it answers, and replayed."""
    lifecycle = request.app[LIFECYCLE]
    keys = OperationKeys(lifecycle.store, lease=lifecycle.cancel_claim_ttl, clock=lifecycle.clock)
    fingerprint = operation_fingerprint(CANCEL, {"cancellationReason": reason})
    claimed = await keys.claim(
        merchant_id, session_id, key, CANCEL, fingerprint, lambda record, resumed: Prepared()
    )
    if isinstance(claimed, Replay):
        return _respond(request, Answer(claimed.status, claimed.body, replayed=True))
    try:
        record = await lifecycle.cancel(
            merchant_id,
            session_id,
            reason,
            idempotency_key=key,
            amend=lambda moved: finished(
                moved, key, claimed.token, 200, orjson.dumps(moved.public())
            ),
        )
    except ApiError as exc:
        # a provider call of unknown outcome keeps the key for its retry; any other refusal
        # changed nothing and forgets it
        await keys.release(claimed, forget=exc.status not in (502, 503, 504))
        raise
    request[LOG_CONTEXT]["provider"] = record.provider
    status = 202 if record.status.value == "AUTHORIZED" else 200
    body = await keys.finish(claimed, status, lambda current: orjson.dumps(current.public()))
    return _respond(request, Answer(status, body))


def setup_payment_routes(app: web.Application) -> None:
    """Mount capture and refunds."""
    app.router.add_post("/api/v1/sessions/{sessionId}/capture", capture_session)
    app.router.add_post("/api/v1/sessions/{sessionId}/refunds", create_refund)
    app.router.add_get("/api/v1/sessions/{sessionId}/refunds", list_refunds)
