"""A retry after a provider answered too late gets the provider's session back (issue 10).

The sandbox's ``processingMs`` fault makes the provider create the session *after* the
gateway's per-call timeout: the gateway answers 502/504 and gives the key up, the provider
keeps the session. The merchant's retry with the same Idempotency-Key and body must re-send
the provider the very same request (same derived key, same parameters), so the provider
replays the session it created instead of refusing the reused key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.idempotency import session_id_for
from gateway.metrics import ORPHAN_SESSIONS
from gateway.store.base import RecordStore
from tests.api.conftest import GatewayFactory, headers, seed
from tests.api.test_failover import admin, card_order, fault, sandbox_state
from tests.lifecycle.conftest import pinned_rules
from tests.redis_stores import redis_store
from tests.tcp_proxy import TcpProxy

PROVIDERS = ("stripe", "adyen", "paypal")


def order_for(provider: str, ref: str) -> dict[str, Any]:
    """An order the provider can take (PayPal only takes the paypal method)."""
    if provider == "paypal":
        return seed(orderReference=ref, paymentMethod="paypal")
    return card_order(ref)


def held_by(sandbox: Any, provider: str, session_id: str) -> list[Any]:
    """The sandbox sessions ``provider`` holds for one gateway session."""
    sessions = sandbox_state(sandbox).sessions.get(provider, {}).values()
    return [s for s in sessions if s.gateway_session_id == session_id]


async def until(check: Callable[[], Awaitable[bool]], *, within: float = 10.0) -> None:
    """Poll ``check`` until it holds (the provider finishes on its own clock)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_retry_after_a_late_provider_answer_gets_its_session(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any, store_kind: str, provider: str
) -> None:
    store: RecordStore = await store_factory(store_kind)
    client = await gateway(store=store, provider_timeout_seconds=0.5, request_deadline_seconds=3)
    for other in PROVIDERS:
        if other != provider:
            await fault(sandbox, other, down=True)
    await fault(sandbox, provider, processingMs=1500)
    body = order_for(provider, f"ORD-LATE-{provider}")
    key = f"late-{provider}-{store_kind}"
    session_id = session_id_for("merchant-1", key)

    first = await client.post("/api/v1/sessions", json=body, headers=headers(key))
    assert first.status in (502, 504), await first.text()
    attempts = (await first.json())["details"]["attempts"]
    assert (provider, "timeout") in [(a["provider"], a["outcome"]) for a in attempts]

    async def provider_created() -> bool:
        return len(held_by(sandbox, provider, session_id)) == 1

    await until(provider_created)
    (created,) = held_by(sandbox, provider, session_id)

    # the provider is still slow for new requests: a replay is answered at once
    retry = await client.post("/api/v1/sessions", json=body, headers=headers(key))
    assert retry.status == 201, await retry.text()
    answer = await retry.json()
    assert answer["sessionId"] == session_id
    assert answer["routing"]["selectedProvider"] == provider
    assert answer["routing"]["attempts"][0]["provider"] == provider
    view = await (await client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))).json()
    assert view["providerSessionId"] == created.id
    assert view["orphans"] == []
    assert held_by(sandbox, provider, session_id) == [created]
    assert sandbox_state(sandbox).sessions_created[provider] == 1

    # and from then on the stored answer is replayed
    again = await client.post("/api/v1/sessions", json=body, headers=headers(key))
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await retry.read()


async def test_a_retry_while_the_provider_still_works_is_told_to_come_back(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    client = await gateway(provider_timeout_seconds=0.3, request_deadline_seconds=3)
    await fault(sandbox, "adyen", down=True)
    await fault(sandbox, "stripe", processingMs=1500)
    body = card_order("ORD-STILL")
    first = await client.post("/api/v1/sessions", json=body, headers=headers("still"))
    assert first.status in (502, 504)
    # Stripe still holds the first request: 409 idempotency_key_in_use, never a 502
    busy = await client.post("/api/v1/sessions", json=body, headers=headers("still"))
    assert busy.status == 409, await busy.text()
    assert int(busy.headers["Retry-After"]) >= 1
    error = await busy.json()
    assert error["details"]["providerError"] == {"provider": "stripe", "code": "key_conflict"}
    session_id = session_id_for("merchant-1", "still")

    async def created() -> bool:
        return len(held_by(sandbox, "stripe", session_id)) == 1

    await until(created)
    done = await client.post("/api/v1/sessions", json=body, headers=headers("still"))
    assert done.status == 201, await done.text()
    assert (await done.json())["routing"]["selectedProvider"] == "stripe"
    assert sandbox_state(sandbox).sessions_created["stripe"] == 1


async def test_a_reused_key_with_another_body_after_a_timeout_is_refused(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    """The provider may hold the first body's parameters under the derived key: the key
    stays bound to that body (422), rather than a provider refusal turning into a 502."""
    client = await gateway(provider_timeout_seconds=0.3, request_deadline_seconds=3)
    await fault(sandbox, "adyen", down=True)
    await fault(sandbox, "stripe", processingMs=800)
    first = await client.post(
        "/api/v1/sessions", json=card_order("ORD-BOUND"), headers=headers("bound")
    )
    assert first.status in (502, 504)
    other = await client.post(
        "/api/v1/sessions", json=card_order("ORD-BOUND-2"), headers=headers("bound")
    )
    assert other.status == 422
    assert "different request parameters" in (await other.json())["message"]


async def test_a_stripe_orphan_left_by_a_failover_is_expired_and_cannot_be_paid(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    client = await gateway(provider_timeout_seconds=0.5, request_deadline_seconds=5)
    await fault(sandbox, "stripe", processingMs=1500)
    expired_before = ORPHAN_SESSIONS.labels("stripe", "expired")._value.get()
    body = card_order("ORD-ORPHAN")  # ranked stripe, then adyen
    created = await client.post("/api/v1/sessions", json=body, headers=headers("orphan"))
    assert created.status == 201, await created.text()
    routing = (await created.json())["routing"]
    assert [(a["provider"], a["outcome"]) for a in routing["attempts"]] == [
        ("stripe", "timeout"),
        ("adyen", "created"),
    ]
    session_id = session_id_for("merchant-1", "orphan")
    url = f"/api/v1/sessions/{session_id}"

    async def orphan_expired() -> bool:
        view = await (await client.get(url, headers=headers(None))).json()
        return bool(view["orphans"]) and view["orphans"][0]["status"] == "expired"

    await until(orphan_expired)
    view = await (await client.get(url, headers=headers(None))).json()
    (orphan,) = view["orphans"]
    assert (orphan["provider"], orphan["outcome"]) == ("stripe", "timeout")
    (held,) = held_by(sandbox, "stripe", session_id)
    assert orphan["providerSessionId"] == held.id
    assert held.status == "expired"
    assert ORPHAN_SESSIONS.labels("stripe", "expired")._value.get() == expired_before + 1
    # the customer can never pay it: the hosted page refuses an expired session
    async with aiohttp.ClientSession() as http:
        pay_url = str(sandbox.make_url(f"/sandbox/pay/stripe/{held.id}/pay"))
        async with http.post(pay_url, allow_redirects=False) as page:
            assert page.status == 410
    assert held.status == "expired"
    # the gateway session is Adyen's, still open and payable there
    assert (view["provider"], view["status"]) == ("adyen", "PENDING")
    assert sandbox_state(sandbox).sessions_created["stripe"] == 1
    await admin(sandbox, "DELETE", "faults")


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_the_retry_goes_first_where_the_first_attempt_went(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any, store_kind: str, tmp_path: Path
) -> None:
    """Routing may rank another provider first by the time of the retry (here: another
    process whose rules pin adyen); the provider that may hold the session is tried first,
    so no second session is opened elsewhere."""
    store: RecordStore = await store_factory(store_kind)
    first_process = await gateway(
        store=store, provider_timeout_seconds=0.5, request_deadline_seconds=3
    )
    other_process = await gateway(
        store=store,
        provider_timeout_seconds=0.5,
        request_deadline_seconds=3,
        rules_path=pinned_rules(tmp_path, "adyen"),
    )
    body = card_order("ORD-WHERE")
    assert (await first_choice(first_process, body)) == "stripe"
    assert (await first_choice(other_process, body)) == "adyen"
    await fault(sandbox, "adyen", down=True)
    await fault(sandbox, "stripe", processingMs=1200)
    key = f"where-{store_kind}"
    failed = await first_process.post("/api/v1/sessions", json=body, headers=headers(key))
    assert failed.status in (502, 504)
    session_id = session_id_for("merchant-1", key)

    async def stripe_created() -> bool:
        return len(held_by(sandbox, "stripe", session_id)) == 1

    await until(stripe_created)
    await admin(sandbox, "DELETE", "faults")  # adyen is healthy again, and ranked first there
    retry = await other_process.post("/api/v1/sessions", json=body, headers=headers(key))
    assert retry.status == 201, await retry.text()
    routing = (await retry.json())["routing"]
    assert [(a["provider"], a["outcome"]) for a in routing["attempts"]] == [("stripe", "created")]
    (held,) = held_by(sandbox, "stripe", session_id)
    view = await (
        await other_process.get(f"/api/v1/sessions/{session_id}", headers=headers(None))
    ).json()
    assert view["providerSessionId"] == held.id
    assert held_by(sandbox, "adyen", session_id) == []


async def first_choice(client: Any, body: dict[str, Any]) -> str:
    answer = await client.post("/api/v1/routing/simulate", json=body, headers=headers(None))
    assert answer.status == 200, await answer.text()
    candidates: list[dict[str, Any]] = (await answer.json())["candidates"]
    return str(candidates[0]["provider"])


@pytest.mark.timeout(60)
async def test_a_retry_after_a_redis_outage_mid_create_gets_the_providers_session(
    gateway: GatewayFactory, sandbox: Any, redis_url: str, redis_prefix: str
) -> None:
    """Redis goes away while Stripe creates the session (the create answers 503 and cannot
    even give its claim up); once Redis is back and the lease has run out, the retry re-sends
    the pinned request and gets Stripe's session."""
    target = urlsplit(redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    store = redis_store(f"redis://127.0.0.1:{proxy.port}{target.path}", redis_prefix)
    try:
        client = await gateway(
            store=store,
            provider_timeout_seconds=3,
            request_deadline_seconds=4,
            idempotency_lease_seconds=5,
        )
        for other in ("adyen", "paypal"):
            await fault(sandbox, other, down=True)
        await fault(sandbox, "stripe", processingMs=800)
        body = card_order("ORD-OUTAGE")
        session_id = session_id_for("merchant-1", "outage")
        state = sandbox_state(sandbox)
        create = asyncio.create_task(
            client.post("/api/v1/sessions", json=body, headers=headers("outage"))
        )

        async def stripe_works_on_it() -> bool:
            return bool(state.idempotency.get("stripe"))

        await until(stripe_works_on_it)
        await proxy.stop()
        failed = await create
        assert failed.status == 503, await failed.text()
        assert len(held_by(sandbox, "stripe", session_id)) == 1  # Stripe finished it
        await proxy.start()
        for _ in range(100):  # 409 while the lost claim's lease runs (503: a cut connection)
            retry = await client.post("/api/v1/sessions", json=body, headers=headers("outage"))
            if retry.status not in (409, 503):
                break
            await asyncio.sleep(0.1)
        assert retry.status == 201, await retry.text()
        (held,) = held_by(sandbox, "stripe", session_id)
        view = await (
            await client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))
        ).json()
        assert (view["provider"], view["providerSessionId"]) == ("stripe", held.id)
        assert sum(state.sessions_created.values()) == 1
    finally:
        await store.close()
        await proxy.stop()
