"""Request and response bodies shared by the API modules."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.appkeys import SETTINGS
from gateway.domain.errors import BadRequest, UnsupportedMediaType
from gateway.domain.models import (
    CheckoutRequest,
    RequestProblems,
    describe_errors,
    load_json_object,
    parse_checkout_request,
)

__all__ = ["json_response", "read_checkout_request", "read_model", "require_json"]

M = TypeVar("M", bound=BaseModel)


def require_json(request: web.Request) -> None:
    """415 unless the body is declared ``application/json``."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType()


async def read_checkout_request(request: web.Request) -> CheckoutRequest:
    """The body as a validated checkout request; 400 listing every problem otherwise."""
    raw = await request.read()
    try:
        return parse_checkout_request(raw, allow_http_localhost=request.app[SETTINGS].is_sandbox)
    except RequestProblems as exc:
        raise BadRequest(exc.problems) from None


def json_response(body: Any, status: int = 200) -> web.Response:
    """``body`` serialised with orjson."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def read_model(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """The body as ``model`` (numbers read exactly, as ``Decimal``); 400 listing every problem
    otherwise. ``optional``: an empty body reads as ``{}`` (then no Content-Type is needed)."""
    raw = await request.read()
    if optional and not raw.strip():
        return model.model_validate({})
    require_json(request)
    try:
        data = load_json_object(raw)
    except RequestProblems as exc:
        raise BadRequest(exc.problems) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_errors(exc)) from None
