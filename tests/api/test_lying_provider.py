"""Part 1 against a provider that lies (issue 10).

A fake Stripe, honest about idempotency (the first answer under a key is saved and replayed,
whatever it was, as Stripe documents) but not about what it did: it *creates* the session and
then answers 500, or it answers a replay with another session than the first one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.idempotency import session_id_for
from tests.api.conftest import GatewayFactory, headers
from tests.api.test_failover import card_order, fault, sandbox_state


@dataclass
class LyingStripe:
    """``mode``: ``create_then_500`` or ``new_session_on_replay``."""

    mode: str
    created: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    saved: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    first_delay_s: float = 0.0
    _ids: Any = field(default_factory=itertools.count)

    def _session(self, request: web.Request) -> bytes:
        session_id = f"cs_test_lie{next(self._ids)}"
        self.created.append(session_id)
        return orjson.dumps(
            {
                "id": session_id,
                "object": "checkout.session",
                "url": f"https://checkout.stripe.test/pay/{session_id}",
                "status": "open",
                "expires_at": 4_000_000_000,
            }
        )

    async def create(self, request: web.Request) -> web.Response:
        await request.read()
        key = request.headers["Idempotency-Key"]
        if key in self.saved and self.mode != "new_session_on_replay":
            status, body = self.saved[key]
            return web.Response(status=status, body=body, content_type="application/json")
        first = key not in self.saved
        body = self._session(request)
        status = 200
        if self.mode == "create_then_500":
            status = 500
            body = orjson.dumps({"error": {"type": "api_error", "message": "oops"}})
        self.saved.setdefault(key, (status, body))
        if first and self.first_delay_s:
            await asyncio.sleep(self.first_delay_s)  # created, answered late
        return web.Response(status=status, body=body, content_type="application/json")

    async def expire(self, request: web.Request) -> web.Response:
        self.expired.append(request.match_info["id"])
        return web.json_response({"id": request.match_info["id"], "status": "expired"})


Server = Callable[[web.Application], Awaitable[Any]]


async def start(fake: LyingStripe, aiohttp_server: Server) -> str:
    app = web.Application()
    app.router.add_post("/v1/checkout/sessions", fake.create)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", fake.expire)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_a_session_created_before_a_5xx_is_recorded_as_an_orphan(
    gateway: GatewayFactory,
    sandbox: Any,
    aiohttp_server: Server,
    store_factory: Any,
    store_kind: str,
) -> None:
    """Stripe creates the session and answers 500; the gateway fails over to Adyen. Stripe's
    session may be payable: it must be on the record (and the retry of the key must go back to
    Stripe first), never silently forgotten."""
    fake = LyingStripe("create_then_500")
    store = await store_factory(store_kind)
    client = await gateway(
        store=store,
        provider_stripe_base_url=await start(fake, aiohttp_server),
        expiry_sweep_interval_seconds=0.1,
    )
    created = await client.post(
        "/api/v1/sessions", json=card_order("ORD-LIE-500"), headers=headers("lie-500")
    )
    assert created.status == 201, await created.text()
    answer = await created.json()
    assert [(a["provider"], a["outcome"]) for a in answer["routing"]["attempts"]] == [
        ("stripe", "unavailable"),
        ("adyen", "created"),
    ]
    assert len(fake.created) == 1
    session_id = session_id_for("merchant-1", "lie-500")
    view = await (await client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))).json()
    assert [(o["provider"], o["outcome"]) for o in view["orphans"]] == [("stripe", "unavailable")]

    # the clean-up keeps asking Stripe, which keeps replaying its 500: the orphan stays open
    # (visible for reconciliation), and no second Stripe session is ever made
    await asyncio.sleep(0.5)
    view = await (await client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))).json()
    assert view["orphans"][0]["status"] == "open"
    assert len(fake.created) == 1
    assert sandbox_state(sandbox).sessions_created == {"adyen": 1}


async def test_a_retry_after_a_5xx_goes_back_to_the_provider_first(
    gateway: GatewayFactory, sandbox: Any, aiohttp_server: Server
) -> None:
    """Stripe created and answered 500, Adyen was down: 502. The retry asks Stripe first (it
    may hold the session); Stripe replays its 500 and the retry fails over to Adyen, now up."""
    fake = LyingStripe("create_then_500")
    client = await gateway(provider_stripe_base_url=await start(fake, aiohttp_server))
    await fault(sandbox, "adyen", down=True)
    body = card_order("ORD-LIE-500-RETRY")
    first = await client.post("/api/v1/sessions", json=body, headers=headers("lie-500-r"))
    assert first.status == 502, await first.text()
    await fault(sandbox, "adyen", down=False)
    retry = await client.post("/api/v1/sessions", json=body, headers=headers("lie-500-r"))
    assert retry.status == 201, await retry.text()
    attempts = (await retry.json())["routing"]["attempts"]
    assert [(a["provider"], a["outcome"]) for a in attempts] == [
        ("stripe", "unavailable"),
        ("adyen", "created"),
    ]
    assert len(fake.created) == 1


async def test_a_provider_answering_a_replay_with_another_session_changes_nothing_acknowledged(
    gateway: GatewayFactory, sandbox: Any, aiohttp_server: Server
) -> None:
    """The first call times out (Stripe answers late); Stripe answers the retry with a new
    session instead of replaying. The merchant still gets one sessionId, and the acknowledged
    201 is what every later replay returns, byte for byte."""
    fake = LyingStripe("new_session_on_replay", first_delay_s=1.0)
    client = await gateway(
        provider_stripe_base_url=await start(fake, aiohttp_server), provider_timeout_seconds=0.3
    )
    await fault(sandbox, "adyen", down=True)
    body = card_order("ORD-LIE-REPLAY")
    first = await client.post("/api/v1/sessions", json=body, headers=headers("lie-replay"))
    assert first.status in (502, 504)
    assert len(fake.created) == 1
    retry = await client.post("/api/v1/sessions", json=body, headers=headers("lie-replay"))
    assert retry.status == 201, await retry.text()
    acknowledged = await retry.read()
    answer = orjson.loads(acknowledged)
    assert answer["sessionId"] == session_id_for("merchant-1", "lie-replay")
    view = await (
        await client.get(f"/api/v1/sessions/{answer['sessionId']}", headers=headers(None))
    ).json()
    assert view["providerSessionId"] == fake.created[-1]
    for _ in range(3):
        again = await client.post("/api/v1/sessions", json=body, headers=headers("lie-replay"))
        assert again.status == 201
        assert await again.read() == acknowledged
    assert len(fake.created) == 2  # the lie: the gateway asked Stripe only twice
