"""The OpenAPI document matches the routes and what the handlers really answer."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from openapi_spec_validator import validate as validate_spec

from tests.api.conftest import SEED_BYTES, GatewayFactory, headers


def _resolver_schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


async def test_document_is_valid_openapi_31_and_lists_every_route(gateway: GatewayFactory) -> None:
    client = await gateway()
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    validate_spec(doc)
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    served = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if not path or route.method == "HEAD" or path.startswith(("/sandbox", "/demo")):
            continue  # sandbox mode's pages (the sandbox providers, the demo shop): not the API
        served.add((re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path), route.method))
    assert served == documented


async def test_real_answers_validate_against_the_document(gateway: GatewayFactory) -> None:
    client = await gateway()
    doc = await (await client.get("/api/v1/openapi.json")).json()
    request_schema = _resolver_schema(doc, "CheckoutRequest")
    import json

    jsonschema.validate(json.loads(SEED_BYTES), request_schema)
    created = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("oa"))
    body = await created.json()
    jsonschema.validate(body, _resolver_schema(doc, "SessionCreated"))
    view = await (
        await client.get(f"/api/v1/sessions/{body['sessionId']}", headers=headers(None))
    ).json()
    jsonschema.validate(view, _resolver_schema(doc, "SessionView"))
    error = await (await client.post("/api/v1/sessions", data=b"{}", headers=headers("oa2"))).json()
    jsonschema.validate(error, _resolver_schema(doc, "ErrorBody"))


def test_request_schema_is_the_models_schema() -> None:
    import orjson

    from gateway.api.openapi import openapi_document
    from gateway.domain.models import CheckoutRequest

    doc = orjson.loads(openapi_document())
    model = CheckoutRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    model.pop("$defs", None)
    assert doc["components"]["schemas"]["CheckoutRequest"] == model
    assert set(model["properties"]) == set(CheckoutRequest.model_fields)
