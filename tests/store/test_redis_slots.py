"""The Redis store on a Redis that refuses cross-slot work (a one-node cluster: every master of
a real cluster refuses the same): the store contract suites, the slots of one create's scripts,
the queue buckets, and the order reservation that must survive a crash between a create's two
writes (its session, then the order binding)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from redis.crc import key_slot

from gateway.idempotency import session_id_for
from gateway.store.base import ClaimKind, Completion, OrphanJob, StoredResponse, StoreUnavailable
from gateway.store.keys import QUEUE_BUCKETS, bucket
from gateway.store.redis import RedisStore
from gateway.store.redis_conn import LuaScript, ScriptArg, Unconfirmed
from tests.redis_slot_node import slot_checking_redis
from tests.redis_stores import redis_store
from tests.store import (
    test_contract,
    test_create_contract,
    test_find_contract,
    test_lifecycle_contract,
    test_orphan_queue_contract,
)
from tests.store.samples import make_session, order_holder
from tests.store.test_lifecycle_contract import item

# the contract suites, collected here again with ``store`` below: a store on the slot checker
for _suite in (
    test_contract,
    test_create_contract,
    test_find_contract,
    test_lifecycle_contract,
    test_orphan_queue_contract,
):
    for _name in dir(_suite):
        if _name.startswith("test_"):
            globals()[_name] = getattr(_suite, _name)

SCOPE = "merchant-1"
ORDER = "ORD-2024-001"  # make_session's orderReference
LEASE_MS = 200


@pytest.fixture(scope="module")
def slot_url() -> Iterator[str]:
    with slot_checking_redis() as url:
        yield url


@pytest.fixture
async def store(slot_url: str) -> AsyncIterator[RedisStore]:
    """A Redis store (its own prefix) on the one-node cluster, in cluster mode (a standalone
    conn refuses a cluster node)."""
    made = redis_store(slot_url, f"t{uuid.uuid4().hex[:8]}:", mode="cluster")
    await made.conn.start()
    yield made
    await made.close()


def record_scripts(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[LuaScript, list[str]]]:
    """Every script the store runs from now on, with its keys (still run on Redis)."""
    calls: list[tuple[LuaScript, list[str]]] = []
    run = store.conn.script

    async def recording(
        script: LuaScript, keys: Sequence[str], args: Sequence[ScriptArg], **options: Any
    ) -> Any:
        calls.append((script, list(keys)))
        return await run(script, keys, args, **options)

    monkeypatch.setattr(store.conn, "script", recording)
    return calls


def slots(keys: list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def done(key: str, token: str, order_ref: str | None = ORDER) -> Completion:
    response = StoredResponse(201, b"{}", "/api/v1/sessions/x")
    return Completion(SCOPE, key, token, response, 600, order_ref, 600)


async def begin(store: RedisStore, key: str, token: str, lease_ms: int = 5_000) -> Any:
    return await store.begin_create(
        SCOPE, key, "fp", token=token, lease_ms=lease_ms, order_ref=ORDER
    )


# one create, two slots ---------------------------------------------------------------------


async def test_a_creates_scripts_each_stay_in_one_slot_and_two_slots_in_all(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_scripts(store, monkeypatch)
    session_id = session_id_for(SCOPE, "k1")
    assert (await begin(store, "k1", "t1")).claim.kind is ClaimKind.CLAIMED
    job = OrphanJob(f"{session_id}:stripe", session_id, "stripe", b"{}")
    assert await store.commit_create(
        make_session(session_id),
        done("k1", "t1"),
        ttl_s=600,
        expires_at=2e9,
        outbox=[item("n1")],
        orphans=[job],
    )
    assert len(calls) == 4  # claim, reservation, session (A), order binding and index (B)
    claim, reserve, session, order = (keys for _, keys in calls)
    assert len(slots(claim + session)) == 1  # the key, the session and its queues
    assert len(slots(reserve + order)) == 1  # the reservation and the orderReference index
    assert len(session) == 7
    # everything landed where a claim of its bucket finds it
    n = bucket(session_id)
    assert await store.client.zcard(store.keys.outbox_due(n)) == 1
    assert await store.client.zcard(store.keys.orphans_due(n)) == 1
    assert await store.client.zscore(store.keys.expiry_index(n), session_id) == 2e9
    assert await order_holder(store, SCOPE, ORDER) == session_id


# the queue buckets -------------------------------------------------------------------------


def ids_in_distinct_buckets(count: int) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        found.setdefault(bucket(f"n{i}"), f"n{i}")
        i += 1
    return list(found.values())


async def test_items_in_every_bucket_are_claimed_in_due_order_and_finished(
    store: RedisStore,
) -> None:
    ids = ids_in_distinct_buckets(QUEUE_BUCKETS)
    for due, item_id in enumerate(ids):
        await store.outbox_add([item(item_id)], due=100.0 + due)
    first = await store.outbox_claim(now=1_000.0, lease_s=30, limit=5)
    assert [c.id for c in first] == ids[:5]  # earliest due first, across buckets
    rest = await store.outbox_claim(now=1_000.0, lease_s=30, limit=100)
    assert [c.id for c in rest] == ids[5:]
    assert {c.lease.split(":")[0] for c in first + rest if c.lease} == {
        str(n) for n in range(QUEUE_BUCKETS)
    }
    assert await store.outbox_backlog() == QUEUE_BUCKETS
    for claimed in first + rest:
        assert await store.outbox_done(claimed)
    assert await store.outbox_backlog() == 0
    assert await store.outbox_claim(now=10_000.0, lease_s=30, limit=100) == []


async def test_expiries_and_orphan_jobs_of_sessions_in_several_buckets_are_all_claimed(
    store: RedisStore,
) -> None:
    sessions = [session_id_for(SCOPE, f"k{i}") for i in range(40)]
    assert len({bucket(s) for s in sessions}) > 8
    for i, session_id in enumerate(sessions):
        await store.schedule_expiry(session_id, 100.0 + i)
    assert await store.claim_expiries(now=1_000.0, lease_s=60, limit=100) == sessions

    for i, session_id in enumerate(sessions[:10]):
        key, token = f"k{i}", f"t{i}"
        await store.begin_create(SCOPE, key, "fp", token=token, lease_ms=5_000, order_ref=None)
        job = OrphanJob(f"{session_id}:stripe", session_id, "stripe", b"{}")
        completion = done(key, token, order_ref=None)
        assert await store.commit_create(
            make_session(session_id), completion, ttl_s=60, expires_at=None, orphans=[job]
        )
    jobs = await store.orphan_claim(now=2e9, lease_s=30, limit=100)
    assert sorted(j.session_id for j in jobs) == sorted(sessions[:10])
    for claimed in jobs:
        assert await store.orphan_done(claimed)
    assert await store.orphan_claim(now=3e9, lease_s=30, limit=100) == []


async def test_a_lease_of_one_bucket_never_finishes_an_item_of_another(
    store: RedisStore,
) -> None:
    a, b = ids_in_distinct_buckets(2)
    await store.outbox_add([item(a), item(b)], due=1.0)
    claimed = {c.id: c for c in await store.outbox_claim(now=2.0, lease_s=30, limit=10)}
    lease_b = claimed[b].lease
    assert lease_b is not None
    forged = [
        replace(claimed[a], lease=lease_b),  # b's lease names b's bucket: a is not there
        replace(claimed[a], lease=f"{bucket(a)}:{lease_b.split(':', 1)[1]}"),  # a's bucket, not a's
        replace(claimed[a], lease=f"{QUEUE_BUCKETS}:x1"),  # no such bucket
        replace(claimed[a], lease="not-a-lease"),
        replace(claimed[a], lease="\u00b2:x1"),  # a digit to str.isdigit, not to int()
    ]
    for wrong in forged:
        assert await store.outbox_done(wrong) is False
        assert await store.outbox_dead(wrong, at=3.0) is False
    assert await store.outbox_backlog() == 2
    assert await store.outbox_done(claimed[a]) is True
    assert await store.outbox_done(claimed[b]) is True


async def test_dead_letters_are_capped_across_buckets(store: RedisStore) -> None:
    ids = ids_in_distinct_buckets(6)
    await store.outbox_add([item(i) for i in ids], due=1.0)
    for n, claimed in enumerate(await store.outbox_claim(now=2.0, lease_s=30, limit=10)):
        assert await store.outbox_dead(claimed.failed("gave_up"), at=100.0 + n, keep=4)
    letters = await store.outbox_dead_letters(10)
    assert [d.id for d in letters] == list(reversed(ids))[:4]


# the order reservation across a crash between the session and the binding ------------------


async def crash_before_binding(store: RedisStore, key: str, token: str) -> str:
    """A create of ``key`` that wrote its session (A) and died before binding the order (B);
    its request then gives the reservation up as a failed create does. Its session id."""
    session_id = session_id_for(SCOPE, key)

    async def dies(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("redis commit_create failed: the process died")

    binding = store._commit_order
    store._commit_order = dies  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreUnavailable):
            await store.commit_create(
                make_session(session_id), done(key, token), ttl_s=600, expires_at=None
            )
    finally:
        store._commit_order = binding  # type: ignore[method-assign]
    assert await store.get_session(session_id) is not None
    await store.release_order(SCOPE, ORDER, token)  # SessionService._give_up
    return session_id


async def test_a_crash_between_session_and_binding_keeps_the_order_reserved(
    store: RedisStore,
) -> None:
    await begin(store, "k1", "t1")
    written = await crash_before_binding(store, "k1", "t1")
    # another key of the order is told of the written session (and answers 409 while it is
    # payable), however long after: the reservation lives as long as a bound one
    second = await begin(store, "k2", "t2")
    assert (second.claim.kind, second.order_holder) == (ClaimKind.CLAIMED, written)
    assert await store.client.pttl(store.keys.order(SCOPE, ORDER)) > 29 * 86_400_000
    # once that session no longer holds the order, the create takes it over and binds it
    assert await store.replace_order(SCOPE, ORDER, written, "t2", lease_ms=5_000)
    assert await order_holder(store, SCOPE, ORDER) == "claim:t2"
    session = session_id_for(SCOPE, "k2")
    assert await store.commit_create(
        make_session(session), done("k2", "t2"), ttl_s=60, expires_at=None
    )
    assert await order_holder(store, SCOPE, ORDER) == session


async def test_a_session_whose_create_died_before_indexing_it_is_found_by_its_order(
    store: RedisStore,
) -> None:
    """The merchant never got that create's 201: searching the orderReference finds it (the
    reservation names it), and indexes it for the searches after."""
    await begin(store, "k1", "t1")
    written = await crash_before_binding(store, "k1", "t1")
    index = store.keys.order_sessions(SCOPE, ORDER)
    assert await store.client.zscore(index, written) is None
    found = await store.find_sessions(SCOPE, ORDER, limit=10)
    assert [s.sessionId for s in found] == [written]
    assert await store.client.zscore(index, written) is not None
    assert await store.client.pttl(index) > 0
    # another merchant's search of the same reference finds nothing of it
    assert await store.find_sessions("merchant-2", ORDER, limit=10) == []


async def test_a_crash_without_release_reads_as_its_session_once_the_lease_is_over(
    store: RedisStore,
) -> None:
    await begin(store, "k1", "t1", lease_ms=LEASE_MS)
    session_id = session_id_for(SCOPE, "k1")
    await store.conn.script(  # only A of the commit ran
        *_only_session_write(store, session_id, "k1", "t1")
    )
    second = await begin(store, "k2", "t2")
    assert second.order_holder == "claim:t1"  # in flight
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    third = await begin(store, "k3", "t3")
    assert third.order_holder == session_id
    # a retry of the key that crashed binds the order to its own session
    retry = await begin(store, "k1", "t4")
    assert retry.claim.kind is ClaimKind.CLAIMED
    record = await store.get_session(session_id)
    assert record is not None
    assert await store.commit_create(record, done("k1", "t4"), ttl_s=600, expires_at=None)
    assert await order_holder(store, SCOPE, ORDER) == session_id
    assert (await begin(store, "k1", "t5")).claim.kind is ClaimKind.REPLAY


def _only_session_write(
    store: RedisStore, session_id: str, key: str, token: str
) -> tuple[LuaScript, list[str], list[ScriptArg]]:
    from gateway.store.redis_create import _COMMIT_SESSION

    n = bucket(session_id)
    keys = store.keys
    return (
        _COMMIT_SESSION,
        [
            keys.session(session_id),
            keys.expiry_index(n),
            keys.outbox_due(n),
            keys.outbox_items(n),
            keys.orphans_due(n),
            keys.orphans_items(n),
            keys.idempotency(SCOPE, key),
        ],
        [
            make_session(session_id).model_dump_json(),
            600_000,
            "",
            session_id,
            "0",
            token,
            201,
            b"{}",
            600_000,
            "",
            "",
            0,
            "1.0",
        ],
    )


async def test_a_lapsed_claim_whose_session_was_never_written_is_taken_over(
    store: RedisStore,
) -> None:
    await begin(store, "k1", "t1", lease_ms=LEASE_MS)  # then the process died
    assert (await begin(store, "k2", "t2")).order_holder == "claim:t1"
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    taken = await begin(store, "k3", "t3")
    assert (taken.claim.kind, taken.order_holder) == (ClaimKind.CLAIMED, None)
    assert await order_holder(store, SCOPE, ORDER) == "claim:t3"
    # the dead create's late commit binds nothing over it
    late = session_id_for(SCOPE, "k1")
    await store.commit_create(make_session(late), done("k1", "t1"), ttl_s=60, expires_at=None)
    assert await order_holder(store, SCOPE, ORDER) == "claim:t3"


async def test_replace_order_takes_a_lapsed_claim_over_from_its_session_only(
    store: RedisStore,
) -> None:
    await begin(store, "k1", "t1", lease_ms=LEASE_MS)
    session_id = session_id_for(SCOPE, "k1")
    assert not await store.replace_order(SCOPE, ORDER, session_id, "t2", lease_ms=5_000)
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    assert not await store.replace_order(SCOPE, ORDER, "s_other", "t2", lease_ms=5_000)
    assert await store.replace_order(SCOPE, ORDER, session_id, "t2", lease_ms=5_000)
    assert not await store.replace_order(SCOPE, ORDER, session_id, "t3", lease_ms=5_000)


@pytest.mark.parametrize("failing", ["_RESERVE", "_CLAIM"])
async def test_a_write_that_no_replica_confirmed_gives_the_key_and_the_order_up_again(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The claim or the reservation ran on the primary but WAIT fell short (503): the key is
    given up (its pin kept) and the order released, so the client's retry runs at once instead
    of being told 409 for the whole lease."""
    from gateway.store import redis_create

    unconfirmed_script = getattr(redis_create, failing)
    run = store.conn.script

    async def unconfirmed(script: LuaScript, *args: Any, **options: Any) -> Any:
        reply = await run(script, *args, **options)
        if script is unconfirmed_script:
            raise Unconfirmed("redis write reached 0 of 1 replicas within 500 ms")
        return reply

    monkeypatch.setattr(store.conn, "script", unconfirmed)
    with pytest.raises(StoreUnavailable):
        await begin(store, "k1", "t1")
    monkeypatch.setattr(store.conn, "script", run)
    retry = await begin(store, "k1", "t2")
    assert (retry.claim.kind, retry.order_holder) == (ClaimKind.CLAIMED, None)


async def test_an_unreadable_outbox_item_does_not_hold_back_the_others(
    store: RedisStore,
) -> None:
    """A corrupted item (not JSON) is due with others, in its bucket and in others: the claim
    hands the readable ones out instead of failing the whole batch (which leased them all
    without handing them out, so they waited a lease, again at every lease end)."""
    a, b, c = ids_in_distinct_buckets(3)
    await store.outbox_add([item(a), item(b)], due=1.0)
    n = bucket(c)
    await store.client.hset(store.keys.outbox_items(n), c, b"not json")
    await store.client.zadd(store.keys.outbox_due(n), {c: 0.5})
    same = next(f"x{i}" for i in range(1000) if bucket(f"x{i}") == n)
    await store.outbox_add([item(same)], due=1.0)
    claimed = await store.outbox_claim(now=2.0, lease_s=30, limit=10)
    assert sorted(i.id for i in claimed) == sorted([a, b, same])


async def test_a_failed_create_whose_undo_fails_too_gives_the_key_up_in_the_background(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reservation and the one give-up try right after it both fail (Redis frozen, then
    failing over): the key is given up again in the background once Redis answers, instead of
    answering 409 for the whole lease."""
    from gateway.store.redis_create import _ABANDON, _RELEASE_ORDER, _RESERVE

    run = store.conn.script
    down = True

    async def failing(script: LuaScript, *args: Any, **options: Any) -> Any:
        if down and script in (_RESERVE, _RELEASE_ORDER, _ABANDON):
            raise StoreUnavailable("redis begin_create failed: TimeoutError")
        return await run(script, *args, **options)

    monkeypatch.setattr(store.conn, "script", failing)
    with pytest.raises(StoreUnavailable):
        await begin(store, "k1", "t1", lease_ms=60_000)
    assert (await begin(store, "k1", "t2", lease_ms=60_000)).claim.kind is ClaimKind.IN_FLIGHT
    down = False
    deadline = asyncio.get_running_loop().time() + 3.0
    while (await begin(store, "k1", "t3", lease_ms=60_000)).claim.kind is ClaimKind.IN_FLIGHT:
        assert asyncio.get_running_loop().time() < deadline, "the key stayed claimed"
        await asyncio.sleep(0.1)
