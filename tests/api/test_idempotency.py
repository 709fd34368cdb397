"""Idempotency over HTTP: replay, mismatch, in-flight, release on failure, and races."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gateway.idempotency import RecentDurations, in_flight_retry_after
from gateway.store.base import RecordStore
from tests.api.conftest import SEED_BYTES, GatewayFactory, headers, seed
from tests.api.test_failover import sandbox_state
from tests.api.test_retry_after_timeout import until


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


@pytest.mark.parametrize(
    ("remaining_ms", "typical_s", "expected"),
    [
        (59_800, None, 15),  # just claimed, nothing known: up to the deadline (15 s)
        (50_000, None, 5),  # held 10 s of a 15 s deadline
        (59_800, 1.2, 1),  # typical create 1.2 s, held 0.2 s
        (59_000, 3.5, 3),  # typical 3.5 s, held 1 s: ceil(2.5)
        (55_000, 1.2, 10),  # slower than typical (held 5 s): back to the deadline
        (45_500, 1.2, 1),  # 0.5 s before the deadline: at least 1 s
        (40_000, None, 40),  # held past the deadline: its process died, the lease frees it
        (800, None, 1),  # never past the lease
        (2_500, 9.0, 3),
    ],
)
def test_the_in_flight_retry_after_hint(
    remaining_ms: int, typical_s: float | None, expected: int
) -> None:
    hint = in_flight_retry_after(remaining_ms, lease_s=60, deadline_s=15, typical_s=typical_s)
    assert hint == expected


def test_recent_durations_give_a_p95_once_there_are_enough() -> None:
    durations = RecentDurations(size=100, minimum=10)
    for value in range(1, 10):
        durations.add(value / 10)
    assert durations.p95() is None
    for value in range(10, 101):
        durations.add(value / 10)
    assert durations.p95() == 9.5
    for _ in range(100):
        durations.add(0.2)  # the window forgets older samples
    assert durations.p95() == 0.2


async def test_in_flight_retry_after_follows_the_typical_create_not_the_lease(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    client = await gateway(idempotency_lease_seconds=60)  # request deadline: 5 s
    await fault(sandbox, latencyMs=400)

    async def duplicate_while_in_flight(key: str) -> int:
        first = asyncio.create_task(
            client.post("/api/v1/sessions", json=seed(orderReference=key), headers=headers(key))
        )
        await asyncio.sleep(0.15)
        second = await client.post(
            "/api/v1/sessions", json=seed(orderReference=key), headers=headers(key)
        )
        assert second.status == 409
        assert (await first).status == 201
        return int(second.headers["Retry-After"])

    assert await duplicate_while_in_flight("cold") == 5  # no history: the deadline, not 60 s
    warm_up = await asyncio.gather(
        *(
            client.post(
                "/api/v1/sessions", json=seed(orderReference=f"w{n}"), headers=headers(f"w{n}")
            )
            for n in range(10)
        )
    )
    assert [r.status for r in warm_up] == [201] * 10
    assert await duplicate_while_in_flight("warm") <= 2  # creates take ~0.4 s here


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
    created = await retried.json()
    chosen = created["routing"]["selectedProvider"]
    # every provider answered 500 to the first attempt and so may hold a session for the key:
    # the others are orphans, which the clean-up re-sends the pinned create (one session per
    # provider and key at most) and expires
    created_at = await sandbox_created(sandbox)
    assert created_at[chosen] == 1
    assert all(count <= 1 for count in created_at.values())
    state = sandbox_state(sandbox)
    url = f"/api/v1/sessions/{created['sessionId']}"
    answered = (await (await client.get(url, headers=headers(None))).json())["providerSessionId"]

    async def only_the_answered_one_is_open() -> bool:
        held = [
            s
            for sessions in state.sessions.values()
            for s in sessions.values()
            if s.gateway_session_id == created["sessionId"]
        ]
        return [s.id for s in held if s.status == "open"] == [answered]

    await until(only_the_answered_one_is_open)


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
    store: RecordStore = await store_factory(store_kind)
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
