"""503 with Retry-After when every provider that could take a request is down right now;
422 NO_AVAILABLE_PROVIDER stays for requests no provider could ever take."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from gateway.store.base import RecordStore
from tests.api.conftest import GatewayFactory, headers, seed


async def _fault(sandbox: Any, provider: str, **faults: Any) -> None:
    async with aiohttp.ClientSession() as http:
        answer = await http.post(
            str(sandbox.make_url("/sandbox/admin/faults")), json={"provider": provider, **faults}
        )
        assert answer.status == 200


def _wallet_order(ref: str, **fields: Any) -> dict[str, Any]:
    # PayPal wallets are pinned to PayPal: PayPal is the only provider that can take them
    return seed(orderReference=ref, paymentMethod="paypal", **fields)


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_every_eligible_provider_circuit_open_answers_503_with_retry_after(
    gateway: GatewayFactory,
    sandbox: Any,
    store_factory: Any,
    coordination_factory: Any,
    store_kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    store: RecordStore = await store_factory(store_kind)
    client = await gateway(
        store=store,
        coordination=await coordination_factory(store_kind),
        circuit_failure_threshold=1,
        circuit_open_seconds=30,
    )
    await _fault(sandbox, "paypal", down=True)
    first = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-DOWN-1"), headers=headers("down-1")
    )
    assert first.status == 502  # the call itself failed; that failure opened the circuit
    answer = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-DOWN-2"), headers=headers("down-2")
    )
    body = await answer.json()
    assert answer.status == 503, body
    assert body["error"] == "Service Unavailable"
    assert body["code"] == 503
    assert body["statusCode"] == 503
    assert body["message"] == "The service is temporarily unavailable. Please try again later"
    assert body["reason"] == "PROVIDERS_UNAVAILABLE"
    assert {"provider": "paypal", "reason": "circuit open"} in body["details"]
    assert 20 <= int(answer.headers["Retry-After"]) <= 30
    # the key was released: the merchant's retry is a fresh attempt, not a replayed 503
    again = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-DOWN-2"), headers=headers("down-2")
    )
    assert again.status == 503
    assert again.headers.get("Idempotent-Replayed") is None
    # the access log line of a 503 names its cause
    causes = [
        getattr(r, "cause", None)
        for r in caplog.records
        if r.name == "gateway.access" and getattr(r, "status", None) == 503
    ]
    assert causes == ["providers_unavailable", "providers_unavailable"]


async def test_a_request_no_provider_could_ever_take_stays_422_while_circuits_are_open(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    client = await gateway(circuit_failure_threshold=1, circuit_open_seconds=30)
    await _fault(sandbox, "paypal", down=True)
    await client.post("/api/v1/sessions", json=_wallet_order("ORD-N-1"), headers=headers("n-1"))
    # PayPal does not take Sudanese pounds: open circuit or not, nobody could take this
    answer = await client.post(
        "/api/v1/sessions",
        json=_wallet_order("ORD-N-2", currency="SDG"),
        headers=headers("n-2"),
    )
    body = await answer.json()
    assert answer.status == 422, body
    assert body["code"] == "NO_AVAILABLE_PROVIDER"
    assert "Retry-After" not in answer.headers


async def test_a_503_for_an_unreachable_store_names_its_cause_in_the_log(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.gateway_processes import free_port
    from tests.redis_stores import redis_store

    caplog.set_level(logging.INFO)
    store = redis_store(f"redis://127.0.0.1:{free_port()}/0", "nothing:")  # nobody listens
    try:
        client = await gateway(store=store)
        answer = await client.post(
            "/api/v1/sessions", json=_wallet_order("ORD-S-1"), headers=headers("s-1")
        )
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        access = [r for r in caplog.records if r.name == "gateway.access"]
        assert [getattr(r, "cause", None) for r in access] == ["store_unavailable"]
        errors = [r for r in caplog.records if r.name == "gateway.errors"]
        assert "begin_create" in getattr(errors[-1], "errors", "")
    finally:
        await store.close()
