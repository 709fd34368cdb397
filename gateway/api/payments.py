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
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.bodies import json_response, read_model
from gateway.api.openapi import EXTRA_MODELS, EXTRA_PATHS
from gateway.appkeys import LIFECYCLE, MERCHANTS, RATE_LIMITS
from gateway.auth import require
from gateway.captures import Captures
from gateway.domain.errors import ApiError, BadRequest, NotFound
from gateway.domain.models import CaptureRequest, RefundRequest
from gateway.domain.money import exponent, scale_of
from gateway.domain.titles import field_title
from gateway.idempotency import validate_idempotency_key
from gateway.middleware import LOG_CONTEXT, REQUEST_ID
from gateway.operation_keys import OperationKeys, Prepared, Replay, finished, operation_fingerprint
from gateway.payment_calls import Answer
from gateway.ratelimit import enforce
from gateway.refunds import Refunds

__all__ = ["RefundList", "RefundView", "cancel_with_key", "setup_payment_routes"]

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


class RefundView(BaseModel):
    """One refund, as POST and GET /api/v1/sessions/{sessionId}/refunds and the refund.*
    notifications show it."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)
    refundId: str = Field(json_schema_extra={"format": "uuid"})
    sessionId: str = Field(json_schema_extra={"format": "uuid"})
    amount: str = Field(description="Decimal string with the currency's decimal places")
    currency: str
    reason: str | None
    status: str = Field(
        description="PENDING (asked of the provider), SUCCEEDED or FAILED (its amount is "
        "refundable again)"
    )
    providerRefundId: str | None = Field(description="The provider's id of the refund")
    failureReason: str | None
    createdAt: str = Field(json_schema_extra={"format": "date-time"})
    updatedAt: str = Field(json_schema_extra={"format": "date-time"})


class RefundList(BaseModel):
    """GET /api/v1/sessions/{sessionId}/refunds: every refund of the session, oldest first."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)
    data: list[RefundView]


def _path(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }


_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Client-generated key; same key + same body replays the first answer "
    "(Idempotent-Replayed: true), another body answers 422 IDEMPOTENCY_KEY_MISMATCH, a key "
    "still in flight 409 with Retry-After",
}
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_RETRY = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    return {"description": description, "content": _ERROR, **({"headers": _RETRY} if retry else {})}


_COMMON_ERRORS = {
    "400": _error(
        "Invalid body or amount (0, negative, too many decimal places), or no Idempotency-Key"
    ),
    "401": _error("Missing or invalid bearer token"),
    "403": _error("Token lacks the required scope"),
    "404": _error("Unknown session (or another merchant's)"),
    "415": _error("Content-Type is not application/json"),
    "429": _error("Over a rate limit", retry=True),
    "502": _error("PROVIDER_UNAVAILABLE or PROVIDER_ERROR: retry with the same key", retry=True),
    "503": _error("The store is unavailable, or PROVIDER_RATE_LIMITED", retry=True),
    "504": _error("PROVIDER_TIMEOUT: the outcome is unknown; retry with the same key", retry=True),
}

EXTRA_MODELS.extend([CaptureRequest, RefundRequest, RefundView, RefundList])
EXTRA_PATHS.update(
    {
        "/api/v1/sessions/{sessionId}/capture": {
            "post": {
                "operationId": "captureSession",
                "summary": "Capture an AUTHORIZED session (captureMethod manual)",
                "description": "Takes amount (default: the authorized total; less is a partial "
                "capture where the provider allows it, and releases the rest) of the "
                "authorization: 200 with the COMPLETED session, or 202 with the session still "
                "AUTHORIZED when the provider only accepted the capture (its webhook completes "
                "it). The body may be empty.",
                "security": [{"bearerAuth": []}],
                "x-scope": "sessions:write",
                "parameters": [_path("sessionId"), _KEY],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CaptureRequest"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Captured: the COMPLETED session",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SessionView"}
                            }
                        },
                    },
                    "202": {
                        "description": "Accepted by the provider: the session stays AUTHORIZED "
                        "until the provider's webhook completes it",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SessionView"}
                            }
                        },
                    },
                    **_COMMON_ERRORS,
                    "409": _error(
                        "The session is not AUTHORIZED, or another capture or void "
                        "of it (or this key) is in progress",
                        retry=True,
                    ),
                    "422": _error(
                        "CAPTURE_AMOUNT_EXCEEDED, FLOW_NOT_SUPPORTED (no partial "
                        "capture at this provider), CAPTURE_FAILED (declined: the "
                        "session stays AUTHORIZED), PROVIDER_REJECTED, "
                        "IDEMPOTENCY_KEY_MISMATCH"
                    ),
                },
            }
        },
        "/api/v1/sessions/{sessionId}/refunds": {
            "post": {
                "operationId": "createRefund",
                "summary": "Refund captured money of a COMPLETED session",
                "description": "Partial or full, several per session (at most 100): the sum of "
                "refunds that have not FAILED never exceeds amountCaptured. The refund is "
                "recorded (PENDING, refund.created) before the provider is asked; the provider's "
                "webhooks move it to SUCCEEDED or FAILED (refund.updated).",
                "security": [{"bearerAuth": []}],
                "x-scope": "refunds:write",
                "parameters": [_path("sessionId"), _KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/RefundRequest"}
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "The refund",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RefundView"}
                            }
                        },
                    },
                    **_COMMON_ERRORS,
                    "409": _error(
                        "The session is not COMPLETED with money captured, or this "
                        "key is in flight",
                        retry=True,
                    ),
                    "422": _error(
                        "REFUND_AMOUNT_EXCEEDED, REFUND_LIMIT_REACHED, "
                        "PROVIDER_REJECTED (the refund is FAILED), FLOW_NOT_SUPPORTED, "
                        "IDEMPOTENCY_KEY_MISMATCH"
                    ),
                },
            },
            "get": {
                "operationId": "listRefunds",
                "summary": "The session's refunds, oldest first",
                "security": [{"bearerAuth": []}],
                "x-scope": "sessions:read",
                "parameters": [_path("sessionId")],
                "responses": {
                    "200": {
                        "description": "Every refund of the session",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RefundList"}
                            }
                        },
                    },
                    "401": _COMMON_ERRORS["401"],
                    "403": _COMMON_ERRORS["403"],
                    "404": _COMMON_ERRORS["404"],
                    "429": _COMMON_ERRORS["429"],
                    "503": _COMMON_ERRORS["503"],
                },
            },
        },
    }
)
