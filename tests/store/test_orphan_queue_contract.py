"""The durable orphan queue (jobs committed with their session, leased, retried), against
every record store."""

from __future__ import annotations

import time
from dataclasses import replace

from gateway.store.base import ClaimKind, OrphanJob, RecordStore
from tests.store.samples import make_session
from tests.store.test_create_contract import FP, completion


def job(session_id: str = "s_1", provider: str = "stripe") -> OrphanJob:
    return OrphanJob(
        id=f"{session_id}:{provider}",
        session_id=session_id,
        provider=provider,
        request=b'{"pinned": "create \\u00e9"}',
    )


async def committed(store: RecordStore, *jobs: OrphanJob) -> None:
    begun = await store.begin_create("m1", "k1", FP, token="t1", lease_ms=5000, order_ref=None)
    assert begun.claim.kind is ClaimKind.CLAIMED
    assert await store.commit_create(
        make_session("s_1"), completion("t1", None), ttl_s=60, expires_at=None, orphans=jobs
    )


async def test_a_commit_enqueues_its_orphan_jobs_due_at_once(store: RecordStore) -> None:
    await committed(store, job("s_1", "stripe"), job("s_1", "adyen"))
    claimed = await store.orphan_claim(now=time.time() + 0.01, lease_s=30, limit=10)
    assert sorted(j.provider for j in claimed) == ["adyen", "stripe"]
    stripe = next(j for j in claimed if j.provider == "stripe")
    assert (stripe.id, stripe.session_id, stripe.request) == (
        "s_1:stripe",
        "s_1",
        b'{"pinned": "create \\u00e9"}',
    )
    assert stripe.lease is not None
    assert stripe.attempts == 0


async def test_a_commit_without_orphans_enqueues_nothing(store: RecordStore) -> None:
    await committed(store)
    assert await store.orphan_claim(now=time.time() + 60, lease_s=30, limit=10) == []


async def test_a_leased_job_is_nobody_elses_until_its_lease_ends(store: RecordStore) -> None:
    await committed(store, job())
    now = time.time() + 0.01
    (first,) = await store.orphan_claim(now=now, lease_s=30, limit=10)
    assert await store.orphan_claim(now=now + 29, lease_s=30, limit=10) == []
    # the holder crashed: after the lease the job comes back, under a new lease
    (again,) = await store.orphan_claim(now=now + 31, lease_s=30, limit=10)
    assert again.id == first.id
    assert again.lease != first.lease
    # the crashed holder's lease no longer finishes it
    assert not await store.orphan_done(first)
    assert not await store.orphan_retry(first, due=now)
    assert await store.orphan_done(again)
    assert await store.orphan_claim(now=now + 1000, lease_s=30, limit=10) == []


async def test_a_retried_job_keeps_its_attempts_and_comes_back_when_due(store: RecordStore) -> None:
    await committed(store, job())
    now = time.time() + 0.01
    (leased,) = await store.orphan_claim(now=now, lease_s=30, limit=10)
    assert await store.orphan_retry(replace(leased, attempts=3), due=now + 5)
    assert await store.orphan_claim(now=now + 4, lease_s=30, limit=10) == []
    (back,) = await store.orphan_claim(now=now + 5, lease_s=30, limit=10)
    assert back.attempts == 3
    assert back.request == leased.request
    # a retry hands the lease back: the old copy can no longer finish it
    assert not await store.orphan_done(leased)
    assert await store.orphan_done(back)


async def test_claims_are_bounded_by_limit(store: RecordStore) -> None:
    await committed(store, *(job("s_1", f"p{i}") for i in range(5)))
    now = time.time() + 0.01
    assert len(await store.orphan_claim(now=now, lease_s=30, limit=2)) == 2
    assert len(await store.orphan_claim(now=now, lease_s=30, limit=10)) == 3
