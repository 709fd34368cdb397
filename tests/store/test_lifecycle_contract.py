"""The lifecycle half of the store contract (compare-and-set, event markers, expiry index,
notification outbox), against every store of the ``store`` fixture (memory, Redis, PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

from gateway.domain.session import SessionStatus
from gateway.store.base import OutboxItem, RecordStore

from .samples import make_session, store_session
from .test_contract import PAST_ONE_SECOND


def item(item_id: str = "n1", body: bytes = b'{"type":"payment_session.created"}') -> OutboxItem:
    return OutboxItem(
        id=item_id,
        merchant_id="merchant-1",
        event_type="payment_session.created",
        body=body,
        created_at=1_700_000_000.5,
    )


# compare-and-set -----------------------------------------------------------------------------


async def test_update_applies_only_on_the_expected_version(store: RecordStore) -> None:
    record = make_session()
    await store_session(store, record, ttl_s=600)
    moved = record.model_copy(update={"status": SessionStatus.COMPLETED, "version": 1})
    assert await store.update_session(moved, expected_version=0) is True
    stored = await store.get_session(record.sessionId)
    assert stored is not None
    assert stored.status is SessionStatus.COMPLETED
    assert stored.version == 1
    stale = record.model_copy(update={"status": SessionStatus.FAILED, "version": 1})
    assert await store.update_session(stale, expected_version=0) is False
    after = await store.get_session(record.sessionId)
    assert after is not None
    assert after.status is SessionStatus.COMPLETED


async def test_update_of_an_unknown_session_fails(store: RecordStore) -> None:
    assert await store.update_session(make_session("nope"), expected_version=0) is False
    assert await store.get_session("nope") is None


async def test_update_keeps_the_retention_ttl(store: RecordStore) -> None:
    record = make_session()
    await store_session(store, record, ttl_s=1)
    moved = record.model_copy(update={"version": 1})
    assert await store.update_session(moved, expected_version=0)
    assert await store.get_session(record.sessionId) == moved
    await asyncio.sleep(PAST_ONE_SECOND)  # the update neither renewed nor dropped the lifetime
    assert await store.get_session(record.sessionId) is None


async def test_concurrent_updates_have_exactly_one_winner(store: RecordStore) -> None:
    record = make_session()
    await store_session(store, record, ttl_s=600)
    tries = [
        store.update_session(record.model_copy(update={"version": 1}), expected_version=0)
        for _ in range(25)
    ]
    results = await asyncio.gather(*tries)
    assert results.count(True) == 1


async def test_update_enqueues_its_notifications_with_it(store: RecordStore) -> None:
    record = make_session()
    await store_session(store, record, ttl_s=600)
    assert await store.outbox_backlog() == 0
    moved = record.model_copy(update={"version": 1})
    assert not await store.update_session(moved, expected_version=5, outbox=[item("lost")])
    assert await store.outbox_backlog() == 0  # a refused update enqueues nothing
    assert await store.update_session(moved, expected_version=0, outbox=[item("kept")])
    claimed = await store.outbox_claim(now=time.time() + 1, lease_s=30, limit=10)
    assert [c.id for c in claimed] == ["kept"]


async def test_commit_indexes_expiry_and_enqueues(store: RecordStore) -> None:
    record = make_session()
    await store_session(store, record, ttl_s=600, expires_at=1000.0, outbox=[item("created")])
    assert await store.claim_expiries(now=999.0, lease_s=60, limit=10) == []
    assert await store.claim_expiries(now=1000.0, lease_s=60, limit=10) == [record.sessionId]
    claimed = await store.outbox_claim(now=time.time() + 1, lease_s=30, limit=10)
    assert [(c.id, c.body) for c in claimed] == [("created", item().body)]


# webhook event markers -----------------------------------------------------------------------


async def test_event_is_leased_then_done_per_provider(store: RecordStore) -> None:
    assert await store.claim_event("stripe", "evt_1", lease_s=60) == "new"
    assert await store.claim_event("stripe", "evt_1", lease_s=60) == "processing"
    assert await store.claim_event("adyen", "evt_1", lease_s=60) == "new"
    await store.finish_event("stripe", "evt_1", ttl_s=60)
    assert await store.claim_event("stripe", "evt_1", lease_s=60) == "done"
    await store.forget_event("adyen", "evt_1")
    assert await store.claim_event("adyen", "evt_1", lease_s=60) == "new"


async def test_concurrent_claims_have_one_winner(store: RecordStore) -> None:
    results = await asyncio.gather(*(store.claim_event("p", "e", lease_s=60) for _ in range(20)))
    assert results.count("new") == 1
    assert results.count("processing") == 19


async def test_a_lost_lease_frees_the_event_and_done_markers_expire(store: RecordStore) -> None:
    assert await store.claim_event("stripe", "evt_crash", lease_s=0.3) == "new"
    await asyncio.sleep(0.4)  # the process holding it died: the resend is applied
    assert await store.claim_event("stripe", "evt_crash", lease_s=60) == "new"
    await store.finish_event("stripe", "evt_crash", ttl_s=1)
    await asyncio.sleep(1.1)
    assert await store.claim_event("stripe", "evt_crash", lease_s=60) == "new"


# expiry index --------------------------------------------------------------------------------


async def test_claim_expiries_leases_due_ids_in_due_order(store: RecordStore) -> None:
    await store.schedule_expiry("late", 300.0)
    await store.schedule_expiry("early", 100.0)
    await store.schedule_expiry("future", 10_000.0)
    assert await store.claim_expiries(now=500.0, lease_s=60, limit=1) == ["early"]
    assert await store.claim_expiries(now=500.0, lease_s=60, limit=10) == ["late"]
    assert await store.claim_expiries(now=500.0, lease_s=60, limit=10) == []  # leased
    # a sweeper that died: its ids come back when the lease ends
    assert sorted(await store.claim_expiries(now=561.0, lease_s=60, limit=10)) == [
        "early",
        "late",
    ]
    await store.drop_expiry("early")
    await store.drop_expiry("late")
    assert await store.claim_expiries(now=5_000.0, lease_s=60, limit=10) == []
    assert await store.claim_expiries(now=10_000.0, lease_s=60, limit=10) == ["future"]


# outbox --------------------------------------------------------------------------------------


async def test_outbox_claim_leases_and_done_removes(store: RecordStore) -> None:
    await store.outbox_add([item("a"), item("b")], due=100.0)
    assert await store.outbox_claim(now=99.0, lease_s=30, limit=10) == []
    claimed = await store.outbox_claim(now=100.0, lease_s=30, limit=10)
    assert sorted(c.id for c in claimed) == ["a", "b"]
    assert all(c.lease for c in claimed)
    assert await store.outbox_claim(now=100.0, lease_s=30, limit=10) == []  # leased
    assert await store.outbox_backlog() == 2
    for c in claimed:
        assert await store.outbox_done(c) is True
    assert await store.outbox_backlog() == 0
    assert await store.outbox_done(claimed[0]) is False


async def test_outbox_backlog_counts_up_to_its_bound(store: RecordStore) -> None:
    await store.outbox_add([item("a"), item("b"), item("c")], due=100.0)
    assert await store.outbox_backlog() == 3
    assert await store.outbox_backlog(at_most=2) == 2
    assert await store.outbox_backlog(at_most=3) == 3
    await store.outbox_claim(now=100.0, lease_s=30, limit=1)
    assert await store.outbox_backlog(at_most=5) == 3  # an item in delivery still counts


async def test_outbox_stale_lease_cannot_finish_after_a_reclaim(store: RecordStore) -> None:
    await store.outbox_add([item("a")], due=100.0)
    (first,) = await store.outbox_claim(now=100.0, lease_s=30, limit=10)
    (second,) = await store.outbox_claim(now=131.0, lease_s=30, limit=10)  # lease ran out
    assert first.lease != second.lease
    assert await store.outbox_done(first) is False
    assert await store.outbox_retry(first.failed("late"), due=500.0) is False
    assert await store.outbox_done(second) is True
    assert await store.outbox_backlog() == 0


async def test_outbox_retry_keeps_attempts_and_reschedules(store: RecordStore) -> None:
    await store.outbox_add([item("a")], due=100.0)
    (claimed,) = await store.outbox_claim(now=100.0, lease_s=30, limit=10)
    assert await store.outbox_retry(claimed.failed("http_500"), due=200.0) is True
    assert await store.outbox_claim(now=199.0, lease_s=30, limit=10) == []
    (again,) = await store.outbox_claim(now=200.0, lease_s=30, limit=10)
    assert (again.attempts, again.last_error, again.body) == (1, "http_500", item().body)


async def test_outbox_dead_letters_are_kept_newest_first_and_capped(store: RecordStore) -> None:
    await store.outbox_add([item(f"d{i}") for i in range(4)], due=100.0)
    claimed = await store.outbox_claim(now=100.0, lease_s=30, limit=10)
    by_id = {c.id: c for c in claimed}
    for i in range(4):
        dead = by_id[f"d{i}"].failed("gave_up")
        assert await store.outbox_dead(dead, at=1000.0 + i, keep=3) is True
    letters = await store.outbox_dead_letters(10)
    assert [d.id for d in letters] == ["d3", "d2", "d1"]
    assert letters[0].attempts == 1
    assert letters[0].last_error == "gave_up"
    assert letters[0].lease is None
    assert await store.outbox_backlog() == 0
    assert await store.outbox_claim(now=10_000.0, lease_s=30, limit=10) == []


async def test_outbox_item_round_trips_exact_bytes(store: RecordStore) -> None:
    body = '{"amount":"140.76","name":"Zoë ✓"}'.encode()
    await store.outbox_add([item("u", body)], due=1.0)
    (claimed,) = await store.outbox_claim(now=2.0, lease_s=30, limit=1)
    assert claimed.body == body
    assert claimed.created_at == 1_700_000_000.5
