"""Attacks on a ``gateway serve`` process whose records live in a Redis Cluster of 3 primaries
with one replica each (durable: every create waits for a replica), from outside: a primary
killed, failed over by hand or frozen (SIGSTOP) under create load. Every answer is defined
(201, 409 for a key still leased, 503 + Retry-After), never a 500; every session answered 201
reads back once the replica took over; every key ends in its one session (the client retries
what was 503 or 409), and no key made two provider sessions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.store.redis_cluster import cluster_key_slot
from tests.api.conftest import headers, seed
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.redis_servers import RedisCluster, RedisNode, redis_server_binary, start_cluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(150)]

FREEZE_S = 15


def own_cluster(replicas_per_master: int) -> RedisCluster:
    """A durable cluster of 3 primaries of this test's own (its nodes get killed)."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    return start_cluster(
        masters=3, replicas_per_master=replicas_per_master, durable=True, node_timeout_ms=2000
    )


async def serve(
    sandbox: Any, cluster: RedisCluster, processes: list[Any], tmp_path: Path, **extra: str
) -> str:
    port = free_port()
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_MODE": "cluster",
        "GATEWAY_REDIS_URL": cluster.seed_url,
        "GATEWAY_REDIS_PREFIX": f"atk:{uuid.uuid4().hex[:8]}:",
        "GATEWAY_IDEMPOTENCY_LEASE_SECONDS": "10",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "8",
        **extra,
    }
    processes.append(start_gateway(port, env, output=tmp_path / f"gateway-{port}.log"))
    await wait_ready(port, processes[-1], timeout=60)
    return f"http://127.0.0.1:{port}"


@dataclass
class Load:
    """Create load: each worker sends fresh keys, retrying a key after 503/409 until 201."""

    base: str
    statuses: Counter[int] = field(default_factory=Counter)
    created: dict[str, str] = field(default_factory=dict)  # key -> session id
    first_201: dict[str, float] = field(default_factory=dict)
    slowest: float = 0.0
    failures_at: list[tuple[float, int]] = field(default_factory=list)
    success_at: list[float] = field(default_factory=list)
    fresh_201_at: list[float] = field(default_factory=list)
    fresh_failed_at: list[float] = field(default_factory=list)
    #: how long each key that answered 409 kept answering it (until its 201)
    held_409: dict[str, float] = field(default_factory=dict)
    give_up_s: float = 30.0
    stop: bool = False
    bad: list[str] = field(default_factory=list)

    async def prober(self, http: aiohttp.ClientSession) -> None:
        """A fresh key every 0.1 s, never retried: when creates succeed again."""
        i = 0
        while not self.stop:
            key = f"probe-{i}"
            i += 1
            body = seed(orderReference=f"ORD-{key}")
            try:
                async with http.post(
                    f"{self.base}/api/v1/sessions", json=body, headers=headers(key)
                ) as answer:
                    self.statuses[answer.status] += 1
                    if answer.status == 201:
                        self.created[key] = json.loads(await answer.text())["sessionId"]
                        self.fresh_201_at.append(time.monotonic())
                    else:
                        self.fresh_failed_at.append(time.monotonic())
                    if answer.status not in (201, 503, 409):
                        self.bad.append(f"{key}: {answer.status} {await answer.text()}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.bad.append(f"{key}: {type(exc).__name__}")
            await asyncio.sleep(0.1)

    async def worker(self, http: aiohttp.ClientSession, name: str, keys_left: int) -> None:
        for i in range(keys_left):
            if self.stop:
                return
            key = f"{name}-{i}"
            body = seed(orderReference=f"ORD-{key}")
            began = time.monotonic()
            while True:
                sent = time.monotonic()
                try:
                    async with http.post(
                        f"{self.base}/api/v1/sessions", json=body, headers=headers(key)
                    ) as answer:
                        status = answer.status
                        text = await answer.text()
                        retry_after = answer.headers.get("Retry-After")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    self.bad.append(f"{key}: {type(exc).__name__}")
                    return
                took = time.monotonic() - sent
                self.slowest = max(self.slowest, took)
                self.statuses[status] += 1
                if status == 409:
                    self.held_409.setdefault(key, time.monotonic())
                if status == 201:
                    if key in self.held_409:
                        self.held_409[key] = time.monotonic() - self.held_409[key]
                    self.created[key] = json.loads(text)["sessionId"]
                    self.success_at.append(time.monotonic())
                    break
                self.failures_at.append((time.monotonic(), status))
                if status not in (503, 409) or retry_after is None:
                    self.bad.append(f"{key}: {status} {text[:300]}")
                    return
                if time.monotonic() - began > self.give_up_s:
                    self.bad.append(f"{key}: no 201 within {self.give_up_s} s (last {status})")
                    return
                await asyncio.sleep(min(float(retry_after), 0.5))


async def sandbox_created(sandbox: Any) -> int:
    url = str(sandbox.make_url("/sandbox/admin/stats"))
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        stats = await answer.json()
    return int(sum(stats["sessionsCreated"].values()))


async def assert_one_provider_session_per_key(sandbox: Any, load: Load) -> None:
    """Every worker key was retried until 201: one provider session each; a probe key that
    answered 503 is never retried and may have left one provider session behind."""
    made = await sandbox_created(sandbox)
    assert len(load.created) <= made <= len(load.created) + len(load.fresh_failed_at), (
        made,
        len(load.created),
        len(load.fresh_failed_at),
    )


async def read_back(base: str, created: dict[str, str]) -> list[str]:
    missing: list[str] = []
    async with aiohttp.ClientSession() as http:
        for key, session_id in created.items():
            async with http.get(
                f"{base}/api/v1/sessions/{session_id}", headers=headers(None)
            ) as answer:
                if answer.status != 200:
                    missing.append(f"{key} {session_id}: {answer.status}")
    return missing


def wait_promoted(replicas: list[RedisNode], timeout: float = 30) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        for replica in replicas:
            try:
                if replica.role_now() == "master":
                    return time.monotonic() - began
            except Exception:  # noqa: S110 - still failing over
                pass
        time.sleep(0.05)
    raise AssertionError("the replica was not promoted")


def replicas_of(cluster: RedisCluster, primary: RedisNode) -> list[RedisNode]:
    return [
        node
        for node in cluster.replicas
        if int(node.server.info("replication").get("master_port", 0)) == primary.port
    ]


async def run_load_around(
    base: str,
    fault: Any,
    *,
    workers: int = 8,
    keys: int = 400,
    before_s: float = 1.5,
    after_s: float = 8,
    give_up_s: float = 30,
) -> tuple[Load, float]:
    load = Load(base, give_up_s=give_up_s)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        tasks = [asyncio.create_task(load.worker(http, f"w{w}", keys)) for w in range(workers)]
        tasks.append(asyncio.create_task(load.prober(http)))
        await asyncio.sleep(before_s)
        fault_at = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, fault)
        await asyncio.sleep(after_s)
        load.stop = True
        await asyncio.gather(*tasks)
    return load, fault_at


def _recovered(load: Load, fault_at: float) -> float | None:
    """Seconds from the fault until fresh keys answered 201 for good (None: never)."""
    last_failure = max((t for t in load.fresh_failed_at if t > fault_at), default=fault_at)
    fresh = [t for t in load.fresh_201_at if t > last_failure]
    return round(fresh[0] - fault_at, 2) if fresh else None


def report(name: str, load: Load, fault_at: float) -> dict[str, Any]:
    after = [t for t in load.success_at if t > fault_at]
    unavailable = [t for t, status in load.failures_at if t > fault_at and status == 503]
    leased = [t for t, status in load.failures_at if t > fault_at and status == 409]
    figures = {
        "answers": dict(load.statuses),
        "sessions": len(load.created),
        "slowest_answer_s": round(load.slowest, 2),
        "last_503_after_fault_s": round(max(unavailable) - fault_at, 2) if unavailable else 0.0,
        "last_409_after_fault_s": round(max(leased) - fault_at, 2) if leased else 0.0,
        "first_201_after_fault_s": round(min(after) - fault_at, 2) if after else None,
        # the first fresh key answered 201 after the last fresh key that was not
        "fresh_201_again_after_s": _recovered(load, fault_at),
    }
    print(f"\n{name}: {figures}")
    return figures


async def test_a_primary_killed_under_create_load_with_two_replicas_each(
    sandbox: Any, processes: list[Any], tmp_path: Path
) -> None:
    cluster = own_cluster(2)
    try:
        base = await serve(sandbox, cluster, processes, tmp_path)
        victim = cluster.primaries[1]
        heirs = replicas_of(cluster, victim)
        promoted: list[float] = []

        def kill() -> None:
            victim.server.kill()
            promoted.append(wait_promoted(heirs))

        load, fault_at = await run_load_around(base, kill)
        figures = report("killed primary, 2 replicas each", load, fault_at)
        print(f"a replica was promoted after {promoted[0]:.2f} s")
        assert not load.bad, load.bad[:10]
        assert set(load.statuses) <= {201, 409, 503}, load.statuses
        assert await read_back(base, load.created) == []
        await assert_one_provider_session_per_key(sandbox, load)
        assert figures["last_503_after_fault_s"] < promoted[0] + 3, figures
    finally:
        cluster.stop()


async def test_a_primary_killed_with_one_replica_each_keeps_its_slots_503_until_it_returns(
    sandbox: Any, processes: list[Any], tmp_path: Path
) -> None:
    """min-replicas-to-write 1: the promoted replica has no replica of its own, so it refuses
    every write (NOREPLICAS, a 503) until the old primary comes back as its replica; with one
    replica per primary a lost node makes a third of the creates fail until it is replaced."""
    cluster = own_cluster(1)
    try:
        base = await serve(sandbox, cluster, processes, tmp_path)
        victim = cluster.primaries[1]
        heirs = replicas_of(cluster, victim)
        marks: dict[str, float] = {}

        def kill_then_restart() -> None:
            began = time.monotonic()
            victim.server.kill()
            marks["promoted"] = wait_promoted(heirs)
            time.sleep(5)
            marks["restarted"] = time.monotonic() - began
            victim.server.start()

        load, fault_at = await run_load_around(base, kill_then_restart)
        figures = report("killed primary, 1 replica each, restarted", load, fault_at)
        print(f"marks: {marks}")
        assert not load.bad, load.bad[:10]
        assert set(load.statuses) <= {201, 409, 503}, load.statuses
        # still failing well after the promotion: the promoted primary has no replica
        assert figures["last_503_after_fault_s"] > marks["promoted"] + 4, figures
        assert await read_back(base, load.created) == []
        await assert_one_provider_session_per_key(sandbox, load)
    finally:
        cluster.stop()


def store_errors(directory: Path) -> Counter[str]:
    """The store errors the gateways in ``directory`` logged, by their start."""
    found: Counter[str] = Counter()
    for log in directory.glob("gateway-*.log"):
        for line in log.read_text().splitlines():
            if '"errors":"' in line:
                found[line.split('"errors":"', 1)[1][:90]] += 1
    return found


def node_id(node: RedisNode) -> str:
    reply = node.server.command("CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def slot_owner(cluster: RedisCluster, slot: int) -> RedisNode:
    for node in cluster.primaries:
        for first, last, *_ in node.server.command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return next(n for n in cluster.primaries if n.port == int(_[0][1]))
    raise AssertionError(f"nobody owns slot {slot}")


def migrate_slot_slowly(
    cluster: RedisCluster, slot: int, counts: dict[str, int], *, pause_s: float = 0.02
) -> None:
    """Move ``slot`` to another primary the way redis-cli does (IMPORTING, MIGRATING, MIGRATE
    key by key, NODE), one key per ``pause_s``, so the slot stays half-migrated a while."""
    source = slot_owner(cluster, slot)
    target = next(n for n in cluster.primaries if n is not source)
    source_id, target_id = node_id(source), node_id(target)
    target.server.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.server.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    began = time.monotonic()
    while True:
        keys = source.server.command("CLUSTER", "GETKEYSINSLOT", slot, 1)
        if not keys:
            if time.monotonic() - began > 3:
                break
            time.sleep(pause_s)
            continue
        source.server.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        counts["migrated"] = counts.get("migrated", 0) + len(keys)
        time.sleep(pause_s)
    for node in cluster.primaries:
        node.server.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


async def test_a_bucket_slot_migrated_under_create_load(
    sandbox: Any, processes: list[Any], tmp_path: Path
) -> None:
    """The slot of a session bucket (its claims, sessions, expiry and outbox keys) moves to
    another primary while creates land in it: ASK, TRYAGAIN (a script whose keys are split
    between the two nodes) and MOVED all answer 201 or 503, never 500, and no create runs
    twice."""
    cluster = start_cluster(masters=3, replicas_per_master=0)
    try:
        base = await serve(sandbox, cluster, processes, tmp_path)
        slots = [cluster_key_slot(f"{{s{n}}}") for n in range(16)]
        counts: dict[str, int] = {}

        def migrate() -> None:
            migrate_slot_slowly(cluster, slots[3], counts)
            migrate_slot_slowly(cluster, slots[7], counts)

        load, fault_at = await run_load_around(base, migrate, after_s=3)
        report("bucket slots migrated", load, fault_at)
        print(f"keys migrated: {counts}")
        causes = store_errors(tmp_path)
        print(f"503 causes: {causes.most_common(6)}")
        assert not load.bad, load.bad[:10]
        assert set(load.statuses) <= {201, 409, 503}, load.statuses
        assert await read_back(base, load.created) == []
        await assert_one_provider_session_per_key(sandbox, load)
    finally:
        cluster.stop()


async def poll_readyz(base: str, seen: list[tuple[float, int, float]], stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        while not stop.is_set():
            sent = time.monotonic()
            async with http.get(f"{base}/readyz") as answer:
                seen.append((sent, answer.status, time.monotonic() - sent))
            await asyncio.sleep(0.2)


async def test_a_frozen_primary_under_create_load(
    sandbox: Any, processes: list[Any], tmp_path: Path
) -> None:
    """SIGSTOP a primary for FREEZE_S s (its replica is promoted meanwhile), then SIGCONT: every
    request ends within the deadline with 201 or 503, /readyz reads 503 while a primary does
    not answer and ready again afterwards; creates recover once the old primary is back as the
    promoted one's replica."""
    cluster = own_cluster(1)
    try:
        base = await serve(sandbox, cluster, processes, tmp_path)
        victim = cluster.primaries[2]
        heirs = replicas_of(cluster, victim)
        marks: dict[str, float] = {}
        ready: list[tuple[float, int, float]] = []
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_readyz(base, ready, stop))

        def freeze() -> None:
            began = time.monotonic()
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGSTOP)
            marks["promoted"] = wait_promoted(heirs)
            time.sleep(max(0.0, FREEZE_S - (time.monotonic() - began)))
            os.kill(victim.pid, signal.SIGCONT)
            marks["continued"] = time.monotonic() - began

        load, fault_at = await run_load_around(base, freeze, after_s=8)
        stop.set()
        await poller
        figures = report(f"frozen primary (SIGSTOP {FREEZE_S} s)", load, fault_at)
        statuses = [(round(t - fault_at, 1), s, round(d, 2)) for t, s, d in ready if t > fault_at]
        print(f"marks: {marks}\nreadyz after the fault: {statuses}")
        assert not load.bad, load.bad[:10]
        assert set(load.statuses) <= {201, 409, 503}, load.statuses
        # the request deadline (8 s): a read waiting for a connection to the frozen node
        # (up to the 5 s pool timeout) may take a create up to it, never past it
        assert figures["slowest_answer_s"] < 8.5, figures
        assert any(s == 503 for _, s, _ in statuses), statuses
        assert all(d < 3.5 for _, _, d in statuses), statuses
        assert statuses[-1][1] == 200, statuses
        assert await read_back(base, load.created) == []
        await assert_one_provider_session_per_key(sandbox, load)
    finally:
        cluster.stop()


async def test_a_manual_cluster_failover_under_create_load(
    sandbox: Any, processes: list[Any], tmp_path: Path
) -> None:
    """CLUSTER FAILOVER on a replica (the primary hands over: no write lost by Redis) while
    creates land: the demoted primary answers MOVED (or READONLY) to scripts already routed to
    it; every answer is 201 or 503, every 201 reads back."""
    cluster = own_cluster(1)
    try:
        base = await serve(sandbox, cluster, processes, tmp_path)
        victim = cluster.primaries[0]
        heir = replicas_of(cluster, victim)[0]
        marks: dict[str, float] = {}

        def failover() -> None:
            began = time.monotonic()
            heir.server.command("CLUSTER", "FAILOVER")
            marks["promoted"] = wait_promoted([heir])
            marks["took"] = time.monotonic() - began

        load, fault_at = await run_load_around(base, failover, after_s=5)
        figures = report("CLUSTER FAILOVER", load, fault_at)
        print(f"marks: {marks}; 503 causes: {store_errors(tmp_path).most_common(4)}")
        assert not load.bad, load.bad[:10]
        assert set(load.statuses) <= {201, 409, 503}, load.statuses
        assert await read_back(base, load.created) == []
        await assert_one_provider_session_per_key(sandbox, load)
        assert figures["fresh_201_again_after_s"] is not None
        assert figures["fresh_201_again_after_s"] < marks["promoted"] + 2, figures
        assert victim.role_now() == "slave"
    finally:
        cluster.stop()
