"""A create whose process stalls past its lease after the provider answered (a long GC or VM
pause, a SIGSTOP): meanwhile its order reservation lapsed, and another Idempotency-Key of the
order found no session behind it, took the order over and was answered 201. The stalled create
must not then write its own session and answer 201 too: that would leave the order two payable
sessions. It answers 503 instead (its key keeps the pin: a retry replays the provider's session
and is told the order is taken)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.attempts import ProviderAttempts
from tests.api.conftest import GatewayFactory, headers
from tests.api.test_failover import card_order

LEASE_S = 5  # the smallest lease the settings allow


@pytest.mark.parametrize(
    "store_kind",
    [
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
async def test_a_create_stalled_past_its_lease_never_gives_its_order_a_second_session(
    gateway: GatewayFactory,
    sandbox: Any,
    store_factory: Any,
    store_kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = await store_factory(store_kind)
    client = await gateway(
        store=store, idempotency_lease_seconds=LEASE_S, request_deadline_seconds=LEASE_S
    )
    run = ProviderAttempts.run
    stalled: list[bool] = []

    async def stalls_once(self: ProviderAttempts, *args: Any, **kwargs: Any) -> Any:
        result = await run(self, *args, **kwargs)
        if not stalled:  # the first create: its provider session exists, then it stalls
            stalled.append(True)
            await asyncio.sleep(LEASE_S + 0.5)
        return result

    monkeypatch.setattr(ProviderAttempts, "run", stalls_once)
    body = card_order("ORD-LATE")
    late = asyncio.ensure_future(
        client.post("/api/v1/sessions", json=body, headers=headers("late-1"))
    )
    await asyncio.sleep(LEASE_S + 0.2)  # the first create's reservation has lapsed
    other = await client.post("/api/v1/sessions", json=body, headers=headers("late-2"))
    assert other.status == 201, await other.text()
    taken = (await other.json())["sessionId"]

    first = await late
    assert first.status == 503, await first.text()
    found = await client.get(
        "/api/v1/sessions", params={"orderReference": "ORD-LATE"}, headers=headers(None)
    )
    assert [s["sessionId"] for s in (await found.json())["data"]] == [taken]
    retry = await client.post("/api/v1/sessions", json=body, headers=headers("late-1"))
    assert retry.status == 409, await retry.text()
    assert (await retry.json())["sessionId"] == taken
