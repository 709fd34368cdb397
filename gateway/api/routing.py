"""``/api/v1/routing``: the active rules, a dry-run decision, and a reload on demand.

- ``GET  /api/v1/routing/rules``     (routing:read)  version, content hash, the rules
- ``POST /api/v1/routing/simulate``  (routing:read)  a session request's full decision; creates
  nothing, holds no idempotency key, counts no outcome (a next_in_series request reads its
  mandate as a create does: 404 / 422 MANDATE_NOT_USABLE)
- ``POST /api/v1/routing/reload``    (routing:admin) re-read the file now (422 RULES_INVALID
  when it is refused: the previous rules stay active)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.api.bodies import json_response, read_checkout_request, require_json
from gateway.api.openapi import EXTRA_MODELS, EXTRA_PATHS
from gateway.api.routing_schema import RoutingExplanation
from gateway.appkeys import ROUTER, SERVICES, STORE
from gateway.auth import require
from gateway.domain.errors import Unprocessable
from gateway.routing.service import Router
from gateway.series import find_mandate

__all__ = ["setup_routing_routes"]


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


async def get_rules(request: web.Request) -> web.Response:
    """``GET /api/v1/routing/rules``."""
    await require(request, "routing:read")
    router: Router = request.app[ROUTER]
    rules = router.rules  # one read: a reload may swap it
    return json_response(
        {
            "version": rules.version,
            "rulesVersion": rules.rules_version,
            "contentHash": rules.content_hash,
            "loadedAt": _iso(router.loaded_at),
            "lastReloadError": router.last_reload_error,
            "rules": rules.model.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    )


async def simulate_route(request: web.Request) -> web.Response:
    """``POST /api/v1/routing/simulate``: the decision a session request would get now."""
    merchant = await require(request, "routing:read")
    require_json(request)
    checkout = await read_checkout_request(request)
    unavailable: dict[str, str] = {}
    circuits = getattr(request.app.get(SERVICES), "circuits", None)
    if circuits is not None:
        await circuits.refresh()
        unavailable = dict(circuits.unavailable())
    held_by = None
    if checkout.sessionType == "next_in_series":  # routed where its mandate is, as a create is
        held_by = (await find_mandate(request.app[STORE], merchant.merchant_id, checkout)).provider
    router: Router = request.app[ROUTER]
    decision = router.decide(
        checkout, merchant.merchant_id, unavailable=unavailable, dry_run=True, held_by=held_by
    )
    if not decision.ranked:
        raise Unprocessable.no_available_provider(decision.exclusion_details())
    return json_response({**decision.explain(), "simulated": True})


async def reload_rules(request: web.Request) -> web.Response:
    """``POST /api/v1/routing/reload``."""
    await require(request, "routing:admin")
    router: Router = request.app[ROUTER]
    result = await router.reload()
    if not result.ok:
        raise Unprocessable(
            "The routing rules file is invalid; the previous rules stay active",
            code="RULES_INVALID",
            details=list(result.errors),
            extra={"rulesVersion": result.rules_version},
        )
    return json_response(result.as_dict())


def setup_routing_routes(app: web.Application) -> None:
    """Mount the three routing endpoints."""
    app.router.add_get("/api/v1/routing/rules", get_rules)
    app.router.add_post("/api/v1/routing/simulate", simulate_route)
    app.router.add_post("/api/v1/routing/reload", reload_rules)


_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "Error envelope", "content": _ERROR} for c in codes}


_OBJECT = {"application/json": {"schema": {"type": "object"}}}
if RoutingExplanation not in EXTRA_MODELS:
    EXTRA_MODELS.append(RoutingExplanation)
EXTRA_PATHS.update(
    {
        "/api/v1/routing/rules": {
            "get": {
                "operationId": "getRoutingRules",
                "summary": "The active routing rules, their version and content hash",
                "security": _BEARER,
                "x-scope": "routing:read",
                "responses": {"200": {"description": "Active rules", "content": _OBJECT}}
                | _errors(401, 403),
            }
        },
        "/api/v1/routing/simulate": {
            "post": {
                "operationId": "simulateRouting",
                "summary": "The routing decision a session request would get; creates nothing",
                "security": _BEARER,
                "x-scope": "routing:read",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CheckoutRequest"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The explained decision: per candidate its score, the "
                        "success estimate with its samples and window, and whether it was "
                        "chosen to explore",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RoutingExplanation"}
                            }
                        },
                    }
                }
                | _errors(400, 401, 403, 404, 415, 422),
            }
        },
        "/api/v1/routing/reload": {
            "post": {
                "operationId": "reloadRoutingRules",
                "summary": "Re-read the rules file now",
                "security": _BEARER,
                "x-scope": "routing:admin",
                "responses": {"200": {"description": "Reload result", "content": _OBJECT}}
                | _errors(401, 403, 422),
            }
        },
    }
)
