"""Every error body of seed 003, reproduced through the real HTTP stack (one test per body)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.store.memory import MemoryStore
from tests.api.conftest import SEED_BYTES, GatewayFactory, headers, seed, token


async def envelope(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body: dict[str, Any] = await response.json()
    assert body["statusCode"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    assert body["requestId"] == response.headers["X-Request-ID"]
    return body


async def set_faults(sandbox_base: str, **faults: Any) -> None:
    async with aiohttp.ClientSession() as http:
        for provider in ("stripe", "adyen", "paypal"):
            answer = await http.post(
                f"{sandbox_base}/admin/faults", json={"provider": provider, **faults}
            )
            assert answer.status == 200, await answer.text()


async def test_400_missing_idempotency_key(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers(key=None))
    body = await envelope(response, 400)
    assert body["error"] == "Bad Request"
    assert body["message"] == "Missing required header: Idempotency-Key"


async def test_400_total_mismatch(gateway: GatewayFactory) -> None:
    client = await gateway()
    bad = seed(amount={"total": 140.77, "shipping": 9.95, "tax": 11.81})
    response = await client.post("/api/v1/sessions", json=bad, headers=headers("mismatch-total"))
    body = await envelope(response, 400)
    assert body["error"] == "Bad Request"
    assert body["message"] == [
        "amount.total does not match the sum of line items, shipping, and tax"
    ]


async def test_401_without_or_with_a_bad_token(gateway: GatewayFactory) -> None:
    client = await gateway()
    for auth in (None, "Bearer not-a-jwt", "Basic abc", f"Bearer {token()}x"):
        hdrs = headers("k401")
        if auth is None:
            del hdrs["Authorization"]
        else:
            hdrs["Authorization"] = auth
        body = await envelope(
            await client.post("/api/v1/sessions", data=SEED_BYTES, headers=hdrs), 401
        )
        assert body["error"] == "Unauthorized"
        assert body["message"] == "Authentication required. Please provide a valid API token"
        assert body["code"] == 401


async def test_403_without_the_scope(gateway: GatewayFactory) -> None:
    client = await gateway()
    hdrs = headers("k403", scopes=["sessions:read"])
    body = await envelope(await client.post("/api/v1/sessions", data=SEED_BYTES, headers=hdrs), 403)
    assert body["error"] == "Forbidden"
    assert body["code"] == 403
    assert "sessions:write" in body["message"]


async def test_409_pending_session_for_the_same_order(gateway: GatewayFactory) -> None:
    client = await gateway()
    first = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("order-a"))
    assert first.status == 201
    existing = (await first.json())["sessionId"]
    second = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("order-b"))
    body = await envelope(second, 409)
    assert body["error"] == "Conflict"
    assert body["message"] == "The request conflicts with the current state of the resource"
    assert body["code"] == 409
    assert body["details"] == "Resource already exists"
    assert body["sessionId"] == existing


async def test_409_guard_can_be_turned_off(gateway: GatewayFactory) -> None:
    client = await gateway(order_reference_guard=False)
    first = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("off-a"))
    second = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("off-b"))
    assert first.status == second.status == 201
    assert (await first.json())["sessionId"] != (await second.json())["sessionId"]


async def test_422_idempotency_key_mismatch(gateway: GatewayFactory) -> None:
    client = await gateway()
    assert (
        await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("same"))
    ).status == 201
    other = seed(orderReference="ORD-OTHER")
    body = await envelope(
        await client.post("/api/v1/sessions", json=other, headers=headers("same")), 422
    )
    assert (
        body["message"] == "This idempotency key was already used with different request parameters"
    )
    assert body["code"] == "IDEMPOTENCY_KEY_MISMATCH"


async def test_422_no_available_provider(gateway: GatewayFactory) -> None:
    client = await gateway()
    # PayPal wallets are pinned to PayPal, and PayPal does not take Sudanese pounds
    request = seed(currency="SDG", paymentMethod="paypal", orderReference="ORD-NONE")
    response = await client.post("/api/v1/sessions", json=request, headers=headers("none"))
    body = await envelope(response, 422)
    assert body["message"] == "No eligible providers found for the given request parameters"
    assert body["code"] == "NO_AVAILABLE_PROVIDER"
    assert {d["provider"] for d in body["details"]} >= {"stripe", "adyen", "paypal"}
    assert all(d["reason"] for d in body["details"])


class _BrokenStore(MemoryStore):
    """A store whose reads fail in an unexpected way (a bug, not an outage)."""

    async def get_session(self, session_id: str) -> Any:
        raise RuntimeError("boom: secret internals")


async def test_500_hides_internals(gateway: GatewayFactory) -> None:
    client = await gateway(store=_BrokenStore())
    response = await client.get(
        "/api/v1/sessions/6f1c4a52-9c51-4c55-9a8e-0a1f0d6d7c11", headers=headers(None)
    )
    body = await envelope(response, 500)
    assert body["message"] == "Internal server error"
    assert "boom" not in await response.text()


async def test_502_when_every_provider_fails(gateway: GatewayFactory, sandbox: Any) -> None:
    client = await gateway()
    base = str(sandbox.make_url("/sandbox"))
    await set_faults(base, errorRate=1.0)
    response = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("k502"))
    body = await envelope(response, 502)
    assert body["error"] == "Error"
    assert body["message"] == "Service temporarily unavailable."
    assert body["code"] == 502
    outcomes = {a["outcome"] for a in body["details"]["attempts"]}
    assert outcomes == {"unavailable"}


async def test_503_when_the_store_is_down(gateway: GatewayFactory) -> None:
    from tests.redis_stores import redis_store

    dead = redis_store("redis://127.0.0.1:1/0", "test:dead:")
    client = await gateway(store=dead)
    response = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("k503"))
    body = await envelope(response, 503)
    assert body["error"] == "Service Unavailable"
    assert body["message"] == "The service is temporarily unavailable. Please try again later"
    assert body["code"] == 503
    ready = await client.get("/readyz")
    assert ready.status == 503
    await dead.close()


async def test_504_when_the_deadline_passes(gateway: GatewayFactory, sandbox: Any) -> None:
    client = await gateway(provider_timeout_seconds=0.4, request_deadline_seconds=0.6)
    base = str(sandbox.make_url("/sandbox"))
    await set_faults(base, timeout=True)
    started = asyncio.get_running_loop().time()
    response = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("k504"))
    elapsed = asyncio.get_running_loop().time() - started
    body = await envelope(response, 504)
    assert body["error"] == "Error"
    assert body["message"] == "Request timed out."
    assert body["code"] == 504
    assert elapsed < 3


async def test_415_413_405_404(gateway: GatewayFactory) -> None:
    client = await gateway(max_body_bytes=2048)
    hdrs = headers("k415")
    hdrs["Content-Type"] = "text/plain"
    assert await envelope(await client.post("/api/v1/sessions", data=SEED_BYTES, headers=hdrs), 415)
    big = b'{"orderReference": "' + b"x" * 4096 + b'"}'
    await envelope(await client.post("/api/v1/sessions", data=big, headers=headers("k413")), 413)
    await envelope(
        await client.put("/api/v1/sessions", data=SEED_BYTES, headers=headers("k405")), 405
    )
    await envelope(await client.get("/nope"), 404)


async def test_400_invalid_idempotency_key(gateway: GatewayFactory) -> None:
    client = await gateway()
    for bad in ("x" * 256, "tab\there"):
        body = await envelope(
            await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers(bad)), 400
        )
        assert "Idempotency-Key" in body["message"]


async def test_400_for_json_nested_too_deeply(gateway: GatewayFactory) -> None:
    client = await gateway()
    for path in ("/api/v1/sessions", "/api/v1/routing/simulate"):
        response = await client.post(path, data=b"[" * 100_000, headers=headers("deep"))
        body = await envelope(response, 400)
        assert body["message"] == ["body: JSON nested too deeply"]
