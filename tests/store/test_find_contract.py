"""``find_sessions``: a merchant's sessions of an orderReference, newest first, in pages.

Sessions are created as production creates them (``begin_create`` + ``commit_create``); the
tests use nothing but the store protocol, so they run unchanged on every store.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.domain.session import SessionRecord, SessionStatus
from gateway.store.base import ClaimKind, Completion, RecordStore, SessionCursor, StoredResponse
from tests.store.samples import make_session

T0 = datetime(2026, 3, 1, 12, 0, 0, 250_001, tzinfo=UTC)


async def create(
    store: RecordStore,
    session_id: str,
    at: datetime = T0,
    *,
    merchant: str = "m1",
    order: str = "ORD-1",
    ttl_s: int = 600,
    guarded: bool = False,
) -> SessionRecord:
    """Create a session through the two-round-trip create path."""
    record = make_session(session_id).model_copy(
        update={"merchantId": merchant, "orderReference": order, "createdAt": at, "updatedAt": at}
    )
    key, token = f"key-{session_id}", f"tok-{session_id}"
    order_ref = order if guarded else None
    begun = await store.begin_create(
        merchant, key, "fp", token=token, lease_ms=5000, order_ref=order_ref
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    completion = Completion(
        scope=merchant,
        key=key,
        token=token,
        response=StoredResponse(201, b"{}", f"/api/v1/sessions/{session_id}"),
        ttl_s=600,
        order_ref=order_ref,
        order_ttl_s=600,
    )
    assert await store.commit_create(record, completion, ttl_s=ttl_s, expires_at=None)
    return record


def ids(records: list[SessionRecord]) -> list[str]:
    return [r.sessionId for r in records]


def cursor_of(record: SessionRecord) -> SessionCursor:
    return SessionCursor(record.createdAt, record.sessionId)


async def all_pages(store: RecordStore, page_size: int, merchant: str = "m1") -> list[list[str]]:
    pages: list[list[str]] = []
    before: SessionCursor | None = None
    while True:
        page = await store.find_sessions(merchant, "ORD-1", limit=page_size, before=before)
        assert len(page) <= page_size
        if not page:
            return pages
        pages.append(ids(page))
        before = cursor_of(page[-1])


async def wait_gone(store: RecordStore, session_id: str) -> None:
    """Wait (at most 10 s) until the session is past its retention."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await store.get_session(session_id) is not None:
        assert loop.time() < deadline, f"{session_id} outlived its retention"
        await asyncio.sleep(0.05)


async def seven(store: RecordStore) -> list[str]:
    """Seven sessions, three of them created in the same microsecond; newest first."""
    tied = T0 + timedelta(seconds=5)
    await create(store, "s_a", T0)
    await create(store, "s_b", T0 + timedelta(microseconds=1))
    await create(store, "s_t2", tied)
    await create(store, "s_t9", tied)
    await create(store, "s_t5", tied)
    await create(store, "s_z", T0 + timedelta(hours=1))
    await create(store, "s_0", T0 - timedelta(days=3))
    return ["s_z", "s_t9", "s_t5", "s_t2", "s_b", "s_a", "s_0"]


async def test_newest_first_with_equal_instants_by_session_id_descending(
    store: RecordStore,
) -> None:
    expected = await seven(store)
    assert ids(await store.find_sessions("m1", "ORD-1", limit=100)) == expected


async def test_records_are_the_stored_sessions(store: RecordStore) -> None:
    first = await create(store, "s_1", T0)
    found = await store.find_sessions("m1", "ORD-1", limit=10)
    assert found == [first]
    assert found[0] == await store.get_session("s_1")


@pytest.mark.parametrize("page_size", [1, 2, 3, 6, 7, 50])
async def test_pages_have_no_duplicates_and_no_gaps(store: RecordStore, page_size: int) -> None:
    expected = await seven(store)
    pages = await all_pages(store, page_size)
    assert [sid for page in pages for sid in page] == expected
    assert all(len(page) == page_size for page in pages[:-1])


async def test_a_page_starts_strictly_after_its_cursor_even_within_a_tie(
    store: RecordStore,
) -> None:
    await seven(store)
    tied = T0 + timedelta(seconds=5)
    after_t9 = await store.find_sessions("m1", "ORD-1", limit=2, before=SessionCursor(tied, "s_t9"))
    assert ids(after_t9) == ["s_t5", "s_t2"]
    # a cursor need not name a stored session: the order alone decides
    between = await store.find_sessions("m1", "ORD-1", limit=10, before=SessionCursor(tied, "s_t6"))
    assert ids(between) == ["s_t5", "s_t2", "s_b", "s_a", "s_0"]
    oldest = await store.find_sessions("m1", "ORD-1", limit=10, before=SessionCursor(T0, "s_a"))
    assert ids(oldest) == ["s_0"]
    # the empty id sorts first: nothing created at that instant comes after it
    at_oldest = SessionCursor(T0 - timedelta(days=3), "")
    assert await store.find_sessions("m1", "ORD-1", limit=10, before=at_oldest) == []
    assert ids(
        await store.find_sessions("m1", "ORD-1", limit=10, before=SessionCursor(T0, ""))
    ) == ["s_0"]


async def test_a_cursor_in_another_time_zone_means_the_same_instant(store: RecordStore) -> None:
    await seven(store)
    tied = (T0 + timedelta(seconds=5)).astimezone(timezone(timedelta(hours=-7, minutes=-30)))
    page = await store.find_sessions("m1", "ORD-1", limit=10, before=SessionCursor(tied, "s_t9"))
    assert ids(page) == ["s_t5", "s_t2", "s_b", "s_a", "s_0"]


async def test_limit_caps_the_page(store: RecordStore) -> None:
    expected = await seven(store)
    assert ids(await store.find_sessions("m1", "ORD-1", limit=1)) == expected[:1]
    assert ids(await store.find_sessions("m1", "ORD-1", limit=4)) == expected[:4]
    assert ids(await store.find_sessions("m1", "ORD-1", limit=8)) == expected


async def test_only_the_merchants_sessions_of_that_order(store: RecordStore) -> None:
    await create(store, "s_mine", T0)
    await create(store, "s_theirs", T0 + timedelta(seconds=1), merchant="m2")
    await create(store, "s_other_order", T0 + timedelta(seconds=2), order="ORD-2")
    await create(store, "s_prefix", T0 + timedelta(seconds=3), order="ORD-10")
    assert ids(await store.find_sessions("m1", "ORD-1", limit=10)) == ["s_mine"]
    assert ids(await store.find_sessions("m2", "ORD-1", limit=10)) == ["s_theirs"]
    assert ids(await store.find_sessions("m1", "ORD-2", limit=10)) == ["s_other_order"]
    assert await store.find_sessions("m3", "ORD-1", limit=10) == []
    assert await store.find_sessions("m1", "ORD-", limit=10) == []
    assert await store.find_sessions("m1", "ord-1", limit=10) == []


async def test_separators_in_merchant_or_order_never_mix_two_pairs(store: RecordStore) -> None:
    await create(store, "s_1", T0, merchant="a:b", order="c")
    await create(store, "s_2", T0, merchant="a", order="b:c")
    await create(store, "s_3", T0, merchant="a%3Ab", order="c")
    await create(store, "s_4", T0, merchant="x{1}", order="%7D*\x00 é")
    assert ids(await store.find_sessions("a:b", "c", limit=10)) == ["s_1"]
    assert ids(await store.find_sessions("a", "b:c", limit=10)) == ["s_2"]
    assert ids(await store.find_sessions("a%3Ab", "c", limit=10)) == ["s_3"]
    assert ids(await store.find_sessions("x{1}", "%7D*\x00 é", limit=10)) == ["s_4"]
    assert await store.find_sessions("a", "b", limit=10) == []


async def test_sessions_are_found_with_or_without_the_order_guard(store: RecordStore) -> None:
    await create(store, "s_guarded", T0, guarded=True)
    await create(store, "s_free", T0 + timedelta(seconds=1))
    assert ids(await store.find_sessions("m1", "ORD-1", limit=10)) == ["s_free", "s_guarded"]


async def test_a_moved_session_is_found_as_it_is_now(store: RecordStore) -> None:
    record = await create(store, "s_1", T0)
    moved = record.model_copy(update={"status": SessionStatus.COMPLETED, "version": 1})
    assert await store.update_session(moved, expected_version=0)
    found = await store.find_sessions("m1", "ORD-1", limit=10)
    assert [(r.sessionId, r.status) for r in found] == [("s_1", SessionStatus.COMPLETED)]


async def test_a_commit_of_a_stored_session_is_not_listed_twice(store: RecordStore) -> None:
    record = await create(store, "s_1", T0)
    again = await store.begin_create(
        "m1", "key-again", "fp", token="t2", lease_ms=5000, order_ref=None
    )
    assert again.claim.kind is ClaimKind.CLAIMED
    completion = Completion("m1", "key-again", "t2", StoredResponse(201, b"{}"), ttl_s=60)
    later = record.model_copy(update={"createdAt": T0 + timedelta(hours=1)})
    await store.commit_create(later, completion, ttl_s=600, expires_at=None)
    found = await store.find_sessions("m1", "ORD-1", limit=10)
    assert found == [record]


async def test_sessions_past_their_retention_are_left_out(store: RecordStore) -> None:
    await create(store, "s_new", T0 + timedelta(seconds=4))
    await create(store, "s_short_1", T0 + timedelta(seconds=3), ttl_s=1)
    await create(store, "s_short_2", T0 + timedelta(seconds=2), ttl_s=1)
    await create(store, "s_mid", T0 + timedelta(seconds=1))
    await create(store, "s_old", T0)
    await wait_gone(store, "s_short_1")
    await wait_gone(store, "s_short_2")
    # a page is filled from beyond the expired sessions, and pages still join up
    first = await store.find_sessions("m1", "ORD-1", limit=2)
    assert ids(first) == ["s_new", "s_mid"]
    rest = await store.find_sessions("m1", "ORD-1", limit=2, before=cursor_of(first[-1]))
    assert ids(rest) == ["s_old"]
    assert ids(await store.find_sessions("m1", "ORD-1", limit=10)) == ["s_new", "s_mid", "s_old"]


async def test_an_order_whose_sessions_all_expired_finds_nothing(store: RecordStore) -> None:
    await create(store, "s_1", T0, ttl_s=1)
    await create(store, "s_2", T0 + timedelta(seconds=1), ttl_s=1)
    await wait_gone(store, "s_1")
    await wait_gone(store, "s_2")
    assert await store.find_sessions("m1", "ORD-1", limit=10) == []
    assert await store.find_sessions("m1", "ORD-1", limit=10, before=SessionCursor(T0, "z")) == []
