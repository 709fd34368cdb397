"""A Redis create writes its session, then binds the order reservation in another cluster slot
(:mod:`gateway.store.redis_create`). When the binding fails after the session was written, the
order must stay guarded by that session: a second Idempotency-Key for the order is refused
while the session can be paid, and the first key's retry answers the session it wrote."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.idempotency import session_id_for
from gateway.store.base import StoreUnavailable
from gateway.store.redis import RedisStore
from tests.api.conftest import GatewayFactory, headers
from tests.api.test_failover import card_order, sandbox_state


@pytest.mark.redis
async def test_a_failed_binding_leaves_the_order_guarded_by_the_written_session(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: RedisStore = await store_factory("redis")
    client = await gateway(store=store)
    binding = store._commit_order

    async def lost(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("redis commit_create failed: ConnectionError: connection lost")

    monkeypatch.setattr(store, "_commit_order", lost)
    body = card_order("ORD-BIND")
    first = await client.post("/api/v1/sessions", json=body, headers=headers("bind-1"))
    assert first.status == 503, await first.text()
    written = session_id_for("merchant-1", "bind-1")
    assert await store.get_session(written) is not None  # A ran, B did not
    monkeypatch.setattr(store, "_commit_order", binding)

    other = await client.post("/api/v1/sessions", json=body, headers=headers("bind-2"))
    assert other.status == 409, await other.text()
    assert (await other.json())["sessionId"] == written

    retry = await client.post("/api/v1/sessions", json=body, headers=headers("bind-1"))
    assert retry.status == 201, await retry.text()
    assert (await retry.json())["sessionId"] == written
    again = await client.post("/api/v1/sessions", json=body, headers=headers("bind-3"))
    assert again.status == 409
    assert (await again.json())["sessionId"] == written
    created = [
        s.gateway_session_id
        for sessions in sandbox_state(sandbox).sessions.values()
        for s in sessions.values()
    ]
    assert created == [written]  # one provider session for the order


@pytest.mark.redis
async def test_a_session_answered_201_after_a_failed_binding_is_found_by_its_order(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B (the order binding and the orderReference index) is refused after A wrote the
    session and completed the key (a WAIT short of replicas, a Sentinel failover hold, a
    crash): the merchant's retry is answered 201 from the key, and the session must then be
    listed by ``GET /api/v1/sessions?orderReference=`` like every session of the order."""
    store: RedisStore = await store_factory("redis")
    client = await gateway(store=store)
    binding = store._commit_order

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("redis write reached 0 of 1 replicas within 500 ms")

    monkeypatch.setattr(store, "_commit_order", refused)
    body = card_order("ORD-INDEX")
    first = await client.post("/api/v1/sessions", json=body, headers=headers("index-1"))
    assert first.status == 503, await first.text()
    monkeypatch.setattr(store, "_commit_order", binding)
    retry = await client.post("/api/v1/sessions", json=body, headers=headers("index-1"))
    assert retry.status == 201, await retry.text()
    written = (await retry.json())["sessionId"]

    found = await client.get(
        "/api/v1/sessions", params={"orderReference": "ORD-INDEX"}, headers=headers(None)
    )
    assert found.status == 200, await found.text()
    assert [s["sessionId"] for s in (await found.json())["data"]] == [written]
