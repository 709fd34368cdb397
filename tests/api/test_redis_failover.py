"""A Redis Sentinel failover under create load loses no acknowledged session.

Two ``gateway serve`` processes keep their records and coordination in Redis behind Sentinel
(``GATEWAY_REDIS_MODE=sentinel``): a primary with ``min-replicas-to-write 1``,
``min-replicas-max-lag 10`` and AOF, two replicas and three Sentinels, all private processes of
this test. While creates are in flight the primary is switched over (``SENTINEL FAILOVER``) or
SIGKILLed. Afterwards:

- every session answered 201 before, during or after the switch reads back, unchanged;
- every key, answered or not, settles on retry (a replay of its 201, or one fresh create),
  none stays stuck in 409;
- the sandbox holds exactly one provider session per gateway session;
- every answer during the switch was a 201 or the seed's 503 with Retry-After (never a 500),
  and creates succeed again within :data:`RECOVERY_BOUND_S` seconds of the switch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import headers
from tests.api.create_load import Answer, CreateLoad, settle
from tests.api.test_failover import sandbox_state
from tests.gateway_processes import (
    base_env,
    free_port,
    readyz_checks,
    start_gateway,
    wait_ready,
)
from tests.redis_servers import RedisNode, SentinelGroup

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

#: creates must succeed again this soon after the switch was asked for (or the kill)
RECOVERY_BOUND_S = 10.0
#: 201s to see before the switch, and after it, under load
BEFORE = 40
AFTER = 40
GATEWAYS = 2


@dataclass(frozen=True)
class SwitchFigures:
    """What the load saw around the switch (seconds from the switch, counts)."""

    acknowledged: int
    keys: int
    unavailable: int
    recovered_after_s: float
    longest_gap_s: float
    promoted_after_s: float

    def line(self, how: str) -> str:
        return (
            f"redis failover ({how}): {self.keys} keys, {self.acknowledged} acknowledged, "
            f"{self.unavailable} answered 503 around the switch; a Sentinel named the new "
            f"primary {self.promoted_after_s:.2f} s after the switch, creates answered 201 again "
            f"{self.recovered_after_s:.2f} s after the switch (longest run without a 201: "
            f"{self.longest_gap_s:.2f} s)"
        )


def switch_figures(
    answers: list[Answer], switched_at: float, promoted_after: float
) -> SwitchFigures:
    """Recovery: the first 201 of a create started after the last failed create began
    (measured from the switch); the longest interval between two 201s finishing."""
    failures = [a for a in answers if a.status != 201]
    last_failure = max((a.started for a in failures), default=switched_at)
    recovered = min(
        a.started + a.elapsed
        for a in answers
        if a.status == 201 and a.started >= max(last_failure, switched_at)
    )
    finished = sorted(a.started + a.elapsed for a in answers if a.status == 201)
    gaps = [b - a for a, b in itertools.pairwise(finished)]
    return SwitchFigures(
        acknowledged=sum(1 for a in answers if a.status == 201),
        keys=len({a.key for a in answers}),
        unavailable=sum(1 for a in answers if a.status == 503),
        recovered_after_s=recovered - switched_at,
        longest_gap_s=max(gaps, default=0.0),
        promoted_after_s=promoted_after,
    )


def gateway_env(sandbox: Any, group: SentinelGroup, prefix: str) -> dict[str, str]:
    return {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_MODE": "sentinel",
        "GATEWAY_REDIS_SENTINELS": group.sentinel_addresses,
        "GATEWAY_REDIS_SENTINEL_SERVICE": group.master_name,
        "GATEWAY_REDIS_PREFIX": prefix,
        # every gateway process sends the same return URL to the providers
        "GATEWAY_PUBLIC_URL": "http://gateway.internal:8080",
        # a key whose create was cut off is taken over by a retry once its lease ran out
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "4",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "4.5",
        "GATEWAY_IDEMPOTENCY_LEASE_SECONDS": "5",
    }


async def until_promoted(group: SentinelGroup, old: RedisNode, timeout: float = 30.0) -> None:
    """Wait until the Sentinels name another primary than ``old``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await asyncio.to_thread(group.current_primary) is old:
        assert asyncio.get_running_loop().time() < deadline, "no failover happened"
        await asyncio.sleep(0.05)


def gateway_logs(directory: Path) -> str:
    """The tail of every gateway log in ``directory`` (for failure messages)."""
    return "\n".join(p.read_text()[-3000:] for p in sorted(directory.glob("gateway*.log")))


async def slow_providers(http: aiohttp.ClientSession, sandbox: Any, latency_ms: int) -> None:
    """Creates spend ``latency_ms`` at the provider, so some are in flight at the switch."""
    for provider in ("stripe", "adyen", "paypal"):
        async with http.post(
            str(sandbox.make_url("/sandbox/admin/faults")),
            json={"provider": provider, "latencyMs": latency_ms},
        ) as answer:
            assert answer.status == 200


async def failover_under_load(
    sandbox: Any,
    group: SentinelGroup,
    processes: list[Any],
    tmp_path: Path,
    switch: Callable[[RedisNode], Awaitable[None]],
    how: str,
) -> SwitchFigures:
    """Start the gateways, run the load, ``switch`` the primary mid-load, check every
    promise afterwards; the figures."""
    prefix = f"failover:{uuid.uuid4().hex}:"
    env = gateway_env(sandbox, group, prefix)
    ports = [free_port() for _ in range(GATEWAYS)]
    for i, port in enumerate(ports):
        processes.append(start_gateway(port, env, output=tmp_path / f"gateway{i}.log"))
    for proc, port in zip(processes[-GATEWAYS:], ports, strict=True):
        await wait_ready(port, proc, timeout=60)
        # behind Sentinel every create waits for a replica; the durable settings are found
        redis_check = (await readyz_checks(port))["redis"]
        assert redis_check == {"ok": True, "mode": "sentinel", "waitReplicas": 1}, redis_check
    turn = itertools.cycle(ports)
    load = CreateLoad(lambda: f"http://127.0.0.1:{next(turn)}/api/v1/sessions", how)
    old_primary = group.current_primary()
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        await slow_providers(http, sandbox, 50)
        load.start(http)
        try:
            await load.until(lambda: load.count(201) >= BEFORE, timeout=60)
            switched_at = loop.time()
            await switch(old_primary)
            await until_promoted(group, old_primary)
            promoted_after = loop.time() - switched_at
            new_primary = await asyncio.to_thread(group.wait_until_settled, 60)
            assert new_primary is not old_primary

            def answered_since_switch() -> int:
                return sum(1 for a in load.answers if a.status == 201 and a.started > switched_at)

            await load.until(lambda: answered_since_switch() >= AFTER, timeout=60)
        finally:
            await load.stop()
        figures = switch_figures(load.answers, switched_at, promoted_after)
        print(f"\n{figures.line(how)}")
        logs = await asyncio.to_thread(gateway_logs, tmp_path)

        statuses = Counter(a.status for a in load.answers)
        assert set(statuses) <= {201, 503}, (statuses, logs)
        for answer in load.answers:
            if answer.status == 503:
                assert answer.retry_after is not None, answer
                assert json.loads(answer.body)["code"] == 503, answer
        assert figures.recovered_after_s <= RECOVERY_BOUND_S, figures

        acknowledged = load.acknowledged()
        for key, body in acknowledged.items():
            acked = json.loads(body)
            url = f"http://127.0.0.1:{next(turn)}/api/v1/sessions/{acked['sessionId']}"
            async with http.get(url, headers=headers(None)) as read:
                assert read.status == 200, (key, await read.text())
                view = await read.json()
            assert {name: view.get(name) for name in acked} == acked, key

        keys = load.keys()
        finals = await asyncio.gather(
            *(
                settle(http, f"http://127.0.0.1:{next(turn)}/api/v1/sessions", key, timeout=30)
                for key in keys
            )
        )
    for final in finals:
        assert final.status == 201, (final.key, final.body)
        if final.key in acknowledged:
            assert final.body == acknowledged[final.key], final.key
    assert len({json.loads(f.body)["sessionId"] for f in finals}) == len(keys)
    held = Counter(
        s.gateway_session_id
        for sessions in sandbox_state(sandbox).sessions.values()
        for s in sessions.values()
    )
    for key, body in acknowledged.items():
        assert held[json.loads(body)["sessionId"]] == 1, key
    assert set(held.values()) == {1}, {sid: n for sid, n in held.items() if n > 1}
    assert sum(held.values()) == len(keys)
    return figures


async def test_sentinel_failover_under_create_load_loses_no_acknowledged_session(
    sandbox: Any,
    redis_sentinel_group_factory: Callable[..., SentinelGroup],
    processes: list[Any],
    tmp_path: Path,
) -> None:
    group = await asyncio.to_thread(redis_sentinel_group_factory, replicas=2, sentinels=3)

    async def failover(_: RedisNode) -> None:
        sentinel = group.sentinels[0].server
        reply = await asyncio.to_thread(sentinel.command, "SENTINEL", "FAILOVER", group.master_name)
        assert reply in (b"OK", "OK", True), reply

    await failover_under_load(sandbox, group, processes, tmp_path, failover, "SENTINEL FAILOVER")


async def test_killed_primary_under_create_load_loses_no_acknowledged_session(
    sandbox: Any,
    redis_sentinel_group_factory: Callable[..., SentinelGroup],
    processes: list[Any],
    tmp_path: Path,
) -> None:
    # two replicas: the promoted one still has a replica to satisfy min-replicas-to-write
    group = await asyncio.to_thread(redis_sentinel_group_factory, replicas=2, sentinels=3)

    async def kill(primary: RedisNode) -> None:
        await asyncio.to_thread(primary.server.kill)

    await failover_under_load(sandbox, group, processes, tmp_path, kill, "primary SIGKILLed")
