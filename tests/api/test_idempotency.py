"""Idempotency over HTTP: replay, mismatch, in-flight, release on failure, and races."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gateway.store.base import Store
from tests.api.conftest import SEED_BYTES, GatewayFactory, headers, seed


async def sandbox_created(sandbox: Any) -> dict[str, int]:
    async with aiohttp.ClientSession() as http:
        answer = await http.get(str(sandbox.make_url("/sandbox/admin/stats")))
        stats: dict[str, int] = (await answer.json())["sessionsCreated"]
        return stats


async def fault(sandbox: Any, **faults: Any) -> None:
    async with aiohttp.ClientSession() as http:
        for provider in ("stripe", "adyen", "paypal"):
            answer = await http.post(
                str(sandbox.make_url("/sandbox/admin/faults")),
                json={"provider": provider, **faults},
            )
            assert answer.status == 200


async def clear_faults(sandbox: Any) -> None:
    async with aiohttp.ClientSession() as http:
        await http.delete(str(sandbox.make_url("/sandbox/admin/faults")))


async def test_replay_returns_the_same_bytes(gateway: GatewayFactory, sandbox: Any) -> None:
    client = await gateway()
    first = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("replay"))
    first_bytes = await first.read()
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    # same body with other key order and whitespace is the same request
    reordered = b'{"currency":"AUD",' + SEED_BYTES.strip()[1:].replace(b'"currency": "AUD",', b"")
    second = await client.post("/api/v1/sessions", data=reordered, headers=headers("replay"))
    assert second.status == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert await second.read() == first_bytes
    assert second.headers["Location"] == first.headers["Location"]
    assert sum((await sandbox_created(sandbox)).values()) == 1


async def test_keys_are_scoped_per_merchant(gateway: GatewayFactory) -> None:
    client = await gateway()
    a = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("k", "m-a"))
    b = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("k", "m-b"))
    assert a.status == b.status == 201
    assert (await a.json())["sessionId"] != (await b.json())["sessionId"]
    assert "Idempotent-Replayed" not in b.headers


async def test_validation_failure_stores_nothing(gateway: GatewayFactory) -> None:
    client = await gateway()
    bad = seed(amount={"total": 1, "shipping": 0, "tax": 0})
    assert (await client.post("/api/v1/sessions", json=bad, headers=headers("fixme"))).status == 400
    fixed = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("fixme"))
    assert fixed.status == 201
    assert "Idempotent-Replayed" not in fixed.headers


async def test_in_flight_duplicate_gets_409_with_retry_after(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    client = await gateway()
    await fault(sandbox, latencyMs=800)
    first = asyncio.create_task(
        client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("slow"))
    )
    await asyncio.sleep(0.3)
    second = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("slow"))
    assert second.status == 409
    assert int(second.headers["Retry-After"]) >= 1
    body = await second.json()
    assert body["error"] == "Conflict"
    assert "still being processed" in body["details"]
    assert (await first).status == 201


async def test_failed_request_releases_the_key_and_retry_reuses_provider_session(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    client = await gateway()
    await fault(sandbox, errorRate=1.0)
    failed = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("retry"))
    assert failed.status == 502
    await clear_faults(sandbox)
    retried = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("retry"))
    assert retried.status == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert sum((await sandbox_created(sandbox)).values()) == 1


async def _storm(client: Any, n: int, key: str) -> tuple[Counter[int], set[str]]:
    responses = await asyncio.gather(
        *(client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers(key)) for _ in range(n))
    )
    statuses: Counter[int] = Counter()
    session_ids: set[str] = set()
    for response in responses:
        statuses[response.status] += 1
        if response.status == 201:
            session_ids.add((await response.json())["sessionId"])
        else:
            assert response.status == 409, await response.text()
            assert "Retry-After" in response.headers
    return statuses, session_ids


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_fifty_simultaneous_identical_requests_make_one_session(
    gateway: GatewayFactory, sandbox: Any, store_kind: str, store_factory: Any
) -> None:
    store: Store = await store_factory(store_kind)
    client = await gateway(store=store)
    await fault(sandbox, latencyMs=50)
    statuses, session_ids = await _storm(client, 50, "storm")
    assert len(session_ids) == 1
    assert statuses[201] >= 1
    assert statuses[201] + statuses[409] == 50
    assert sum((await sandbox_created(sandbox)).values()) == 1
    # after the dust settles, everyone gets the replay
    await clear_faults(sandbox)
    again, ids = await _storm(client, 10, "storm")
    assert again == Counter({201: 10})
    assert ids == session_ids
