"""Idempotency-Keys of the calls on a session (gateway/operation_keys.py), kept on the session
and changed only by compare-and-set, against every record store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.domain.errors import Conflict, NotFound, Unprocessable
from gateway.domain.session import SessionRecord
from gateway.operation_keys import (
    MAX_OPERATIONS,
    Claimed,
    OperationKeys,
    Prepared,
    Replay,
    operation_fingerprint,
)
from gateway.store.base import RecordStore
from tests.store.samples import make_session, store_session

LEASE = timedelta(seconds=5)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def nothing(record: SessionRecord, resumed: bool) -> Prepared:
    return Prepared()


async def setup(store: RecordStore) -> tuple[OperationKeys, Clock, str]:
    record = make_session("0b0e7a52-4c1c-4b8e-9a51-7f00d1a0c0de")
    await store_session(store, record, ttl_s=600)
    clock = Clock()
    return OperationKeys(store, lease=LEASE, clock=clock), clock, record.sessionId


async def claim(
    keys: OperationKeys, session_id: str, key: str, kind: str = "refund", body: str = "40.00"
) -> Claimed | Replay:
    fingerprint = operation_fingerprint(kind, {"amount": Decimal(body)})
    return await keys.claim("merchant-1", session_id, key, kind, fingerprint, nothing)


async def test_replay_mismatch_and_in_flight(store: RecordStore) -> None:
    keys, clock, session_id = await setup(store)
    first = await claim(keys, session_id, "k1")
    assert isinstance(first, Claimed)
    assert not first.resumed
    with pytest.raises(Conflict) as busy:
        await claim(keys, session_id, "k1")
    assert busy.value.headers["Retry-After"] == "5"
    clock.now += timedelta(seconds=3.5)
    with pytest.raises(Conflict) as later:
        await claim(keys, session_id, "k1")
    assert later.value.headers["Retry-After"] == "2"
    with pytest.raises(Unprocessable) as other_body:
        await claim(keys, session_id, "k1", body="41.00")
    assert other_body.value.code == "IDEMPOTENCY_KEY_MISMATCH"
    with pytest.raises(Unprocessable):
        await claim(keys, session_id, "k1", kind="capture")
    answer = b'{"refundId":"r1","amount":"40.00"}'
    assert await keys.finish(first, 201, answer) == answer
    replay = await claim(keys, session_id, "k1", body="40.0")  # the same amount
    assert replay == Replay(201, answer)
    with pytest.raises(Unprocessable):
        await claim(keys, session_id, "k1", body="41.00")
    with pytest.raises(NotFound):
        await keys.claim("merchant-2", session_id, "k1", "refund", "fp", nothing)


async def test_a_dead_holder_frees_the_key_after_its_lease(store: RecordStore) -> None:
    keys, clock, session_id = await setup(store)
    dead = await claim(keys, session_id, "k1")
    assert isinstance(dead, Claimed)
    clock.now += LEASE + timedelta(milliseconds=1)
    taken = await claim(keys, session_id, "k1")
    assert isinstance(taken, Claimed)
    assert taken.resumed
    # the dead holder's late answer is not stored: the key is no longer its own
    await keys.finish(dead, 201, b'{"late":true}')
    await keys.finish(taken, 201, b'{"ok":true}')
    assert await claim(keys, session_id, "k1") == Replay(201, b'{"ok":true}')


async def test_release_forgets_or_keeps_the_key(store: RecordStore) -> None:
    keys, _, session_id = await setup(store)
    refused = await claim(keys, session_id, "k1")
    assert isinstance(refused, Claimed)
    await keys.release(refused, forget=True)
    again = await claim(keys, session_id, "k1", body="99.00")  # judged afresh: no mismatch
    assert isinstance(again, Claimed)
    assert not again.resumed
    await keys.release(again, forget=False)  # unknown outcome: the retry resumes at once
    with pytest.raises(Unprocessable):
        await claim(keys, session_id, "k1", body="40.00")
    resumed = await claim(keys, session_id, "k1", body="99.00")
    assert isinstance(resumed, Claimed)
    assert resumed.resumed


async def test_concurrent_requests_of_one_key_claim_it_once(store: RecordStore) -> None:
    keys, _, session_id = await setup(store)
    results = await asyncio.gather(
        *(claim(keys, session_id, "same") for _ in range(20)), return_exceptions=True
    )
    claimed = [r for r in results if isinstance(r, Claimed)]
    assert len(claimed) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Claimed))


async def test_captures_and_voids_run_one_at_a_time(store: RecordStore) -> None:
    keys, clock, session_id = await setup(store)
    capture = await claim(keys, session_id, "c1", kind="capture")
    assert isinstance(capture, Claimed)
    with pytest.raises(Conflict) as busy:
        await claim(keys, session_id, "v1", kind="cancel")
    assert "capture" in str(busy.value.details)
    assert isinstance(await claim(keys, session_id, "r1", kind="refund"), Claimed)
    clock.now += LEASE + timedelta(seconds=1)  # the capture's holder died
    assert isinstance(await claim(keys, session_id, "v1", kind="cancel"), Claimed)


async def test_the_list_is_bounded(store: RecordStore) -> None:
    keys, clock, session_id = await setup(store)
    for index in range(MAX_OPERATIONS):
        claimed = await claim(keys, session_id, f"k{index}")
        assert isinstance(claimed, Claimed)
        await keys.finish(claimed, 201, f'{{"n":{index}}}'.encode())
        clock.now += timedelta(milliseconds=1)
    newest = await claim(keys, session_id, "one-more")
    assert isinstance(newest, Claimed)
    record = await store.get_session(session_id)
    assert record is not None
    assert len(record.operations) == MAX_OPERATIONS
    assert "k0" not in {op.key for op in record.operations}  # the oldest made room
    assert await claim(keys, session_id, "k1") == Replay(201, b'{"n":1}')
