"""POST /api/v1/sessions and GET /api/v1/sessions/{id}: the seed's happy path, end to end."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

import orjson

from tests.api.conftest import SEED, SEED_BYTES, GatewayFactory, headers, seed

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


async def test_seed_request_creates_a_session_with_every_field(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("seed-1"))
    assert response.status == 201, await response.text()
    body = await response.json()
    assert set(body) == {"sessionId", "checkoutUrl", "status", "routing", "expiresAt", "createdAt"}
    uuid.UUID(body["sessionId"])
    assert body["status"] == "PENDING"
    assert ISO_Z.match(body["createdAt"])
    assert ISO_Z.match(body["expiresAt"])
    created = datetime.fromisoformat(body["createdAt"])
    expires = datetime.fromisoformat(body["expiresAt"])
    assert expires - created == timedelta(seconds=3600)
    routing = body["routing"]
    assert routing["selectedProvider"] in {"stripe", "adyen", "paypal"}
    assert 0 <= routing["score"] <= 100
    assert routing["rulesVersion"]
    assert routing["decisionId"]
    assert routing["attempts"][-1]["provider"] == routing["selectedProvider"]
    assert routing["attempts"][-1]["outcome"] == "created"
    assert response.headers["Location"] == f"/api/v1/sessions/{body['sessionId']}"
    assert response.headers["X-Request-ID"]

    page = await client.session.get(body["checkoutUrl"])
    html = await page.text()
    assert page.status == 200
    assert 'id="pay"' in html
    assert 'id="decline"' in html
    assert 'id="cancel"' in html


async def test_session_reads_back_for_its_merchant_only(gateway: GatewayFactory) -> None:
    client = await gateway()
    created = await (
        await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("read-1"))
    ).json()
    response = await client.get(f"/api/v1/sessions/{created['sessionId']}", headers=headers(None))
    assert response.status == 200
    view = await response.json()
    assert view["sessionId"] == created["sessionId"]
    assert view["status"] == "PENDING"
    assert view["checkoutUrl"] == created["checkoutUrl"]
    assert view["provider"] == created["routing"]["selectedProvider"]
    assert view["amount"] == {"total": "140.76", "shipping": "9.95", "tax": "11.81"}
    assert view["currency"] == "AUD"
    assert view["orderReference"] == SEED["orderReference"]
    assert view["routing"] == created["routing"]
    assert view["createdAt"] == created["createdAt"]
    assert view["expiresAt"] == created["expiresAt"]
    assert [t["status"] for t in view["transitions"]] == ["PENDING"]

    other = await client.get(
        f"/api/v1/sessions/{created['sessionId']}", headers=headers(None, merchant="merchant-2")
    )
    unknown = await client.get(f"/api/v1/sessions/{uuid.uuid4()}", headers=headers(None))
    for response in (other, unknown):
        assert response.status == 404
        body = await response.json()
        assert body["statusCode"] == 404
        assert body["error"] == "Not Found"
    # the two 404s are indistinguishable apart from the request id
    a, b = await other.json(), await unknown.json()
    a.pop("requestId"), b.pop("requestId")
    assert a == b


async def test_expires_in_and_manual_capture_are_honoured(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await client.post(
        "/api/v1/sessions",
        json=seed(expiresIn=900, captureMethod="manual", orderReference="ORD-EXP"),
        headers=headers("exp-1"),
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    created = datetime.fromisoformat(body["createdAt"])
    assert datetime.fromisoformat(body["expiresAt"]) - created == timedelta(seconds=900)
    view = await (
        await client.get(f"/api/v1/sessions/{body['sessionId']}", headers=headers(None))
    ).json()
    assert view["captureMethod"] == "manual"


async def test_request_id_is_accepted_and_echoed(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["X-Request-ID"] != "bad id with spaces"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


async def test_amounts_read_back_as_plain_strings_with_the_currency_exponent(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    raw = (
        orjson.dumps(
            seed(
                amount={"total": 0, "shipping": 0, "tax": 0},
                orderItems=[{"name": "Gift card", "quantity": 1, "unitPrice": 0}],
            )
        )
        .replace(b'"total":0', b'"total":1e2')
        .replace(b'"unitPrice":0', b'"unitPrice":1E+2')
    )
    created = await client.post("/api/v1/sessions", data=raw, headers=headers("plain-1e2"))
    assert created.status == 201, await created.text()
    session_id = (await created.json())["sessionId"]
    view = await (await client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))).json()
    assert view["amount"] == {"total": "100.00", "shipping": "0.00", "tax": "0.00"}


async def test_an_amount_beyond_the_bound_is_a_400_naming_it(gateway: GatewayFactory) -> None:
    client = await gateway()
    raw = (
        orjson.dumps(
            seed(
                amount={"total": 0},
                orderItems=[{"name": "Yacht", "quantity": 1, "unitPrice": 0}],
            )
        )
        .replace(b'"total":0', b'"total":1e20')
        .replace(b'"unitPrice":0', b'"unitPrice":1e20')
    )
    response = await client.post("/api/v1/sessions", data=raw, headers=headers("huge-1e20"))
    assert response.status == 400, await response.text()
    body = await response.json()
    bound = "must be less than 1000000000000000 (at most 15 digits before the decimal point)"
    assert body["message"] == [f"amount.total: {bound}", f"orderItems.0.unitPrice: {bound}"]
