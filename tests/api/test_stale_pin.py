"""A pinned create that has become too old for the provider (issue 10, part 1).

Everything sent under a derived key is pinned at the first attempt, including the time
Stripe's ``expires_at`` derives from. Stripe refuses an ``expires_at`` less than 30 minutes
ahead, so a retry well after a first attempt that never reached Stripe is refused there. A
refusal is not kept under the key, and the first request arriving later would be refused the
same way: Stripe holds no session for the key and never will. The adapter says so
(:class:`~providers.base.RequestExpired`); the merchant gets a defined 422, never a 502 for
the key's whole life, and an orphan job learns there is nothing to expire (``absent``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from gateway.domain.models import parse_checkout_request
from gateway.domain.session import OrphanSession, utcnow
from gateway.idempotency import derived_provider_key, fingerprint, session_id_for
from gateway.orphans import decode_input, encode_input
from gateway.store.base import ClaimKind, Completion, CreatePin, OrphanJob, StoredResponse
from providers.base import CreateSessionInput
from providers.stripe.transformers import build_create_params, encode_form
from tests.api.conftest import GatewayFactory, headers, seed
from tests.api.test_failover import card_order, sandbox_state
from tests.api.test_retry_after_timeout import until
from tests.store.samples import make_session

#: older than Stripe allows for the seed's hour-long expiry (its ``expires_at`` is then less
#: than 30 minutes ahead)
FORTY_FIVE_MINUTES_AGO = timedelta(minutes=45)
TEN_MINUTES_AGO = timedelta(minutes=10)


async def pin_an_old_attempt(store: Any, key: str, body: dict[str, Any], sent: list[str]) -> None:
    """What a first attempt 45 minutes ago left: the key's pin, given up after calling
    ``sent`` (say, a timeout before the request reached the provider)."""
    request = parse_checkout_request(orjson.dumps(body), allow_http_localhost=True)
    assert "expiresIn" not in body  # the default: an hour
    pin = CreatePin(created_at=utcnow() - FORTY_FIVE_MINUTES_AGO, request_id="req-first")
    begun = await store.begin_create(
        "merchant-1",
        key,
        fingerprint(request),
        token="first",
        lease_ms=5000,
        order_ref=None,
        pin=pin,
        pin_ttl_ms=86_400_000,
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    await store.abandon_create("merchant-1", key, "first", sent=sent)


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_a_retry_of_a_pinned_request_too_old_for_stripe_gets_a_defined_422(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any, store_kind: str
) -> None:
    store = await store_factory(store_kind)
    client = await gateway(store=store, order_reference_guard=False)
    body = card_order("ORD-STALE")  # stripe and adyen both eligible
    await pin_an_old_attempt(store, "stale", body, ["stripe"])

    for _ in range(2):  # the same defined answer every time, not a 502 for 24 h
        retry = await client.post("/api/v1/sessions", json=body, headers=headers("stale"))
        assert retry.status == 422, await retry.text()
        error = await retry.json()
        assert error["code"] == "IDEMPOTENCY_KEY_EXPIRED"
        assert "new Idempotency-Key" in error["message"]
        attempts = error["details"]["attempts"]
        # only the provider the first attempt called is asked (it might have replayed a
        # session); Adyen would open a session that expires at once
        assert [(a["provider"], a["outcome"]) for a in attempts] == [("stripe", "request_expired")]
    assert sum(sandbox_state(sandbox).sessions_created.values()) == 0
    # the merchant's way out: a new key
    fresh = await client.post("/api/v1/sessions", json=body, headers=headers("stale-2"))
    assert fresh.status == 201, await fresh.text()


async def test_a_retry_too_old_for_stripe_still_gets_the_session_another_provider_holds(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any
) -> None:
    """The first attempt called Stripe (never arrived) and then Adyen: Adyen may hold the
    session, so it is asked after Stripe's refusal and its session is the answer."""
    store = await store_factory("memory")
    client = await gateway(store=store, order_reference_guard=False)
    body = card_order("ORD-STALE-ADYEN")
    await pin_an_old_attempt(store, "stale-adyen", body, ["stripe", "adyen"])
    retry = await client.post("/api/v1/sessions", json=body, headers=headers("stale-adyen"))
    assert retry.status == 201, await retry.text()
    routing = (await retry.json())["routing"]
    assert [(a["provider"], a["outcome"]) for a in routing["attempts"]] == [
        ("stripe", "request_expired"),
        ("adyen", "created"),
    ]
    assert sandbox_state(sandbox).sessions_created == {"adyen": 1}


def pinned_input(created_ago: timedelta, session_id: str) -> CreateSessionInput:
    request = parse_checkout_request(orjson.dumps(seed()), allow_http_localhost=True)
    created = utcnow() - created_ago
    return CreateSessionInput(
        session_id=session_id,
        merchant_id="merchant-1",
        idempotency_key=derived_provider_key("merchant-1", "orphan-stale", "stripe"),
        request=request,
        expires_at=created + timedelta(seconds=900),  # sent to Stripe as 32 min
        request_id="req-first",
        created_at=created,
        return_url=f"http://127.0.0.1/api/v1/sessions/{session_id}/return",
    )


def test_a_stored_orphan_job_resends_the_very_same_stripe_request() -> None:
    data = pinned_input(timedelta(0), "s_roundtrip")
    back = decode_input(encode_input(data))
    assert back == data
    now = data.created_at
    assert now is not None
    assert encode_form(build_create_params(back, now)) == encode_form(
        build_create_params(data, now)
    )


async def test_an_orphan_whose_pinned_request_is_too_old_is_recorded_absent(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any
) -> None:
    store = await store_factory("memory")
    client = await gateway(store=store, expiry_sweep_interval_seconds=0.1)
    session_id = session_id_for("merchant-1", "orphan-stale")
    record = make_session(session_id).model_copy(
        update={
            "provider": "adyen",
            "orphans": [OrphanSession(provider="stripe", outcome="timeout")],
            "expiresAt": utcnow() + timedelta(hours=1),
        }
    )
    job = OrphanJob(
        id=f"{session_id}:stripe",
        session_id=session_id,
        provider="stripe",
        request=encode_input(pinned_input(TEN_MINUTES_AGO, session_id)),
    )
    begun = await store.begin_create(
        "merchant-1", "orphan-stale", "fp", token="t", lease_ms=5000, order_ref=None
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    completion = Completion("merchant-1", "orphan-stale", "t", StoredResponse(201, b"{}"), 60)
    assert await store.commit_create(record, completion, ttl_s=3600, expires_at=None, orphans=[job])

    async def settled() -> bool:
        stored = await store.get_session(session_id)
        return stored is not None and stored.orphans[0].status != "open"

    await until(settled)
    stored = await store.get_session(session_id)
    assert stored is not None
    assert [(o.provider, o.status, o.providerSessionId) for o in stored.orphans] == [
        ("stripe", "absent", None)
    ]
    assert sandbox_state(sandbox).sessions_created.get("stripe", 0) == 0
    assert await store.orphan_claim(now=utcnow().timestamp() + 3600, lease_s=1, limit=10) == []
    assert client is not None


async def test_an_unreadable_orphan_job_does_not_hold_up_the_others(
    gateway: GatewayFactory, sandbox: Any, store_factory: Any
) -> None:
    """A job that cannot be worked (here: its stored request does not parse) is retried later
    on its own; the job after it in the same batch is worked at once."""
    store = await store_factory("memory")
    await gateway(store=store, expiry_sweep_interval_seconds=0.1)
    session_id = session_id_for("merchant-1", "orphan-stale")
    record = make_session(session_id).model_copy(
        update={
            "provider": "adyen",
            "orphans": [OrphanSession(provider="stripe", outcome="timeout")],
            "expiresAt": utcnow() + timedelta(hours=1),
        }
    )
    poison = OrphanJob(
        id="0-poison:stripe", session_id="0-poison", provider="stripe", request=b"not json"
    )
    good = OrphanJob(
        id=f"{session_id}:stripe",
        session_id=session_id,
        provider="stripe",
        request=encode_input(pinned_input(TEN_MINUTES_AGO, session_id)),
    )
    assert poison.id < good.id  # claimed first in the batch
    begun = await store.begin_create(
        "merchant-1", "orphan-stale", "fp", token="t", lease_ms=5000, order_ref=None
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    completion = Completion("merchant-1", "orphan-stale", "t", StoredResponse(201, b"{}"), 60)
    assert await store.commit_create(
        record, completion, ttl_s=3600, expires_at=None, orphans=[poison, good]
    )

    async def settled() -> bool:
        stored = await store.get_session(session_id)
        return stored is not None and stored.orphans[0].status == "absent"

    await until(settled, within=3)  # well inside the poisoned batch's lease (9 s)
    # the unreadable job waits in the queue (backoff), it is not lost
    (back,) = await store.orphan_claim(now=utcnow().timestamp() + 3600, lease_s=1, limit=10)
    assert back.id == "0-poison:stripe"
    assert back.attempts >= 1
