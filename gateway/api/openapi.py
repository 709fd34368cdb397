"""The OpenAPI 3.1 document, built once from the pydantic models the handlers use.

``tests/api/test_openapi.py`` keeps it in step with the routes and with real responses.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway import __version__
from gateway.api.session_query import SessionQuery
from gateway.domain.models import CancelRequest, CheckoutRequest
from gateway.domain.session import OrphanSession, RoutingSummary
from gateway.domain.titles import field_title

__all__ = [
    "ErrorBody",
    "SessionCreated",
    "SessionPage",
    "SessionView",
    "openapi_document",
    "setup_openapi_routes",
]


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)


class ErrorBody(_View):
    """The error envelope of every answer that is not a success."""

    model_config = ConfigDict(extra="allow")
    error: str
    message: str | list[str]
    statusCode: int
    code: int | str | None = None
    details: Any = None
    requestId: str = Field(description="Equal to the X-Request-ID response header")


class SessionCreated(_View):
    """The 201 answer of POST /api/v1/sessions (replayed as is for a retry of its key)."""

    sessionId: str = Field(json_schema_extra={"format": "uuid"})
    checkoutUrl: str | None = Field(
        description="The provider's hosted checkout page for the customer; null for "
        "next_in_series (the customer is not present)"
    )
    status: str = Field(
        description="PENDING for a session the customer still has to pay (one_time, "
        "first_in_series, setup); for next_in_series the charge's outcome: COMPLETED, "
        "AUTHORIZED (captureMethod manual), PROCESSING (the provider decides later and the "
        "session moves when it does) or FAILED with failureReason on the session (a decline is "
        "a 201, not an error)",
        json_schema_extra={"enum": ["PENDING", "PROCESSING", "AUTHORIZED", "COMPLETED", "FAILED"]},
    )
    routing: RoutingSummary
    expiresAt: str = Field(json_schema_extra={"format": "date-time"})
    createdAt: str = Field(json_schema_extra={"format": "date-time"})


class AmountView(_View):
    """The order's amounts as decimal strings with the currency's decimal places."""

    total: str
    shipping: str
    tax: str


class TransitionView(_View):
    """One status change of the session."""

    status: str
    at: str
    source: str = Field(
        description="Who moved the session: gateway, merchant, expiry, webhook:<provider>, "
        "gateway:capture or gateway:authorize"
    )
    eventId: str | None = Field(default=None, description="The provider's event id")
    confirmedBy: str | None = Field(
        None,
        description="For a merchant's cancel: the provider's confirmation, api:<provider> "
        "(its cancel call) or webhook:<provider> (its event)",
    )


class AmountMismatchView(_View):
    """A provider verdict that was not applied: its amount or currency differed."""

    provider: str
    source: str = Field(
        description="webhook, or the gateway's own call: capture / authorize, or charge (a "
        "next_in_series charge)"
    )
    eventId: str | None
    eventType: str
    reportedStatus: str = Field(description="The status the provider's verdict asked for")
    amount: str | None = Field(description="What the provider reported (decimal string)")
    currency: str | None
    at: str


class SessionView(_View):
    """A checkout session, as GET /api/v1/sessions/{sessionId} answers it."""

    sessionId: str
    orderReference: str
    status: str = Field(
        description="PENDING, REQUIRES_ACTION, PROCESSING, AUTHORIZED (manual capture: held, "
        "waiting for the merchant's capture or void), COMPLETED, FAILED, EXPIRED or CANCELLED"
    )
    checkoutUrl: str | None = Field(
        description="The provider's hosted page; null for a customer-absent charge"
    )
    provider: str
    providerSessionId: str
    currency: str
    amount: AmountView
    paymentMethod: str
    captureMethod: str
    routing: RoutingSummary
    createdAt: str
    updatedAt: str
    expiresAt: str
    sessionType: str
    savePaymentMethod: bool
    customerReference: str | None
    customerId: str | None = Field(description="The provider's customer holding a saved method")
    paymentMethodId: str | None = Field(
        description="The saved payment method or mandate reference the provider reported"
    )
    paymentId: str | None = Field(description="The provider's reference of the payment")
    mandateSessionId: str | None = Field(
        description="next_in_series: the session whose saved method was charged"
    )
    amountCaptured: str = Field(
        description="Money taken (decimal string): the total once COMPLETED, or what a manual "
        "capture took"
    )
    amountRefunded: str = Field(
        description="Refunded or being refunded (every refund that has not FAILED)"
    )
    authorizationExpiresAt: str | None = Field(
        description="AUTHORIZED: when the provider lets the authorization lapse"
    )
    failureReason: str | None
    cancellationReason: str | None
    payableUntil: str | None = Field(
        description="Cancelled at the gateway only: the provider's page takes money until then, "
        "and the order stays held"
    )
    amountMismatch: AmountMismatchView | None = Field(
        description="The last provider verdict whose amount or currency was not the session's"
    )
    version: int = Field(description="Grows with every change of the session")
    orphans: list[OrphanSession] = Field(
        description="Sessions other providers may hold for this key after a failed try; "
        "expired there where the provider allows, never this session's payment"
    )
    transitions: list[TransitionView]


class SessionPage(_View):
    """A page of GET /api/v1/sessions: the merchant's sessions of one orderReference."""

    data: list[SessionView] = Field(
        description="Newest first (createdAt, then sessionId, both descending); each session "
        "as GET /api/v1/sessions/{sessionId} answers it"
    )
    nextCursor: str | None = Field(
        description="Pass as cursor to read the next page; null on the last page"
    )


_MODELS: tuple[type[BaseModel], ...] = (
    CheckoutRequest,
    CancelRequest,
    SessionCreated,
    SessionView,
    SessionPage,
    ErrorBody,
)
#: Extra component models registered by other API modules (routing, webhooks, ...).
EXTRA_MODELS: list[type[BaseModel]] = []
#: Extra path items registered by other API modules.
EXTRA_PATHS: dict[str, dict[str, Any]] = {}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": _DESCRIPTIONS[s],
            "content": {"application/json": {"schema": _ref("ErrorBody")}},
            **({"headers": _RETRY_AFTER} if s in (409, 429, 503) else {}),
        }
        for s in statuses
    }


_DESCRIPTIONS = {
    400: "Invalid request: every problem listed with its field path",
    401: "Missing or invalid bearer token",
    403: "Token lacks the required scope",
    404: "Unknown resource (or another merchant's); for a create, an unknown "
    "mandateSessionId (or another merchant's session)",
    409: "Key in flight (Retry-After), or the order has a pending, paying or paid session",
    413: "Body too large",
    415: "Content-Type is not application/json",
    408: "The request was not received within the read timeouts (the connection is closed)",
    422: "IDEMPOTENCY_KEY_MISMATCH, NO_AVAILABLE_PROVIDER (no provider could ever take it; "
    "for next_in_series: the mandate's provider cannot, the others are excluded as 'mandate "
    "is held by <provider>'), IDEMPOTENCY_KEY_EXPIRED (the key's pinned request is too old: "
    "use a new key), MANDATE_NOT_USABLE (mandateSessionId is not a COMPLETED first_in_series "
    "or setup session with a saved method of this paymentMethod: the message says which), "
    "PROVIDER_REJECTED or FLOW_NOT_SUPPORTED (next_in_series: the mandate's provider refused "
    "the charge)",
    429: "Over a rate limit: retry after Retry-After seconds",
    500: "Internal server error",
    502: "Every provider failed (next_in_series: code PROVIDER_UNAVAILABLE, the mandate's "
    "provider could not be reached; it is never failed over: retry with the same key)",
    503: "The store is unavailable, or every provider that could take the request is down "
    "right now (reason PROVIDERS_UNAVAILABLE, Retry-After)",
    504: "The request deadline passed before any provider created the session "
    "(next_in_series: code PROVIDER_TIMEOUT, the charge's outcome is unknown: retry with the "
    "same key, which re-sends the same provider request)",
}

_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The query parameters of ``model``'s fields (a null default means: may be left out)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema["properties"].items():
        variants = [v for v in prop.get("anyOf", [prop]) if v.get("type") != "null"]
        value = {k: v for k, v in variants[0].items() if k not in ("title", "description")}
        if prop.get("default") is not None:
            value["default"] = prop["default"]
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": prop["description"],
                "schema": value,
            }
        )
    return parameters


def _base_paths() -> dict[str, Any]:
    idem = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        "description": "Client-generated key; same key + same body replays the first answer",
    }
    return {
        "/api/v1/sessions": {
            "post": {
                "operationId": "createSession",
                "summary": "Create a hosted checkout session, or charge a saved method",
                "description": "sessionType one_time or first_in_series: a hosted checkout "
                "session (status PENDING, checkoutUrl set). setup: a hosted session that saves "
                "a payment method and charges nothing (amount.total 0, orderItems may be "
                "omitted); once COMPLETED it carries customerId and paymentMethodId and can "
                "serve as a mandate. next_in_series: mandateSessionId names the merchant's "
                "COMPLETED first_in_series or setup session; its saved method is charged at "
                "the provider that holds it (and only there: no failover), with no customer "
                "present and no redirectUrls; the 201 carries the outcome as status and "
                "checkoutUrl null.",
                "security": _BEARER,
                "x-scope": "sessions:write",
                "parameters": [idem],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CheckoutRequest")}},
                },
                "responses": {
                    "201": {
                        "description": "Session created (or replayed: Idempotent-Replayed: true)",
                        "headers": {
                            "Location": {"schema": {"type": "string"}},
                            "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}},
                            "X-Request-ID": {"schema": {"type": "string"}},
                        },
                        "content": {"application/json": {"schema": _ref("SessionCreated")}},
                    },
                    **_errors(400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 500, 502, 503, 504),
                },
            },
            "get": {
                "operationId": "findSessions",
                "summary": "Find the sessions of an orderReference",
                "description": "The calling merchant's sessions created for orderReference, "
                "newest first, a page at a time: pass the nextCursor of a page as cursor to "
                "read the next one (nextCursor is null on the last page). Each session reads "
                "as GET /api/v1/sessions/{sessionId} answers it; sessions past their retention "
                "are not listed. A missing or malformed parameter, an unknown one, or a cursor "
                "this API did not issue answers 400.",
                "security": _BEARER,
                "x-scope": "sessions:read",
                "parameters": _query_parameters(SessionQuery),
                "responses": {
                    "200": {
                        "description": "A page of sessions (possibly empty)",
                        "content": {"application/json": {"schema": _ref("SessionPage")}},
                    },
                    **_errors(400, 401, 403, 429, 503),
                },
            },
        },
        "/api/v1/sessions/{sessionId}": {
            "get": {
                "operationId": "getSession",
                "summary": "Read a checkout session",
                "security": _BEARER,
                "x-scope": "sessions:read",
                "parameters": [
                    {
                        "name": "sessionId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The session",
                        "content": {"application/json": {"schema": _ref("SessionView")}},
                    },
                    **_errors(401, 403, 404, 429, 503),
                },
            }
        },
        "/api/v1/sessions/{sessionId}/cancel": {
            "post": {
                "operationId": "cancelSession",
                "summary": "Cancel a session at its provider and locally (void an authorization)",
                "description": "PENDING or REQUIRES_ACTION sessions are cancelled; an AUTHORIZED "
                "session's authorization is voided at the provider (CANCELLED; 202 with the "
                "session still AUTHORIZED when the provider only accepted the void: its webhook "
                "cancels it). Any other status answers 409. When the provider cannot be reached "
                "the answer is 502 and the session is unchanged. An Idempotency-Key is optional: "
                "with one, a retry replays the answer (Idempotent-Replayed: true).",
                "security": _BEARER,
                "x-scope": "sessions:write",
                "parameters": [
                    {
                        "name": "sessionId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    },
                    {**idem, "required": False},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CancelRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "The cancelled session",
                        "content": {"application/json": {"schema": _ref("SessionView")}},
                    },
                    "202": {
                        "description": "The void was accepted by the provider; the session "
                        "stays AUTHORIZED until its webhook confirms it",
                        "content": {"application/json": {"schema": _ref("SessionView")}},
                    },
                    **_errors(400, 401, 403, 404, 408, 409, 415, 422, 429, 502, 503, 504),
                },
            }
        },
        "/api/v1/sessions/{sessionId}/return": {
            "get": {
                "operationId": "returnFromProvider",
                "summary": "Where a provider with a single return URL (Adyen) sends the customer",
                "description": "Not called by merchants: the customer's browser arrives here "
                "from the provider's page and is redirected (303) to the merchant's success "
                "URL once the session is COMPLETED, to its failure URL once it FAILED, EXPIRED "
                "or was CANCELLED. A session with no outcome yet after a short wait goes to "
                "the success URL, whose page must read the session's status.",
                "parameters": [
                    {
                        "name": "sessionId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    },
                    {
                        "name": "sessionId",
                        "in": "query",
                        "required": True,
                        "description": "The provider's session id, appended by the provider",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "303": {"description": "On to the merchant's success or failure URL"},
                    **_errors(404, 429, 503),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "responses": {"200": {"description": "Alive"}},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness (store, rules)",
                "responses": {
                    "200": {"description": "Ready"},
                    "503": {"description": "Not ready, with details"},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {
                    "200": {
                        "description": "Every gateway metric, summed over worker processes",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
    }


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    """The serialized document (built on first use, then cached)."""
    schemas: dict[str, Any] = {}
    for model in (*_MODELS, *EXTRA_MODELS):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Payment routing gateway",
            "version": __version__,
            "description": "One checkout-session API in front of Stripe, Adyen and PayPal.",
        },
        "paths": {**_base_paths(), **EXTRA_PATHS},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
    return orjson.dumps(doc)


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(), content_type="application/json")


def setup_openapi_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", get_openapi)
