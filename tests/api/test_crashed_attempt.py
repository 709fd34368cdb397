"""A retry of a create whose process died in its first provider call (issue 11's crash test).

The attempt that died gave nothing up: its lease lapses and the key's pin records no
provider it sent to. Routing may rank another provider first by the time the merchant
retries (circuits, learned approval rates); the provider the dead attempt was calling may hold
a session for the key, so the retry must go back there first (the provider replays it) rather
than open a second provider session elsewhere. The claim records that provider as the pin's
``first`` before any call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.domain.models import parse_checkout_request
from gateway.domain.session import utcnow
from gateway.idempotency import fingerprint, session_id_for
from gateway.store.base import ClaimKind, CreatePin
from tests.api.conftest import GatewayFactory, headers
from tests.api.test_failover import card_order, sandbox_state

LEASE_MS = 200


async def die_while_calling(store: Any, key: str, body: dict[str, Any], provider: str) -> None:
    """What an attempt leaves when its process is killed while calling ``provider`` first:
    a claim whose lease runs out, with a pin naming ``provider`` and nothing sent."""
    request = parse_checkout_request(orjson.dumps(body), allow_http_localhost=True)
    begun = await store.begin_create(
        "merchant-1",
        key,
        fingerprint(request),
        token="dead-process",
        lease_ms=LEASE_MS,
        order_ref=None,
        pin=CreatePin(created_at=utcnow(), request_id="req-dead", first=provider),
        pin_ttl_ms=86_400_000,
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)


@pytest.mark.parametrize(
    "store_kind",
    [
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
async def test_a_retry_goes_first_where_the_dead_attempt_was_calling(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any, store_kind: str
) -> None:
    store = await store_factory(store_kind)
    client = await gateway(store=store, order_reference_guard=False)
    body = card_order("ORD-DEAD")  # routing ranks stripe first, adyen is eligible too
    fresh = await client.post("/api/v1/sessions", json=card_order("ORD-A"), headers=headers("a"))
    assert (await fresh.json())["routing"]["selectedProvider"] == "stripe"
    await die_while_calling(store, "dead", body, "adyen")

    retry = await client.post("/api/v1/sessions", json=body, headers=headers("dead"))
    assert retry.status == 201, await retry.text()
    answer = await retry.json()
    assert answer["routing"]["selectedProvider"] == "adyen"
    assert [a["provider"] for a in answer["routing"]["attempts"]] == ["adyen"]
    session_id = session_id_for("merchant-1", "dead")
    created = [
        (provider, s.gateway_session_id)
        for provider, sessions in sandbox_state(sandbox).sessions.items()
        for s in sessions.values()
        if s.gateway_session_id == session_id
    ]
    assert created == [("adyen", session_id)]


def test_the_pin_keeps_its_first_provider_and_a_given_up_attempt_s_record_wins() -> None:
    pin = CreatePin(created_at=utcnow(), request_id="r", first="stripe")
    stored = pin.to_json()
    assert CreatePin.from_json(stored).first == "stripe"
    # died without giving up: nothing recorded, the retry goes back to the first provider
    assert CreatePin.from_json(stored).resumed().sent == ("stripe",)
    # gave up cleanly: what it recorded is exact (stripe created nothing, paypal may hold one)
    assert CreatePin.from_json(stored, "paypal").resumed().sent == ("paypal",)
    # pins written before ``first`` existed read as before
    old = b'{"at":"2026-12-01T10:00:00+00:00","rid":"r"}'
    assert CreatePin.from_json(old).resumed().sent == ()
