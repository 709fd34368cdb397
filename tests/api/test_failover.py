"""Failover between providers and per-provider circuit breakers, against the sandbox's faults.

Whatever sequence of failures and retries, there is never more than one provider session per
Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gateway.store.base import RecordStore
from tests.api.conftest import GatewayFactory, headers, seed

# long enough for the checks made while the circuit is open on a loaded machine
OPEN_S = 3.0


async def admin(sandbox: Any, method: str, path: str, **kwargs: Any) -> Any:
    async with aiohttp.ClientSession() as http:
        answer = await http.request(
            method, str(sandbox.make_url(f"/sandbox/admin/{path}")), **kwargs
        )
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def fault(sandbox: Any, provider: str, **faults: Any) -> None:
    await admin(sandbox, "POST", "faults", json={"provider": provider, **faults})


async def created_count(sandbox: Any) -> int:
    stats = await admin(sandbox, "GET", "stats")
    return sum(stats["sessionsCreated"].values())


async def ranking(client: Any, body: dict[str, Any]) -> list[str]:
    answer = await client.post("/api/v1/routing/simulate", json=body, headers=headers(None))
    assert answer.status == 200, await answer.text()
    return [c["provider"] for c in (await answer.json())["candidates"]]


def card_order(ref: str) -> dict[str, Any]:
    # a EUR card order from Germany: stripe and adyen both eligible, no split, no pin
    body = seed(orderReference=ref, currency="EUR")
    body["customer"]["billingAddress"]["country"] = "DE"
    body["customer"]["shippingAddress"]["country"] = "DE"
    return body


@pytest.mark.parametrize(
    ("faults", "outcome"),
    [
        ({"down": True}, "unavailable"),
        ({"errorRate": 1.0}, "unavailable"),
        ({"rateLimitRate": 1.0}, "rate_limited"),
        ({"latencyMs": 1500}, "timeout"),
    ],
    ids=["down", "5xx", "429", "slow"],
)
async def test_fails_over_to_the_next_candidate(
    gateway: GatewayFactory, sandbox: Any, faults: dict[str, Any], outcome: str
) -> None:
    client = await gateway(provider_timeout_seconds=0.5, request_deadline_seconds=5)
    body = card_order("ORD-FO-1")
    first, second = (await ranking(client, body))[:2]
    await fault(sandbox, first, **faults)
    response = await client.post("/api/v1/sessions", json=body, headers=headers("fo-1"))
    assert response.status == 201, await response.text()
    routing = (await response.json())["routing"]
    assert routing["selectedProvider"] == second
    assert [(a["provider"], a["outcome"]) for a in routing["attempts"]] == [
        (first, outcome),
        (second, "created"),
    ]
    assert all(a["durationMs"] >= 0 for a in routing["attempts"])
    assert await created_count(sandbox) == 1


async def test_a_rejection_does_not_fail_over_unless_allowed(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    body = card_order("ORD-REJ")
    strict = await gateway(provider_stripe_api_key="sk_test_wrong", provider_adyen_api_key="bad")
    first = (await ranking(strict, body))[0]
    response = await strict.post("/api/v1/sessions", json=body, headers=headers("rej"))
    assert response.status == 502
    details = (await response.json())["details"]
    assert [a["outcome"] for a in details["attempts"]] == ["rejected"]
    assert details["providerError"]["provider"] == first
    assert details["providerError"]["status"] == 401

    lenient = await gateway(provider_stripe_api_key="sk_test_wrong", failover_on_rejection=True)
    body2 = card_order("ORD-REJ-2")
    order = await ranking(lenient, body2)
    response = await lenient.post("/api/v1/sessions", json=body2, headers=headers("rej-2"))
    assert response.status == 201, await response.text()
    attempts = (await response.json())["routing"]["attempts"]
    if order[0] == "stripe":
        assert [a["outcome"] for a in attempts] == ["rejected", "created"]
    else:
        assert [a["outcome"] for a in attempts] == ["created"]


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_circuit_opens_excludes_the_provider_then_recovers(
    gateway: GatewayFactory,
    sandbox: Any,
    store_factory: Any,
    coordination_factory: Any,
    store_kind: str,
) -> None:
    store: RecordStore = await store_factory(store_kind)
    client = await gateway(
        store=store,
        coordination=await coordination_factory(store_kind),
        circuit_failure_threshold=2,
        circuit_open_seconds=OPEN_S,
        circuit_window_seconds=30,
    )
    probe = card_order("ORD-CB-0")
    first = (await ranking(client, probe))[0]
    await fault(sandbox, first, errorRate=1.0)
    answer = await client.post(
        "/api/v1/sessions", json=card_order("ORD-CB-0"), headers=headers("cb-0")
    )
    assert answer.status == 201
    assert (await answer.json())["routing"]["attempts"][0]["outcome"] == "unavailable"
    # the second failure opens the circuit: another create's, or the orphan clean-up's call
    # expiring the session the failed create may have left at the provider (whichever is first)
    for i in range(1, 5):
        decision = await (
            await client.post(
                "/api/v1/routing/simulate", json=card_order("ORD-CB-X"), headers=headers(None)
            )
        ).json()
        if first in {e["provider"] for e in decision["excluded"]}:
            break
        answer = await client.post(
            "/api/v1/sessions", json=card_order(f"ORD-CB-{i}"), headers=headers(f"cb-{i}")
        )
        assert answer.status == 201
    opened_at = time.monotonic()  # at the latest
    # open: the provider is no longer a candidate, nothing is sent to it
    assert first in {e["provider"] for e in decision["excluded"]}
    assert any("circuit open" in e["reason"] for e in decision["excluded"])
    answer = await client.post(
        "/api/v1/sessions", json=card_order("ORD-CB-2"), headers=headers("cb-2")
    )
    assert [a["provider"] for a in (await answer.json())["routing"]["attempts"]] != [first]
    assert first not in [a["provider"] for a in (await answer.json())["routing"]["attempts"]]
    # half-open after the open period: the provider recovered, a probe closes the circuit
    # (learning may now rank the other provider first: take it down so the probe must happen)
    await admin(sandbox, "DELETE", "faults")
    other = "adyen" if first == "stripe" else "stripe"
    await fault(sandbox, other, down=True)
    # the open period counts from the second failure, whatever the requests since then took
    await asyncio.sleep(max(0.0, opened_at + OPEN_S + 0.6 - time.monotonic()))
    answer = await client.post(
        "/api/v1/sessions", json=card_order("ORD-CB-3"), headers=headers("cb-3")
    )
    attempts = (await answer.json())["routing"]["attempts"]
    assert (attempts[-1]["provider"], attempts[-1]["outcome"]) == (first, "created")
    # closed again once the circuit cache refreshes (once a second)
    deadline = time.monotonic() + 5
    while True:
        decision = await (
            await client.post(
                "/api/v1/routing/simulate", json=card_order("ORD-CB-Y"), headers=headers(None)
            )
        ).json()
        excluded = {e["provider"] for e in decision["excluded"]}
        if first not in excluded or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert first not in excluded


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
@pytest.mark.timeout(120)
async def test_flapping_providers_never_make_two_sessions_per_key(
    gateway: GatewayFactory,
    sandbox: Any,
    store_factory: Any,
    coordination_factory: Any,
    store_kind: str,
) -> None:
    store: RecordStore = await store_factory(store_kind)
    client = await gateway(
        store=store,
        coordination=await coordination_factory(store_kind),
        provider_timeout_seconds=0.3,
        request_deadline_seconds=0.8,
        circuit_failure_threshold=1000,
    )
    rng = random.Random(11)
    states: list[dict[str, Any]] = [
        {},
        {"errorRate": 0.5},
        {"rateLimitRate": 0.5},
        {"latencyMs": 400},
        {"down": True},
    ]
    stop = asyncio.Event()

    async def flap() -> None:
        while not stop.is_set():
            for provider in ("stripe", "adyen"):
                await fault(sandbox, provider, **rng.choice(states))
            await asyncio.sleep(0.15)

    keys = [f"flap-{i}" for i in range(20)]
    session_of: dict[str, str] = {}

    async def until_created(key: str, ref: str) -> None:
        for _ in range(200):
            answer = await client.post(
                "/api/v1/sessions", json=card_order(ref), headers=headers(key)
            )
            body = await answer.json()
            if answer.status == 201:
                assert session_of.setdefault(key, body["sessionId"]) == body["sessionId"]
                return
            assert answer.status in (409, 502, 504), body
            await asyncio.sleep(0.05)
        raise AssertionError(f"{key} never succeeded")

    flapper = asyncio.create_task(flap())
    try:
        await asyncio.gather(*(until_created(k, f"ORD-FLAP-{i}") for i, k in enumerate(keys)))
    finally:
        stop.set()
        await flapper
    # every key once more: replays, no new provider sessions
    await admin(sandbox, "DELETE", "faults")
    for i, key in enumerate(keys):
        answer = await client.post(
            "/api/v1/sessions", json=card_order(f"ORD-FLAP-{i}"), headers=headers(key)
        )
        assert answer.status == 201
        assert (await answer.json())["sessionId"] == session_of[key]
    # per provider, at most one provider session per gateway session (= per key); a call that
    # timed out may have left one at another provider, which the customer never sees
    state = sandbox_state(sandbox)
    for provider, sessions in state.sessions.items():
        ids = Counter(s.gateway_session_id for s in sessions.values())
        assert all(n == 1 for n in ids.values()), (provider, ids)
    assert len(set(session_of.values())) == len(keys)
    view_providers = set()
    for key, session_id in session_of.items():
        view = await (
            await client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))
        ).json()
        view_providers.add(view["provider"])
        held = state.sessions[view["provider"]][view["providerSessionId"]]
        assert held.gateway_session_id == session_id, key


def sandbox_state(sandbox: Any) -> Any:
    from aiohttp.web_urldispatcher import PrefixedSubAppResource

    from providers.sandbox.state import SANDBOX_STATE

    for resource in sandbox.app.router.resources():
        if isinstance(resource, PrefixedSubAppResource):
            return resource._app[SANDBOX_STATE]
    raise AssertionError("no sandbox sub-app")
