"""The two-round-trip create path (begin_create / commit_create) and pinned creates, against
every record store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from gateway.store.base import ClaimKind, Completion, CreatePin, RecordStore, StoredResponse
from tests.store.samples import make_session, order_holder

FP = "fp-1"


def completion(token: str, order_ref: str | None = "ORD-1") -> Completion:
    return Completion(
        scope="m1",
        key="k1",
        token=token,
        response=StoredResponse(201, b'{"sessionId":"s_1"}', "/api/v1/sessions/s_1"),
        ttl_s=60,
        order_ref=order_ref,
        order_ttl_s=60,
    )


async def test_begin_claims_and_reserves_the_order(store: RecordStore) -> None:
    begun = await store.begin_create("m1", "k1", FP, token="t1", lease_ms=5000, order_ref="ORD-1")
    assert begun.claim.kind is ClaimKind.CLAIMED
    assert begun.order_holder is None
    # the order is now held by t1's claim, the key is in flight
    assert await order_holder(store, "m1", "ORD-1") == "claim:t1"
    again = await store.begin_create("m1", "k1", FP, token="t2", lease_ms=5000, order_ref="ORD-1")
    assert again.claim.kind is ClaimKind.IN_FLIGHT
    assert again.order_holder is None


async def test_begin_reports_the_order_holder_but_keeps_the_claim(store: RecordStore) -> None:
    await store.begin_create("m1", "k1", FP, token="t1", lease_ms=5000, order_ref="ORD-1")
    other = await store.begin_create("m1", "k2", FP, token="t2", lease_ms=5000, order_ref="ORD-1")
    assert other.claim.kind is ClaimKind.CLAIMED
    assert other.order_holder == "claim:t1"
    # k2 is claimed by t2 until released
    third = await store.begin_create("m1", "k2", FP, token="t3", lease_ms=5000, order_ref=None)
    assert third.claim.kind is ClaimKind.IN_FLIGHT


async def test_begin_without_order_guard_touches_no_reservation(store: RecordStore) -> None:
    begun = await store.begin_create("m1", "k1", FP, token="t1", lease_ms=5000, order_ref=None)
    assert begun.claim.kind is ClaimKind.CLAIMED
    assert await order_holder(store, "m1", "ORD-1") is None


async def test_begin_mismatch_and_replay(store: RecordStore) -> None:
    await store.begin_create("m1", "k1", FP, token="t1", lease_ms=5000, order_ref="ORD-1")
    mismatch = await store.begin_create(
        "m1", "k1", "fp-2", token="t2", lease_ms=5000, order_ref="ORD-1"
    )
    assert mismatch.claim.kind is ClaimKind.MISMATCH
    assert await store.commit_create(
        make_session("s_1"), completion("t1"), ttl_s=60, expires_at=None
    )
    replay = await store.begin_create("m1", "k1", FP, token="t3", lease_ms=5000, order_ref="ORD-1")
    assert replay.claim.kind is ClaimKind.REPLAY
    assert replay.claim.response == StoredResponse(
        201, b'{"sessionId":"s_1"}', "/api/v1/sessions/s_1"
    )


async def test_commit_writes_session_binds_order_and_completes(store: RecordStore) -> None:
    await store.begin_create("m1", "k1", FP, token="t1", lease_ms=5000, order_ref="ORD-1")
    record = make_session("s_1")
    assert await store.commit_create(record, completion("t1"), ttl_s=60, expires_at=None)
    assert await store.get_session("s_1") == record
    assert await order_holder(store, "m1", "ORD-1") == "s_1"


async def test_commit_with_a_lost_lease_still_writes_the_session(store: RecordStore) -> None:
    await store.begin_create("m1", "k1", FP, token="t1", lease_ms=5000, order_ref="ORD-1")
    await store.release("m1", "k1", "t1")
    await store.release_order("m1", "ORD-1", "t1")
    record = make_session("s_1")
    assert not await store.commit_create(record, completion("t1"), ttl_s=60, expires_at=None)
    assert await store.get_session("s_1") == record
    # nobody else's reservation or claim was touched
    assert await order_holder(store, "m1", "ORD-1") is None
    fresh = await store.begin_create("m1", "k1", FP, token="t2", lease_ms=5000, order_ref=None)
    assert fresh.claim.kind is ClaimKind.CLAIMED


async def test_fifty_concurrent_begins_exactly_one_claims(store: RecordStore) -> None:
    results = await asyncio.gather(
        *(
            store.begin_create("m1", "k1", FP, token=f"t{i}", lease_ms=5000, order_ref="ORD-1")
            for i in range(50)
        )
    )
    claimed = [r for r in results if r.claim.kind is ClaimKind.CLAIMED]
    assert len(claimed) == 1
    assert claimed[0].order_holder is None
    assert all(r.claim.kind is ClaimKind.IN_FLIGHT for r in results if r is not claimed[0])


PIN = CreatePin(created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), request_id="rq-1")
OTHER_PIN = CreatePin(created_at=datetime(2026, 1, 2, 9, 0, tzinfo=UTC), request_id="rq-2")


async def pinned(store: RecordStore, token: str, fp: str = FP, lease_ms: int = 5000) -> Any:
    pin = PIN if token == "t1" else OTHER_PIN
    return await store.begin_create(
        "m1", "k1", fp, token=token, lease_ms=lease_ms, order_ref=None, pin=pin, pin_ttl_ms=60_000
    )


async def test_a_given_up_claim_resumes_with_the_first_pin(store: RecordStore) -> None:
    first = await pinned(store, "t1")
    assert first.claim.kind is ClaimKind.CLAIMED
    assert (first.pin, first.resumed) == (PIN, False)
    assert (await pinned(store, "t2")).claim.kind is ClaimKind.IN_FLIGHT
    await store.abandon_create("m1", "k1", "t1", sent=["stripe"])
    again = await pinned(store, "t2")
    assert again.claim.kind is ClaimKind.CLAIMED
    assert again.resumed
    assert again.pin == CreatePin(PIN.created_at, "rq-1", ("stripe",))
    # a second give-up adds providers, in order, once each
    await store.abandon_create("m1", "k1", "t2", sent=["adyen", "stripe"])
    third = await pinned(store, "t3")
    assert third.pin is not None
    assert third.pin.sent == ("stripe", "adyen")
    # and the completed answer is replayed as before
    assert await store.commit_create(
        make_session("s_1"), completion("t3", None), ttl_s=60, expires_at=None
    )
    assert (await pinned(store, "t4")).claim.kind is ClaimKind.REPLAY


async def test_a_given_up_key_stays_bound_to_its_body(store: RecordStore) -> None:
    await pinned(store, "t1")
    await store.abandon_create("m1", "k1", "t1", sent=["stripe"])
    assert (await pinned(store, "t2", fp="fp-other")).claim.kind is ClaimKind.MISMATCH


async def test_the_pin_outlives_a_crashed_holders_lease(store: RecordStore) -> None:
    await pinned(store, "t1", lease_ms=150)
    busy = await pinned(store, "t2")
    assert busy.claim.kind is ClaimKind.IN_FLIGHT
    assert busy.claim.retry_after_ms is not None
    assert busy.claim.retry_after_ms <= 150
    await asyncio.sleep(0.25)
    taken = await pinned(store, "t2")
    assert taken.claim.kind is ClaimKind.CLAIMED
    assert (taken.pin, taken.resumed) == (PIN, True)
    # the dead holder can no longer finish or give up; the new one can
    assert not await store.commit_create(
        make_session("s_1"), completion("t1", None), ttl_s=60, expires_at=None
    )
    assert await store.commit_create(
        make_session("s_1"), completion("t2", None), ttl_s=60, expires_at=None
    )


async def test_a_release_forgets_the_pin(store: RecordStore) -> None:
    await pinned(store, "t1")
    await store.release("m1", "k1", "t1")
    fresh = await pinned(store, "t2", fp="fp-other")
    assert fresh.claim.kind is ClaimKind.CLAIMED
    assert (fresh.pin, fresh.resumed) == (OTHER_PIN, False)


async def test_commit_never_overwrites_a_session_an_earlier_attempt_stored(
    store: RecordStore,
) -> None:
    """The first holder stored the session but lost its claim; the next holder's commit must
    not overwrite it (it may have moved on meanwhile) and still completes the key."""
    await store.begin_create("m1", "k1", FP, token="t1", lease_ms=5000, order_ref=None)
    await store.release("m1", "k1", "t1")
    first = make_session("s_1")
    assert not await store.commit_create(first, completion("t1", None), ttl_s=60, expires_at=None)
    moved = first.model_copy(update={"version": first.version + 1, "paymentId": "pi_1"})
    assert await store.update_session(moved, expected_version=first.version)
    await store.begin_create("m1", "k1", FP, token="t2", lease_ms=5000, order_ref=None)
    again = make_session("s_1").model_copy(update={"providerSessionId": "cs_other"})
    assert await store.commit_create(again, completion("t2", None), ttl_s=60, expires_at=None)
    assert await store.get_session("s_1") == moved
    replay = await store.begin_create("m1", "k1", FP, token="t3", lease_ms=5000, order_ref=None)
    assert replay.claim.kind is ClaimKind.REPLAY
