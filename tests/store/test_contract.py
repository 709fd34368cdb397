"""The record-store contract for what production calls on the create path: idempotency claims
(``begin_create`` / ``commit_create`` / ``release``), the order guard (``replace_order`` /
``release_order``), sessions, the lifetimes of what a create writes and its purge.

Every test uses only the :class:`~gateway.store.base.RecordStore` protocol, so the suite runs
unchanged against every store of the ``store`` fixture (memory, Redis, PostgreSQL). Exact TTLs,
which need a look inside a store, are in ``test_record_ttls.py``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

from gateway.store.base import Begun, ClaimKind, Completion, RecordStore, StoredResponse

from .samples import make_session, order_holder, store_session

SCOPE = "merchant-1"
LEASE_MS = 200
#: how long a test waits for a 1 s lifetime to run out (both clocks have ms resolution)
PAST_ONE_SECOND = 1.15
CREATED = StoredResponse(201, b'{"sessionId":"s_1"}', "/api/v1/sessions/s_1")


async def begin(
    store: RecordStore,
    key: str = "k1",
    fp: str = "fp",
    *,
    token: str,
    lease_ms: int = 5_000,
    order_ref: str | None = None,
    scope: str = SCOPE,
) -> Begun:
    return await store.begin_create(
        scope, key, fp, token=token, lease_ms=lease_ms, order_ref=order_ref
    )


def done(
    token: str,
    key: str = "k1",
    *,
    response: StoredResponse = CREATED,
    ttl_s: int = 60,
    order_ref: str | None = None,
    order_ttl_s: int = 60,
) -> Completion:
    return Completion(SCOPE, key, token, response, ttl_s, order_ref, order_ttl_s)


async def commit(
    store: RecordStore, completion: Completion, session_id: str = "s_1", *, ttl_s: int = 600
) -> bool:
    """Finish a create: store ``session_id`` and complete the key held by the token."""
    return await store.commit_create(
        make_session(session_id), completion, ttl_s=ttl_s, expires_at=None
    )


# idempotency -------------------------------------------------------------------------------


async def test_first_claim_wins_and_others_see_it_in_flight(store: RecordStore) -> None:
    first = await begin(store, token="t1")
    assert first.claim.kind is ClaimKind.CLAIMED
    assert first.claim.token == "t1"

    second = await begin(store, token="t2")
    assert second.claim.kind is ClaimKind.IN_FLIGHT
    assert second.claim.token is None
    assert second.claim.retry_after_ms is not None
    assert 4_000 < second.claim.retry_after_ms <= 5_000


async def test_in_flight_claim_with_other_body_is_a_mismatch(store: RecordStore) -> None:
    await begin(store, fp="fp-a", token="t1")
    other = await begin(store, fp="fp-b", token="t2")
    assert other.claim.kind is ClaimKind.MISMATCH
    assert other.claim.response is None


async def test_completed_claim_replays_byte_for_byte(store: RecordStore) -> None:
    body = b'{"sessionId":"s_1"}\x00\xff\xfe binary-safe'
    response = StoredResponse(201, body, "/api/v1/sessions/s_1")
    await begin(store, token="t1")
    assert await commit(store, done("t1", response=response)) is True

    replay = await begin(store, token="t2")
    assert replay.claim.kind is ClaimKind.REPLAY
    assert replay.claim.response == response

    other_body = await begin(store, fp="fp-other", token="t3")
    assert other_body.claim.kind is ClaimKind.MISMATCH


async def test_replay_without_location_and_with_error_status(store: RecordStore) -> None:
    error = StoredResponse(422, b'{"error":{"code":"invalid"}}')
    await begin(store, token="t1")
    assert await commit(store, done("t1", response=error))
    replay = await begin(store, token="t2")
    assert replay.claim.response == StoredResponse(422, b'{"error":{"code":"invalid"}}', None)


async def test_commit_with_a_token_that_holds_nothing_completes_nothing(
    store: RecordStore,
) -> None:
    await begin(store, token="t1")
    assert await commit(store, done("intruder", response=StoredResponse(201, b"x"))) is False
    assert (await begin(store, token="t2")).claim.kind is ClaimKind.IN_FLIGHT
    # the rightful holder can still finish
    assert await commit(store, done("t1", response=StoredResponse(201, b"ok"))) is True
    # and a second completion (token spent) is refused without touching the answer
    assert await commit(store, done("t1", response=StoredResponse(500, b"no"))) is False
    replay = await begin(store, token="t3")
    assert replay.claim.response == StoredResponse(201, b"ok")


async def test_commit_of_an_unclaimed_key_completes_nothing(store: RecordStore) -> None:
    assert await commit(store, done("t1", "nope")) is False
    assert (await begin(store, "nope", token="t2")).claim.kind is ClaimKind.CLAIMED


async def test_release_lets_a_retry_claim_again(store: RecordStore) -> None:
    await begin(store, token="t1")
    await store.release(SCOPE, "k1", "t1")
    again = await begin(store, fp="fp-new", token="t2")
    assert again.claim.kind is ClaimKind.CLAIMED
    assert again.claim.token == "t2"


async def test_release_with_wrong_token_does_nothing(store: RecordStore) -> None:
    await begin(store, token="t1")
    await store.release(SCOPE, "k1", "intruder")
    assert (await begin(store, token="t2")).claim.kind is ClaimKind.IN_FLIGHT


async def test_release_after_commit_keeps_the_answer(store: RecordStore) -> None:
    await begin(store, token="t1")
    assert await commit(store, done("t1"))
    await store.release(SCOPE, "k1", "t1")
    assert (await begin(store, token="t2")).claim.kind is ClaimKind.REPLAY


async def test_expired_lease_lets_a_new_claimer_in(store: RecordStore) -> None:
    await begin(store, token="t1", lease_ms=LEASE_MS)
    held = await begin(store, token="t2", lease_ms=LEASE_MS)
    assert held.claim.kind is ClaimKind.IN_FLIGHT
    assert held.claim.retry_after_ms is not None
    assert 0 < held.claim.retry_after_ms <= LEASE_MS

    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    taken = await begin(store, token="t3")
    assert taken.claim.kind is ClaimKind.CLAIMED
    # the crashed first holder comes back: it can neither finish nor drop the new claim
    assert await commit(store, done("t1", response=StoredResponse(201, b"late"))) is False
    await store.release(SCOPE, "k1", "t1")
    assert (await begin(store, token="t4")).claim.kind is ClaimKind.IN_FLIGHT
    assert await commit(store, done("t3", response=StoredResponse(201, b"new")), "s_2")
    replay = await begin(store, token="t5")
    assert replay.claim.response == StoredResponse(201, b"new")


async def test_short_lease_reports_a_positive_retry_after(store: RecordStore) -> None:
    await begin(store, token="t1", lease_ms=100)
    busy = await begin(store, token="t2", lease_ms=100)
    assert busy.claim.kind is ClaimKind.IN_FLIGHT
    assert busy.claim.retry_after_ms is not None
    assert 1 <= busy.claim.retry_after_ms <= 100


async def test_scopes_and_keys_do_not_collide(store: RecordStore) -> None:
    assert (await begin(store, "c", scope="a:b", token="t1")).claim.kind is ClaimKind.CLAIMED
    assert (await begin(store, "b:c", scope="a", token="t2")).claim.kind is ClaimKind.CLAIMED
    assert (await begin(store, "c", scope="other", token="t3")).claim.kind is ClaimKind.CLAIMED


async def test_fifty_concurrent_claimers_exactly_one_wins(store: RecordStore) -> None:
    begun = await asyncio.gather(*(begin(store, "hot", token=f"t{i}") for i in range(50)))
    winners = [b for b in begun if b.claim.kind is ClaimKind.CLAIMED]
    assert len(winners) == 1
    assert all(b.claim.kind is ClaimKind.IN_FLIGHT for b in begun if b is not winners[0])
    # the winner's token is the one that holds the key
    winner = winners[0].claim.token
    assert winner is not None
    assert await commit(store, done(winner, "hot"))


# order guard -------------------------------------------------------------------------------


async def test_the_order_is_reserved_by_the_first_claim(store: RecordStore) -> None:
    first = await begin(store, "k1", token="t1", order_ref="ORD-1")
    assert (first.claim.kind, first.order_holder) == (ClaimKind.CLAIMED, None)
    # another key of the same order: claimed, but told who holds the order
    second = await begin(store, "k2", token="t2", order_ref="ORD-1")
    assert (second.claim.kind, second.order_holder) == (ClaimKind.CLAIMED, "claim:t1")
    # other orders and other merchants are independent
    assert (await begin(store, "k3", token="t3", order_ref="ORD-2")).order_holder is None
    other = await begin(store, "k1", scope="merchant-2", token="t4", order_ref="ORD-1")
    assert other.order_holder is None
    assert await order_holder(store, SCOPE, "ORD-1") == "claim:t1"


async def test_without_an_order_reference_no_reservation_is_made(store: RecordStore) -> None:
    assert (await begin(store, token="t1")).claim.kind is ClaimKind.CLAIMED
    assert await order_holder(store, SCOPE, "ORD-1") is None


async def test_commit_points_the_reservation_at_the_session(store: RecordStore) -> None:
    await begin(store, token="t1", order_ref="ORD-1")
    assert await commit(store, done("t1", order_ref="ORD-1"), "s_1")
    assert await order_holder(store, SCOPE, "ORD-1") == "s_1"
    # once bound, the token no longer holds a claim on it: its release does nothing
    await store.release_order(SCOPE, "ORD-1", "t1")
    assert await order_holder(store, SCOPE, "ORD-1") == "s_1"


async def test_commit_never_binds_a_reservation_it_does_not_hold(store: RecordStore) -> None:
    await begin(store, "k1", token="t1", order_ref="ORD-1")
    await begin(store, "k2", token="t2", order_ref="ORD-1")  # told: held by claim:t1
    assert await commit(store, done("t2", "k2", order_ref="ORD-1"), "s_evil")
    assert await order_holder(store, SCOPE, "ORD-1") == "claim:t1"


async def test_replace_order_is_compare_and_set(store: RecordStore) -> None:
    await begin(store, token="t1", order_ref="ORD-1")
    assert await commit(store, done("t1", order_ref="ORD-1"), "s_1")

    assert await store.replace_order(SCOPE, "ORD-1", "s_other", "t2", lease_ms=5_000) is False
    assert await order_holder(store, SCOPE, "ORD-1") == "s_1"

    assert await store.replace_order(SCOPE, "ORD-1", "s_1", "t2", lease_ms=5_000) is True
    assert await order_holder(store, SCOPE, "ORD-1") == "claim:t2"
    # the old session is gone from the slot: a second replace from it fails
    assert await store.replace_order(SCOPE, "ORD-1", "s_1", "t3", lease_ms=5_000) is False
    # replacing a slot that holds nothing fails too, and reserves nothing
    assert await store.replace_order(SCOPE, "ORD-9", "s_1", "t3", lease_ms=5_000) is False
    assert await order_holder(store, SCOPE, "ORD-9") is None


async def test_a_replaced_reservation_is_bound_by_the_new_holders_commit(
    store: RecordStore,
) -> None:
    await begin(store, "k1", token="t1", order_ref="ORD-1")
    assert await commit(store, done("t1", "k1", order_ref="ORD-1"), "s_1")
    await begin(store, "k2", token="t2", order_ref="ORD-1")
    assert await store.replace_order(SCOPE, "ORD-1", "s_1", "t2", lease_ms=5_000)
    assert await commit(store, done("t2", "k2", order_ref="ORD-1"), "s_2")
    assert await order_holder(store, SCOPE, "ORD-1") == "s_2"


async def test_concurrent_replace_has_one_winner(store: RecordStore) -> None:
    await begin(store, token="t0", order_ref="ORD-1")
    assert await commit(store, done("t0", order_ref="ORD-1"), "s_done")
    results = await asyncio.gather(
        *(store.replace_order(SCOPE, "ORD-1", "s_done", f"t{i}", lease_ms=5_000) for i in range(20))
    )
    assert results.count(True) == 1


async def test_release_order_drops_only_the_holders_reservation(store: RecordStore) -> None:
    await begin(store, token="t1", order_ref="ORD-1")
    await store.release_order(SCOPE, "ORD-1", "intruder")
    assert await order_holder(store, SCOPE, "ORD-1") == "claim:t1"
    await store.release_order(SCOPE, "ORD-1", "t1")
    assert await order_holder(store, SCOPE, "ORD-1") is None


async def test_an_expired_order_lease_frees_the_order(store: RecordStore) -> None:
    await begin(store, "k1", token="t1", lease_ms=LEASE_MS, order_ref="ORD-1")
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    retry = await begin(store, "k2", token="t2", order_ref="ORD-1")
    assert (retry.claim.kind, retry.order_holder) == (ClaimKind.CLAIMED, None)
    # the expired holder's late commit binds nothing over the new reservation
    assert not await commit(store, done("t1", "k1", order_ref="ORD-1"), "s_late")
    assert await order_holder(store, SCOPE, "ORD-1") == "claim:t2"


# sessions ----------------------------------------------------------------------------------


async def test_session_round_trip_is_exact(store: RecordStore) -> None:
    record = make_session()
    await store_session(store, record, ttl_s=600)
    got = await store.get_session("s_1")
    assert got is not None
    assert got == record
    assert got.model_dump_json() == record.model_dump_json()
    assert str(got.amount.total) == "140.76"
    assert str(got.amount.tax) == "11.10"  # the trailing zero (exponent) survives
    assert isinstance(got.amount.shipping, Decimal)
    for moment in (got.createdAt, got.updatedAt, got.expiresAt, got.transitions[0].at):
        assert moment.tzinfo is not None
    assert got.updatedAt.utcoffset() == timedelta(hours=10)
    assert got.createdAt.microsecond == 123456


async def test_unknown_session_is_none(store: RecordStore) -> None:
    assert await store.get_session("s_unknown") is None


# lifetimes of what a create writes -----------------------------------------------------------


async def test_what_a_create_writes_lives_exactly_as_long_as_asked(store: RecordStore) -> None:
    """Session (``ttl_s``), completed key (``completion.ttl_s``) and order reservation
    (``completion.order_ttl_s``) each end after their own lifetime, not with the others'."""
    # a: every record kept 1 s; b: the session kept long, its answer and order 1 s;
    # c: the answer and order kept long, the session 1 s
    for key, session_ttl, answer_ttl in (("a", 1, 1), ("b", 600, 1), ("c", 1, 600)):
        await begin(store, key, token=f"t-{key}", order_ref=f"ORD-{key}")
        completion = done(
            f"t-{key}", key, ttl_s=answer_ttl, order_ref=f"ORD-{key}", order_ttl_s=answer_ttl
        )
        assert await commit(store, completion, f"s_{key}", ttl_s=session_ttl)
    assert await order_holder(store, SCOPE, "ORD-a") == "s_a"
    assert (await begin(store, "a", token="r1")).claim.kind is ClaimKind.REPLAY

    await asyncio.sleep(PAST_ONE_SECOND)
    # gone: sessions, answers and reservations whose lifetime ended
    assert await store.get_session("s_a") is None
    assert await store.get_session("s_c") is None
    fresh = await begin(store, "a", "fp-other", token="r2", order_ref="ORD-a")
    assert (fresh.claim.kind, fresh.order_holder) == (ClaimKind.CLAIMED, None)
    assert (await begin(store, "b", "fp-other", token="r3")).claim.kind is ClaimKind.CLAIMED
    assert await order_holder(store, SCOPE, "ORD-b") is None
    # kept: the others
    assert await store.get_session("s_b") == make_session("s_b")
    assert (await begin(store, "c", token="r4")).claim.kind is ClaimKind.REPLAY
    assert await order_holder(store, SCOPE, "ORD-c") == "s_c"


async def test_purge_takes_only_what_is_past_its_retention_in_bounded_batches(
    store: RecordStore,
) -> None:
    """Stores whose records expire by themselves purge nothing; the others delete at most
    ``limit`` a call. Either way nothing still kept goes, and nothing expired comes back."""
    for key, ttl in (("gone", 1), ("kept", 600)):
        await begin(store, key, token=f"t-{key}", order_ref=f"ORD-{key}")
        completion = done(f"t-{key}", key, ttl_s=ttl, order_ref=f"ORD-{key}", order_ttl_s=ttl)
        assert await commit(store, completion, f"s_{key}", ttl_s=ttl)
    assert await store.purge(now=time.time(), limit=100) == 0  # nothing has ended yet
    await asyncio.sleep(PAST_ONE_SECOND)
    first = await store.purge(now=time.time(), limit=1)
    assert first in (0, 1)
    rest = await store.purge(now=time.time(), limit=100)
    assert first + rest in (0, 3)  # the session, its answer and its order reservation
    assert await store.purge(now=time.time(), limit=100) == 0
    assert await store.get_session("s_gone") is None
    assert (await begin(store, "gone", "fp-other", token="r1")).claim.kind is ClaimKind.CLAIMED
    assert await store.get_session("s_kept") == make_session("s_kept")
    assert (await begin(store, "kept", token="r2")).claim.kind is ClaimKind.REPLAY
    assert await order_holder(store, SCOPE, "ORD-kept") == "s_kept"


async def test_ping(store: RecordStore) -> None:
    await store.ping()
    assert store.name
