"""The circuit-breaker contract of the coordination state: every test runs against each
:class:`~gateway.store.coordination.CircuitStore` of the ``circuits`` fixture (memory, Redis).
How long an idle circuit is kept is in ``test_record_ttls.py``."""

from __future__ import annotations

import asyncio

from gateway.store.coordination import CircuitState, CircuitStore

T0 = 1_700_000_000.125  # synthetic epoch seconds


async def fail(circuits: CircuitStore, provider: str, now: float) -> CircuitState:
    return await circuits.circuit_failure(provider, now=now, window_s=10, threshold=3, open_s=30)


async def test_unknown_circuits_are_closed(circuits: CircuitStore) -> None:
    states = await circuits.circuit_states(["stripe", "adyen"], now=T0)
    assert states == {"stripe": CircuitState("closed"), "adyen": CircuitState("closed")}
    assert await circuits.circuit_states([], now=T0) == {}


async def test_circuit_opens_at_threshold_within_window(circuits: CircuitStore) -> None:
    assert await fail(circuits, "stripe", T0) == CircuitState("closed", 1)
    assert await fail(circuits, "stripe", T0 + 1) == CircuitState("closed", 2)
    opened = await fail(circuits, "stripe", T0 + 2.5)
    assert opened == CircuitState("open", 3, T0 + 2.5 + 30)

    states = await circuits.circuit_states(["stripe", "adyen"], now=T0 + 3)
    assert states["stripe"] == CircuitState("open", 3, T0 + 32.5)
    assert states["adyen"] == CircuitState("closed")


async def test_failures_spread_outside_the_window_do_not_open(circuits: CircuitStore) -> None:
    assert (await fail(circuits, "stripe", T0)).state == "closed"
    assert (await fail(circuits, "stripe", T0 + 6)).failures == 2
    # T0 has left the 10 s window by T0 + 12: only two failures count
    third = await fail(circuits, "stripe", T0 + 12)
    assert third == CircuitState("closed", 2)
    # exactly window_s later the oldest failure no longer counts either
    assert await fail(circuits, "stripe", T0 + 16) == CircuitState("closed", 2)
    assert (await circuits.circuit_states(["stripe"], now=T0 + 16))["stripe"].state == "closed"


async def test_open_circuit_turns_half_open_after_open_until(circuits: CircuitStore) -> None:
    for i in range(3):
        await fail(circuits, "stripe", T0 + i)
    open_until = T0 + 2 + 30
    assert (await circuits.circuit_states(["stripe"], now=open_until - 0.001))["stripe"].state == (
        "open"
    )
    half = (await circuits.circuit_states(["stripe"], now=open_until))["stripe"]
    assert half == CircuitState("half_open", 3, open_until)


async def test_failure_while_open_changes_nothing(circuits: CircuitStore) -> None:
    for i in range(3):
        await fail(circuits, "stripe", T0 + i)
    late = await fail(circuits, "stripe", T0 + 5)
    assert late == CircuitState("open", 3, T0 + 32)


async def test_probe_limit_in_half_open(circuits: CircuitStore) -> None:
    async def probe(now: float) -> bool:
        return await circuits.circuit_acquire_probe("stripe", now=now, max_probes=2, probe_ttl_s=5)

    assert await probe(T0) is True  # closed: everyone goes through
    for i in range(3):
        await fail(circuits, "stripe", T0 + i)
    assert await probe(T0 + 10) is False  # open
    half = T0 + 32
    assert await probe(half) is True
    assert await probe(half + 1) is True
    assert await probe(half + 2) is False  # two probes out within 5 s
    assert await probe(half + 5.5) is True  # the first probe slot timed out
    assert await probe(half + 5.6) is False
    assert await circuits.circuit_acquire_probe("adyen", now=half, max_probes=2, probe_ttl_s=5)


async def test_concurrent_probes_respect_the_limit(circuits: CircuitStore) -> None:
    for i in range(3):
        await fail(circuits, "stripe", T0 + i)
    granted = await asyncio.gather(
        *(
            circuits.circuit_acquire_probe("stripe", now=T0 + 40, max_probes=3, probe_ttl_s=5)
            for _ in range(30)
        )
    )
    assert granted.count(True) == 3


async def test_success_in_half_open_closes_and_resets(circuits: CircuitStore) -> None:
    for i in range(3):
        await fail(circuits, "stripe", T0 + i)
    half = T0 + 40
    assert await circuits.circuit_acquire_probe("stripe", now=half, max_probes=1, probe_ttl_s=5)
    assert await circuits.circuit_success("stripe", now=half + 0.2) == CircuitState("closed", 0)
    assert (await circuits.circuit_states(["stripe"], now=half + 0.3))["stripe"] == CircuitState(
        "closed", 0
    )
    # counting starts over: two new failures do not reopen, the third does
    assert (await fail(circuits, "stripe", half + 1)) == CircuitState("closed", 1)
    assert (await fail(circuits, "stripe", half + 2)).state == "closed"
    assert (await fail(circuits, "stripe", half + 3)).state == "open"


async def test_success_while_open_or_closed_changes_nothing(circuits: CircuitStore) -> None:
    await fail(circuits, "stripe", T0)
    await fail(circuits, "stripe", T0 + 1)
    assert await circuits.circuit_success("stripe", now=T0 + 2) == CircuitState("closed", 2)
    # the success did not reset the window: one more failure opens
    assert (await fail(circuits, "stripe", T0 + 3)).state == "open"
    assert await circuits.circuit_success("stripe", now=T0 + 4) == CircuitState("open", 3, T0 + 33)
    assert (await circuits.circuit_states(["stripe"], now=T0 + 5))["stripe"].state == "open"
    assert await circuits.circuit_success("adyen", now=T0) == CircuitState("closed")


async def test_failure_in_half_open_reopens_at_once(circuits: CircuitStore) -> None:
    for i in range(3):
        await fail(circuits, "stripe", T0 + i)
    half = T0 + 40

    async def probe(now: float) -> bool:
        return await circuits.circuit_acquire_probe("stripe", now=now, max_probes=1, probe_ttl_s=60)

    assert await probe(half) is True
    reopened = await fail(circuits, "stripe", half + 0.5)
    assert reopened == CircuitState("open", 4, half + 0.5 + 30)
    assert await probe(half + 1) is False
    # after the new open period a probe is handed out again: the failed probe's slot (which
    # would otherwise be held for 60 s) was dropped when the circuit reopened
    later = half + 0.5 + 30
    assert (await circuits.circuit_states(["stripe"], now=later))["stripe"].state == "half_open"
    assert await probe(later) is True
    assert await probe(later + 1) is False


async def test_concurrent_failures_open_once(circuits: CircuitStore) -> None:
    states = await asyncio.gather(
        *(
            circuits.circuit_failure(
                "paypal", now=T0 + i / 100, window_s=10, threshold=5, open_s=30
            )
            for i in range(20)
        )
    )
    opened = [s for s in states if s.state == "open"]
    assert len(opened) == 16  # the fifth failure opens; the later fifteen see it open
    assert len({s.open_until for s in opened}) == 1
    assert sorted(s.failures for s in states if s.state == "closed") == [1, 2, 3, 4]


async def test_providers_are_independent(circuits: CircuitStore) -> None:
    for i in range(3):
        await fail(circuits, "stripe", T0 + i)
    await fail(circuits, "adyen", T0)
    states = await circuits.circuit_states(["stripe", "adyen", "paypal"], now=T0 + 3)
    assert [states[p].state for p in ("stripe", "adyen", "paypal")] == ["open", "closed", "closed"]
    assert states["adyen"].failures == 1
