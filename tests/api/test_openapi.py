"""The OpenAPI document matches the routes and what the handlers really answer."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
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


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


async def test_texts_are_written_for_the_api_reader(gateway: GatewayFactory) -> None:
    client = await gateway()
    doc = await (await client.get("/api/v1/openapi.json")).json()
    # no reStructuredText from docstrings: ``literal``, :func:`...`
    markup = [s for s in _strings(doc) if "``" in s or re.search(r":\w+:`", s)]
    assert markup == []
    titles = {
        (model, name): prop.get("title")
        for model, schema in doc["components"]["schemas"].items()
        for name, prop in schema.get("properties", {}).items()
    }
    assert titles[("CheckoutRequest", "orderReference")] == "Order reference"
    assert titles[("SessionCreated", "checkoutUrl")] == "Checkout URL"
    assert titles[("Attempt", "durationMs")] == "Duration (ms)"
    assert titles[("OrderItem", "unitPrice")] == "Unit price"
    # pydantic's default would read "Orderreference": every camel-case name is split
    mashed = [
        key
        for key, title in titles.items()
        if title and " " not in title and key[1] != title.lower() and len(title) > 1
    ]
    assert mashed == []
    request = doc["components"]["schemas"]["CheckoutRequest"]
    assert request["description"].startswith("The body of POST /api/v1/sessions")
    undocumented = [
        name
        for name, prop in request["properties"].items()
        if "description" not in prop and "$ref" not in prop and "anyOf" not in prop
    ]
    assert undocumented == []


async def test_simulate_answer_validates_and_explains_the_learning(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    doc = await (await client.get("/api/v1/openapi.json")).json()
    import json

    body = json.loads(SEED_BYTES)
    body["paymentMethod"] = "apple_pay"  # no rule places it: the learner ranks and explores
    answer = await client.post(
        "/api/v1/routing/simulate", json=body, headers=headers(None, scopes=["routing:read"])
    )
    assert answer.status == 200
    body = await answer.json()
    jsonschema.validate(body, _resolver_schema(doc, "RoutingExplanation"))
    for candidate in body["candidates"]:
        details = candidate["details"]
        assert details["window"] == "last ~200 outcomes, half-life 3600 s"
        assert isinstance(details["explored"], bool)
        assert details["successSamples"] == 0
        assert details["paymentSamples"] == 0
    chances = [c["details"]["betterChance"] for c in body["candidates"]]
    assert chances.count(None) == 1  # the leader; every other one has its chance to be better
    assert all(0 <= c <= 1 for c in chances if c is not None)
    documented = doc["components"]["schemas"]["RoutingCandidateDetails"]["properties"]
    assert set(body["candidates"][0]["details"]) <= set(documented)


async def test_the_session_types_validate_against_the_document(gateway: GatewayFactory) -> None:
    import json

    client = await gateway()
    doc = await (await client.get("/api/v1/openapi.json")).json()
    request_schema = _resolver_schema(doc, "CheckoutRequest")
    seed = json.loads(SEED_BYTES)
    setup = {**seed, "sessionType": "setup", "amount": {"total": 0}}
    del setup["orderItems"]
    series = {
        **seed,
        "sessionType": "next_in_series",
        "mandateSessionId": "0b6f8c1e-2f4a-4c1d-9e3b-5a7d6c8e9f01",
    }
    del series["redirectUrls"]
    for body in (setup, series):
        jsonschema.validate(body, request_schema)
    # a next payment's 201: no hosted page, the charge's outcome as status
    created = await (
        await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("t"))
    ).json()
    charged = {**created, "checkoutUrl": None, "status": "FAILED"}
    jsonschema.validate(charged, _resolver_schema(doc, "SessionCreated"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**charged, "status": "EXPIRED"}, _resolver_schema(doc, "SessionCreated")
        )
    create = doc["paths"]["/api/v1/sessions"]["post"]
    assert "MANDATE_NOT_USABLE" in create["responses"]["422"]["description"]
    assert "mandateSessionId" in create["responses"]["404"]["description"]
