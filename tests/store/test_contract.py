"""One contract for every store: each test runs against the memory store and against Redis."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

from gateway.domain.session import SessionStatus
from gateway.store.base import ClaimKind, Store, StoredResponse
from gateway.store.coordination import CircuitState
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

from .samples import make_session

SCOPE = "merchant-1"
LEASE_MS = 200
T0 = 1_700_000_000.125  # synthetic epoch seconds for the circuit breaker


async def remaining_ms(store: Store, area: str, *parts: str) -> int:
    """Milliseconds before a record expires; -2 when it does not exist, -1 when it never does.

    ``area`` is one of idempotency, order, session, circuit (a RedisKeys method name)."""
    if isinstance(store, RedisStore):
        key: str = getattr(store.keys, area)(*parts)
        return int(await store.client.pttl(key))
    assert isinstance(store, MemoryStore)
    table = {
        "idempotency": store._idem,
        "order": store._orders,
        "session": store._sessions,
        "circuit": store._circuits,
    }[area]
    entry = table._data.get("\x00".join(parts))
    return -2 if entry is None else int((entry.expires - time.monotonic()) * 1000)


# idempotency -------------------------------------------------------------------------------


async def test_first_claim_wins_and_others_see_it_in_flight(store: Store) -> None:
    first = await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=5_000)
    assert first.kind is ClaimKind.CLAIMED
    assert first.token == "t1"

    second = await store.claim(SCOPE, "k1", "fp", token="t2", lease_ms=5_000)
    assert second.kind is ClaimKind.IN_FLIGHT
    assert second.token is None
    assert second.retry_after_ms is not None
    assert 4_000 < second.retry_after_ms <= 5_000


async def test_in_flight_claim_with_other_body_is_a_mismatch(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp-a", token="t1", lease_ms=5_000)
    claim = await store.claim(SCOPE, "k1", "fp-b", token="t2", lease_ms=5_000)
    assert claim.kind is ClaimKind.MISMATCH
    assert claim.response is None


async def test_completed_claim_replays_byte_for_byte(store: Store) -> None:
    body = b'{"sessionId":"s_1"}\x00\xff\xfe binary-safe'
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=5_000)
    response = StoredResponse(201, body, "/api/v1/sessions/s_1")
    assert await store.complete(SCOPE, "k1", "t1", response, ttl_s=60) is True

    replay = await store.claim(SCOPE, "k1", "fp", token="t2", lease_ms=5_000)
    assert replay.kind is ClaimKind.REPLAY
    assert replay.response == response

    other_body = await store.claim(SCOPE, "k1", "fp-other", token="t3", lease_ms=5_000)
    assert other_body.kind is ClaimKind.MISMATCH


async def test_replay_without_location_and_with_error_status(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=5_000)
    response = StoredResponse(422, b'{"error":{"code":"invalid"}}')
    assert await store.complete(SCOPE, "k1", "t1", response, ttl_s=60)
    replay = await store.claim(SCOPE, "k1", "fp", token="t2", lease_ms=5_000)
    assert replay.response == StoredResponse(422, b'{"error":{"code":"invalid"}}', None)


async def test_complete_with_wrong_token_does_nothing(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=5_000)
    assert (
        await store.complete(SCOPE, "k1", "intruder", StoredResponse(201, b"x"), ttl_s=60) is False
    )
    still = await store.claim(SCOPE, "k1", "fp", token="t2", lease_ms=5_000)
    assert still.kind is ClaimKind.IN_FLIGHT
    # the rightful holder can still finish
    assert await store.complete(SCOPE, "k1", "t1", StoredResponse(201, b"ok"), ttl_s=60) is True
    # and a second completion (token spent) is refused without touching the answer
    assert await store.complete(SCOPE, "k1", "t1", StoredResponse(500, b"no"), ttl_s=60) is False
    replay = await store.claim(SCOPE, "k1", "fp", token="t3", lease_ms=5_000)
    assert replay.response == StoredResponse(201, b"ok")


async def test_complete_of_unknown_key_is_refused(store: Store) -> None:
    assert await store.complete(SCOPE, "nope", "t1", StoredResponse(201, b"x"), ttl_s=60) is False
    claim = await store.claim(SCOPE, "nope", "fp", token="t2", lease_ms=5_000)
    assert claim.kind is ClaimKind.CLAIMED


async def test_release_lets_a_retry_claim_again(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=5_000)
    await store.release(SCOPE, "k1", "t1")
    again = await store.claim(SCOPE, "k1", "fp-new", token="t2", lease_ms=5_000)
    assert again.kind is ClaimKind.CLAIMED
    assert again.token == "t2"


async def test_release_with_wrong_token_does_nothing(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=5_000)
    await store.release(SCOPE, "k1", "intruder")
    assert (await store.claim(SCOPE, "k1", "fp", token="t2", lease_ms=5_000)).kind is (
        ClaimKind.IN_FLIGHT
    )


async def test_release_after_complete_keeps_the_answer(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=5_000)
    await store.complete(SCOPE, "k1", "t1", StoredResponse(201, b"ok"), ttl_s=60)
    await store.release(SCOPE, "k1", "t1")
    replay = await store.claim(SCOPE, "k1", "fp", token="t2", lease_ms=5_000)
    assert replay.kind is ClaimKind.REPLAY


async def test_expired_lease_lets_a_new_claimer_in(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=LEASE_MS)
    held = await store.claim(SCOPE, "k1", "fp", token="t2", lease_ms=LEASE_MS)
    assert held.kind is ClaimKind.IN_FLIGHT
    assert held.retry_after_ms is not None
    assert 0 < held.retry_after_ms <= LEASE_MS

    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    taken = await store.claim(SCOPE, "k1", "fp", token="t3", lease_ms=5_000)
    assert taken.kind is ClaimKind.CLAIMED
    # the crashed first holder comes back: it can neither finish nor drop the new claim
    assert await store.complete(SCOPE, "k1", "t1", StoredResponse(201, b"late"), ttl_s=60) is False
    await store.release(SCOPE, "k1", "t1")
    assert (await store.claim(SCOPE, "k1", "fp", token="t4", lease_ms=5_000)).kind is (
        ClaimKind.IN_FLIGHT
    )
    assert await store.complete(SCOPE, "k1", "t3", StoredResponse(201, b"new"), ttl_s=60)


async def test_scopes_and_keys_do_not_collide(store: Store) -> None:
    assert (await store.claim("a:b", "c", "fp", token="t1", lease_ms=5_000)).kind is (
        ClaimKind.CLAIMED
    )
    assert (await store.claim("a", "b:c", "fp", token="t2", lease_ms=5_000)).kind is (
        ClaimKind.CLAIMED
    )
    assert (await store.claim("other", "c", "fp", token="t3", lease_ms=5_000)).kind is (
        ClaimKind.CLAIMED
    )


async def test_idempotency_ttls_lease_then_retention(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=30_000)
    leased = await remaining_ms(store, "idempotency", SCOPE, "k1")
    assert 28_000 < leased <= 30_000

    await store.complete(SCOPE, "k1", "t1", StoredResponse(201, b"ok"), ttl_s=3_600)
    kept = await remaining_ms(store, "idempotency", SCOPE, "k1")
    assert 3_598_000 < kept <= 3_600_000


async def test_completed_record_expires_after_ttl(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=5_000)
    await store.complete(SCOPE, "k1", "t1", StoredResponse(201, b"ok"), ttl_s=1)
    await asyncio.sleep(1.15)
    fresh = await store.claim(SCOPE, "k1", "fp-other", token="t2", lease_ms=5_000)
    assert fresh.kind is ClaimKind.CLAIMED


async def test_fifty_concurrent_claimers_exactly_one_wins(store: Store) -> None:
    claims = await asyncio.gather(
        *(store.claim(SCOPE, "hot", "fp", token=f"t{i}", lease_ms=5_000) for i in range(50))
    )
    winners = [c for c in claims if c.kind is ClaimKind.CLAIMED]
    assert len(winners) == 1
    assert all(c.kind is ClaimKind.IN_FLIGHT for c in claims if c is not winners[0])
    # the winner's token is the one that holds the key
    winner_token = winners[0].token
    assert winner_token is not None
    assert await store.complete(SCOPE, "hot", winner_token, StoredResponse(201, b"w"), ttl_s=60)


# order guard -------------------------------------------------------------------------------


async def test_order_reserve_is_exclusive(store: Store) -> None:
    assert await store.reserve_order(SCOPE, "ORD-1", "t1", lease_ms=5_000) is None
    assert await store.reserve_order(SCOPE, "ORD-1", "t2", lease_ms=5_000) == "claim:t1"
    assert await store.reserve_order(SCOPE, "ORD-2", "t2", lease_ms=5_000) is None
    assert await store.reserve_order("merchant-2", "ORD-1", "t3", lease_ms=5_000) is None


async def test_order_bind_points_at_the_session(store: Store) -> None:
    await store.reserve_order(SCOPE, "ORD-1", "t1", lease_ms=5_000)
    await store.bind_order(SCOPE, "ORD-1", "intruder", "s_evil", ttl_s=60)
    assert await store.reserve_order(SCOPE, "ORD-1", "t2", lease_ms=5_000) == "claim:t1"

    await store.bind_order(SCOPE, "ORD-1", "t1", "s_1", ttl_s=60)
    assert await store.reserve_order(SCOPE, "ORD-1", "t2", lease_ms=5_000) == "s_1"
    # once bound, the token no longer owns a claim: neither release nor rebind touch it
    await store.release_order(SCOPE, "ORD-1", "t1")
    await store.bind_order(SCOPE, "ORD-1", "t1", "s_2", ttl_s=60)
    assert await store.reserve_order(SCOPE, "ORD-1", "t2", lease_ms=5_000) == "s_1"


async def test_order_replace_is_compare_and_set(store: Store) -> None:
    await store.reserve_order(SCOPE, "ORD-1", "t1", lease_ms=5_000)
    await store.bind_order(SCOPE, "ORD-1", "t1", "s_1", ttl_s=60)

    assert await store.replace_order(SCOPE, "ORD-1", "s_other", "t2", lease_ms=5_000) is False
    assert await store.reserve_order(SCOPE, "ORD-1", "t9", lease_ms=5_000) == "s_1"

    assert await store.replace_order(SCOPE, "ORD-1", "s_1", "t2", lease_ms=5_000) is True
    assert await store.reserve_order(SCOPE, "ORD-1", "t9", lease_ms=5_000) == "claim:t2"
    # the old session is gone from the slot: a second replace from it fails
    assert await store.replace_order(SCOPE, "ORD-1", "s_1", "t3", lease_ms=5_000) is False
    # replacing a slot that holds nothing fails too
    assert await store.replace_order(SCOPE, "ORD-9", "s_1", "t3", lease_ms=5_000) is False
    assert await store.reserve_order(SCOPE, "ORD-9", "t3", lease_ms=5_000) is None


async def test_concurrent_replace_has_one_winner(store: Store) -> None:
    await store.reserve_order(SCOPE, "ORD-1", "t0", lease_ms=5_000)
    await store.bind_order(SCOPE, "ORD-1", "t0", "s_done", ttl_s=60)
    results = await asyncio.gather(
        *(store.replace_order(SCOPE, "ORD-1", "s_done", f"t{i}", lease_ms=5_000) for i in range(20))
    )
    assert results.count(True) == 1


async def test_order_release(store: Store) -> None:
    await store.reserve_order(SCOPE, "ORD-1", "t1", lease_ms=5_000)
    await store.release_order(SCOPE, "ORD-1", "intruder")
    assert await store.reserve_order(SCOPE, "ORD-1", "t2", lease_ms=5_000) == "claim:t1"
    await store.release_order(SCOPE, "ORD-1", "t1")
    assert await store.reserve_order(SCOPE, "ORD-1", "t2", lease_ms=5_000) is None


async def test_order_lease_expires(store: Store) -> None:
    await store.reserve_order(SCOPE, "ORD-1", "t1", lease_ms=LEASE_MS)
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    assert await store.reserve_order(SCOPE, "ORD-1", "t2", lease_ms=5_000) is None
    # the expired holder cannot bind over the new reservation
    await store.bind_order(SCOPE, "ORD-1", "t1", "s_late", ttl_s=60)
    assert await store.reserve_order(SCOPE, "ORD-1", "t3", lease_ms=5_000) == "claim:t2"


async def test_order_ttls(store: Store) -> None:
    await store.reserve_order(SCOPE, "ORD-1", "t1", lease_ms=20_000)
    assert 18_000 < await remaining_ms(store, "order", SCOPE, "ORD-1") <= 20_000
    await store.bind_order(SCOPE, "ORD-1", "t1", "s_1", ttl_s=900)
    assert 898_000 < await remaining_ms(store, "order", SCOPE, "ORD-1") <= 900_000
    await store.replace_order(SCOPE, "ORD-1", "s_1", "t2", lease_ms=20_000)
    assert 18_000 < await remaining_ms(store, "order", SCOPE, "ORD-1") <= 20_000
    await store.release_order(SCOPE, "ORD-1", "t2")
    assert await remaining_ms(store, "order", SCOPE, "ORD-1") == -2


# sessions ----------------------------------------------------------------------------------


async def test_session_round_trip_is_exact(store: Store) -> None:
    record = make_session()
    await store.put_session(record, ttl_s=600)
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


async def test_session_overwrite_and_unknown(store: Store) -> None:
    await store.put_session(make_session(), ttl_s=600)
    await store.put_session(make_session(status=SessionStatus.COMPLETED), ttl_s=600)
    got = await store.get_session("s_1")
    assert got is not None
    assert got.status is SessionStatus.COMPLETED
    assert await store.get_session("s_unknown") is None


async def test_session_ttl(store: Store) -> None:
    await store.put_session(make_session("s_long"), ttl_s=86_400)
    assert 86_398_000 < await remaining_ms(store, "session", "s_long") <= 86_400_000
    await store.put_session(make_session("s_short"), ttl_s=1)
    await asyncio.sleep(1.15)
    assert await store.get_session("s_short") is None
    assert await store.get_session("s_long") is not None


# circuit breaker ---------------------------------------------------------------------------


async def fail(store: Store, provider: str, now: float) -> CircuitState:
    return await store.circuit_failure(provider, now=now, window_s=10, threshold=3, open_s=30)


async def test_unknown_circuits_are_closed(store: Store) -> None:
    states = await store.circuit_states(["stripe", "adyen"], now=T0)
    assert states == {"stripe": CircuitState("closed"), "adyen": CircuitState("closed")}
    assert await store.circuit_states([], now=T0) == {}


async def test_circuit_opens_at_threshold_within_window(store: Store) -> None:
    assert await fail(store, "stripe", T0) == CircuitState("closed", 1)
    assert await fail(store, "stripe", T0 + 1) == CircuitState("closed", 2)
    opened = await fail(store, "stripe", T0 + 2.5)
    assert opened == CircuitState("open", 3, T0 + 2.5 + 30)

    states = await store.circuit_states(["stripe", "adyen"], now=T0 + 3)
    assert states["stripe"] == CircuitState("open", 3, T0 + 32.5)
    assert states["adyen"] == CircuitState("closed")


async def test_failures_spread_outside_the_window_do_not_open(store: Store) -> None:
    assert (await fail(store, "stripe", T0)).state == "closed"
    assert (await fail(store, "stripe", T0 + 6)).failures == 2
    # T0 has left the 10 s window by T0 + 12: only two failures count
    third = await fail(store, "stripe", T0 + 12)
    assert third == CircuitState("closed", 2)
    # exactly window_s later the oldest failure no longer counts either
    assert await fail(store, "stripe", T0 + 16) == CircuitState("closed", 2)
    assert (await store.circuit_states(["stripe"], now=T0 + 16))["stripe"].state == "closed"


async def test_open_circuit_turns_half_open_after_open_until(store: Store) -> None:
    for i in range(3):
        await fail(store, "stripe", T0 + i)
    open_until = T0 + 2 + 30
    assert (await store.circuit_states(["stripe"], now=open_until - 0.001))["stripe"].state == (
        "open"
    )
    half = (await store.circuit_states(["stripe"], now=open_until))["stripe"]
    assert half == CircuitState("half_open", 3, open_until)


async def test_failure_while_open_changes_nothing(store: Store) -> None:
    for i in range(3):
        await fail(store, "stripe", T0 + i)
    late = await fail(store, "stripe", T0 + 5)
    assert late == CircuitState("open", 3, T0 + 32)


async def test_probe_limit_in_half_open(store: Store) -> None:
    async def probe(now: float) -> bool:
        return await store.circuit_acquire_probe("stripe", now=now, max_probes=2, probe_ttl_s=5)

    assert await probe(T0) is True  # closed: everyone goes through
    for i in range(3):
        await fail(store, "stripe", T0 + i)
    assert await probe(T0 + 10) is False  # open
    half = T0 + 32
    assert await probe(half) is True
    assert await probe(half + 1) is True
    assert await probe(half + 2) is False  # two probes out within 5 s
    assert await probe(half + 5.5) is True  # the first probe slot timed out
    assert await probe(half + 5.6) is False
    assert await store.circuit_acquire_probe("adyen", now=half, max_probes=2, probe_ttl_s=5)


async def test_concurrent_probes_respect_the_limit(store: Store) -> None:
    for i in range(3):
        await fail(store, "stripe", T0 + i)
    granted = await asyncio.gather(
        *(
            store.circuit_acquire_probe("stripe", now=T0 + 40, max_probes=3, probe_ttl_s=5)
            for _ in range(30)
        )
    )
    assert granted.count(True) == 3


async def test_success_in_half_open_closes_and_resets(store: Store) -> None:
    for i in range(3):
        await fail(store, "stripe", T0 + i)
    half = T0 + 40
    assert await store.circuit_acquire_probe("stripe", now=half, max_probes=1, probe_ttl_s=5)
    assert await store.circuit_success("stripe", now=half + 0.2) == CircuitState("closed", 0)
    assert (await store.circuit_states(["stripe"], now=half + 0.3))["stripe"] == CircuitState(
        "closed", 0
    )
    # counting starts over: two new failures do not reopen, the third does
    assert (await fail(store, "stripe", half + 1)) == CircuitState("closed", 1)
    assert (await fail(store, "stripe", half + 2)).state == "closed"
    assert (await fail(store, "stripe", half + 3)).state == "open"


async def test_success_while_open_or_closed_changes_nothing(store: Store) -> None:
    await fail(store, "stripe", T0)
    await fail(store, "stripe", T0 + 1)
    assert await store.circuit_success("stripe", now=T0 + 2) == CircuitState("closed", 2)
    # the success did not reset the window: one more failure opens
    assert (await fail(store, "stripe", T0 + 3)).state == "open"
    assert await store.circuit_success("stripe", now=T0 + 4) == CircuitState("open", 3, T0 + 33)
    assert (await store.circuit_states(["stripe"], now=T0 + 5))["stripe"].state == "open"
    assert await store.circuit_success("adyen", now=T0) == CircuitState("closed")


async def test_failure_in_half_open_reopens_at_once(store: Store) -> None:
    for i in range(3):
        await fail(store, "stripe", T0 + i)
    half = T0 + 40

    async def probe(now: float) -> bool:
        return await store.circuit_acquire_probe("stripe", now=now, max_probes=1, probe_ttl_s=60)

    assert await probe(half) is True
    reopened = await fail(store, "stripe", half + 0.5)
    assert reopened == CircuitState("open", 4, half + 0.5 + 30)
    assert await probe(half + 1) is False
    # after the new open period a probe is handed out again: the failed probe's slot (which
    # would otherwise be held for 60 s) was dropped when the circuit reopened
    later = half + 0.5 + 30
    assert (await store.circuit_states(["stripe"], now=later))["stripe"].state == "half_open"
    assert await probe(later) is True
    assert await probe(later + 1) is False


async def test_concurrent_failures_open_once(store: Store) -> None:
    states = await asyncio.gather(
        *(
            store.circuit_failure("paypal", now=T0 + i / 100, window_s=10, threshold=5, open_s=30)
            for i in range(20)
        )
    )
    opened = [s for s in states if s.state == "open"]
    assert len(opened) == 16  # the fifth failure opens; the later fifteen see it open
    assert len({s.open_until for s in opened}) == 1
    assert sorted(s.failures for s in states if s.state == "closed") == [1, 2, 3, 4]


async def test_circuit_state_is_bounded_in_time(store: Store) -> None:
    await fail(store, "stripe", time.time())
    closed_ttl = await remaining_ms(store, "circuit", "stripe")
    assert 0 < closed_ttl <= (10 + 300) * 1000
    for _ in range(2):
        await fail(store, "stripe", time.time())
    open_ttl = await remaining_ms(store, "circuit", "stripe")
    assert 30_000 + 300_000 < open_ttl <= (30 + 10 + 300) * 1000


async def test_providers_are_independent(store: Store) -> None:
    for i in range(3):
        await fail(store, "stripe", T0 + i)
    await fail(store, "adyen", T0)
    states = await store.circuit_states(["stripe", "adyen", "paypal"], now=T0 + 3)
    assert [states[p].state for p in ("stripe", "adyen", "paypal")] == ["open", "closed", "closed"]
    assert states["adyen"].failures == 1


async def test_ping(store: Store) -> None:
    await store.ping()
    assert store.name in ("memory", "redis")


async def test_short_lease_reports_a_positive_retry_after(store: Store) -> None:
    await store.claim(SCOPE, "k1", "fp", token="t1", lease_ms=100)
    claim = await store.claim(SCOPE, "k1", "fp", token="t2", lease_ms=100)
    assert claim.kind is ClaimKind.IN_FLIGHT
    assert claim.retry_after_ms is not None
    assert 1 <= claim.retry_after_ms <= 100
