"""A create routes before its idempotency claim; routing must never stand between a key and
its recorded answer. With every eligible provider's circuit open, a completed key still replays
its 201, a key in flight still answers 409, another body under a used key still 422
IDEMPOTENCY_KEY_MISMATCH; a create that finds no candidate claims nothing, so its retry after
the provider recovers creates normally (and its order reference was never held)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.domain.models import CheckoutRequest
from gateway.idempotency import fingerprint
from gateway.store.base import ClaimKind, RecordStore
from tests.api.conftest import GatewayFactory, headers
from tests.api.test_providers_down import _fault, _wallet_order

OPEN_S = 1.5


@pytest.mark.parametrize("store_kind", ["memory", "postgres"])
async def test_open_circuits_neither_fail_a_replay_nor_leave_a_claim(
    gateway: GatewayFactory,
    sandbox: Any,
    store_factory: Any,
    store_kind: str,
) -> None:
    store: RecordStore = await store_factory(store_kind)
    client = await gateway(store=store, circuit_failure_threshold=1, circuit_open_seconds=OPEN_S)
    done = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-R-1"), headers=headers("r-1")
    )
    assert done.status == 201, await done.text()
    first = await done.read()
    held_order = CheckoutRequest.model_validate(_wallet_order("ORD-R-9"))
    # a crashed process's claim on another key, leased for a minute
    held = await store.begin_create(
        "merchant-1",
        "r-held",
        fingerprint(held_order),
        token="t" * 32,
        lease_ms=60_000,
        order_ref=None,
    )
    assert held.claim.kind is ClaimKind.CLAIMED

    await _fault(sandbox, "paypal", down=True)
    opened = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-R-2"), headers=headers("r-2")
    )
    assert opened.status == 502  # the failed call opened PayPal's circuit

    replay = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-R-1"), headers=headers("r-1")
    )
    assert replay.status == 201, await replay.text()
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert await replay.read() == first
    busy = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-R-9"), headers=headers("r-held")
    )
    assert busy.status == 409, await busy.text()
    other = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-R-other"), headers=headers("r-1")
    )
    assert other.status == 422, await other.text()
    assert (await other.json())["code"] == "IDEMPOTENCY_KEY_MISMATCH"

    refused = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-R-3"), headers=headers("r-3")
    )
    assert refused.status == 503, await refused.text()
    elsewhere = await client.post(
        "/api/v1/sessions", json=_wallet_order("ORD-R-3"), headers=headers("r-3b")
    )
    assert elsewhere.status == 503, await elsewhere.text()  # not 409: the order is not held
    await _fault(sandbox, "paypal", down=False)
    # the merchant retries the key until the circuit lets it through: each 503 held nothing
    for _ in range(100):
        retry = await client.post(
            "/api/v1/sessions", json=_wallet_order("ORD-R-3"), headers=headers("r-3")
        )
        if retry.status != 503:
            break
        await asyncio.sleep(0.05)
    assert retry.status == 201, await retry.text()
    assert retry.headers.get("Idempotent-Replayed") is None
