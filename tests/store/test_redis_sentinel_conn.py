"""SentinelConn against a real primary, replicas and Sentinels (tests/redis_servers.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable

import pytest

from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import RedisClientSettings, open_redis
from gateway.store.redis_conn import LuaScript, RedisConn
from tests.redis_servers import RedisNode, SentinelGroup

SET_GET = LuaScript("redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])")
#: Sentinel's promotion, measured on this machine, takes 1-4 s after down-after (1 s)
SWITCH_DEADLINE_S = 15.0


def _conn(group: SentinelGroup, **settings: object) -> RedisConn:
    return open_redis(
        Settings(  # type: ignore[arg-type]
            redis_mode="sentinel",
            redis_sentinels=group.sentinel_addresses,
            redis_sentinel_service=group.master_name,
            **settings,
        ),
        RedisClientSettings(socket_timeout_s=1.0, pool_timeout_s=1.0),
    )


async def _write_until_confirmed(conn: RedisConn, key: str) -> tuple[float, int]:
    """Confirmed writes of ``key`` until one succeeds; (seconds it took, failures)."""
    began = time.monotonic()
    failures = 0
    while True:
        try:
            await conn.script(SET_GET, [key], ["after"], confirm=True)
            return time.monotonic() - began, failures
        except StoreUnavailable:
            failures += 1
            if time.monotonic() - began > SWITCH_DEADLINE_S:
                raise
            await asyncio.sleep(0.1)


def _get(node: RedisNode, key: str) -> bytes | None:
    with node.server.client() as client:
        value: bytes | None = client.get(key)
        return value


async def test_start_finds_the_primary_and_warns_about_nothing_on_a_durable_group(
    redis_sentinel_group: SentinelGroup,
) -> None:
    conn = _conn(redis_sentinel_group)
    try:
        assert await conn.start() == []
        assert conn.wait_replicas == 1  # auto behind Sentinel
        key = f"gw-test:{uuid.uuid4().hex}"
        assert await conn.script(SET_GET, [key], ["v"], confirm=True) == b"v"
        assert _get(redis_sentinel_group.current_primary(), key) == b"v"
    finally:
        await conn.close()


async def test_start_warns_about_each_missing_durability_setting(
    redis_sentinel_group_factory: Callable[..., SentinelGroup],
) -> None:
    group = redis_sentinel_group_factory(replicas=1, sentinels=1, durable=False)
    conn = _conn(group)
    try:
        warnings = await conn.start()
    finally:
        await conn.close()
    assert len(warnings) == 2
    assert "min-replicas-to-write is 0" in warnings[1]
    assert "appendonly is not yes" in warnings[0]
    assert all(f":{group.primary.port}" in line for line in warnings)


async def test_writes_follow_a_sentinel_failover_and_reach_the_new_primary(
    redis_sentinel_group: SentinelGroup,
) -> None:
    conn = _conn(redis_sentinel_group)
    try:
        await conn.start()
        old = redis_sentinel_group.current_primary()
        await conn.script(SET_GET, [f"gw-test:{uuid.uuid4().hex}"], ["before"], confirm=True)
        redis_sentinel_group.sentinels[0].server.command(
            "SENTINEL", "FAILOVER", redis_sentinel_group.master_name
        )
        deadline = time.monotonic() + SWITCH_DEADLINE_S
        while redis_sentinel_group.current_primary() is old:
            assert time.monotonic() < deadline, "Sentinel did not fail over"
            await asyncio.sleep(0.05)
        key = f"gw-test:{uuid.uuid4().hex}"
        took, _ = await _write_until_confirmed(conn, key)
        new = redis_sentinel_group.current_primary()
        assert new is not old
        assert _get(new, key) == b"after"
        assert took < SWITCH_DEADLINE_S
    finally:
        await conn.close()
        redis_sentinel_group.wait_until_settled()


async def test_writes_follow_a_killed_primary(
    redis_sentinel_group_factory: Callable[..., SentinelGroup],
) -> None:
    group = redis_sentinel_group_factory(replicas=2, sentinels=1)
    conn = _conn(group)
    try:
        await conn.start()
        await conn.script(SET_GET, ["gw-test:warm"], ["v"], confirm=True)
        old = group.current_primary()
        old.server.kill()
        key = f"gw-test:{uuid.uuid4().hex}"
        _, failures = await _write_until_confirmed(conn, key)
        new = group.current_primary()
        assert new is not old
        assert _get(new, key) == b"after"
        assert failures > 0  # while no primary answered, writes were refused, not acked
    finally:
        await conn.close()


async def test_no_write_answered_during_a_failover_is_lost(
    redis_sentinel_group_factory: Callable[..., SentinelGroup],
) -> None:
    """Writers keep writing (confirmed) across SENTINEL FAILOVER: the old primary is demoted
    and resynced from the new one; every write that was answered is there afterwards. With
    two replicas the old primary keeps one until Sentinel re-points it: without the hold on
    confirmations from +try-failover, writes it acknowledged were lost."""
    group = redis_sentinel_group_factory(replicas=2, sentinels=1)
    conn = _conn(group)
    acked: list[str] = []
    reasons: dict[str, int] = {}
    refused = 0
    stop = asyncio.Event()

    async def writer(index: int) -> None:
        nonlocal refused
        n = 0
        while not stop.is_set():
            key = f"gw-test:w{index}:{n}"
            n += 1
            try:
                await conn.script(SET_GET, [key], ["v"], confirm=True)
                acked.append(key)
            except StoreUnavailable as exc:
                refused += 1
                reasons[str(exc)[:60]] = reasons.get(str(exc)[:60], 0) + 1
                await asyncio.sleep(0.02)

    try:
        await conn.start()
        old = group.current_primary()
        writers = [asyncio.create_task(writer(i)) for i in range(8)]
        await asyncio.sleep(0.5)
        before = len(acked)
        group.sentinels[0].server.command("SENTINEL", "FAILOVER", group.master_name)
        deadline = time.monotonic() + SWITCH_DEADLINE_S
        while group.current_primary() is old:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        switched_at = len(acked)
        took, _ = await _write_until_confirmed(conn, "gw-test:probe")
        after_probe = len(acked)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*writers)
    finally:
        await conn.close()
    new = group.wait_until_settled()
    assert new is not old
    # acknowledged before and after; in between they were refused (503), never lost
    assert len(acked) > after_probe >= switched_at >= before > 0, (reasons, took)
    assert took < SWITCH_DEADLINE_S
    with new.server.client() as client:
        found = client.mget(acked)
    lost = [key for key, value in zip(acked, found, strict=True) if value != b"v"]
    assert lost == []
    with old.server.client() as client:  # demoted and resynced: a replica now
        assert client.info("replication")["role"] == "slave"


async def test_a_demoted_primary_never_acknowledges_a_write(
    redis_sentinel_group_factory: Callable[..., SentinelGroup],
) -> None:
    """The primary loses its only replica (it is promoted behind the client's back, as a
    failover the Sentinels have not announced yet): a confirmed write is refused, and once
    the old primary is a replica, READONLY resets the pool."""
    group = redis_sentinel_group_factory(replicas=1, sentinels=1, durable=False)
    conn = _conn(group, redis_wait_timeout_ms=100)
    try:
        await conn.start()
        primary, replica = group.primary, group.replicas[0]
        replica.server.command("REPLICAOF", "NO", "ONE")
        with pytest.raises(StoreUnavailable, match="reached 0 of 1"):
            await conn.script(SET_GET, ["gw-test:alone"], ["v"], confirm=True)
        primary.server.command("REPLICAOF", "127.0.0.1", replica.port)
        with pytest.raises(StoreUnavailable, match=r"ReadOnlyError|previous master|READONLY"):
            await conn.script(SET_GET, ["gw-test:demoted"], ["v"], confirm=True)
        assert conn.resets >= 1  # type: ignore[attr-defined]
    finally:
        await conn.close()


#: sets KEYS[1] after busy-waiting ARGV[2] ms on the server (a write still in flight)
SLOW_SET = LuaScript("""
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
repeat
  t = redis.call('TIME')
until tonumber(t[1]) * 1000000 + tonumber(t[2]) - start > tonumber(ARGV[2]) * 1000
redis.call('SET', KEYS[1], ARGV[1])
return 1
""")


def _event(channel: str, data: str) -> dict[str, bytes]:
    return {"channel": channel.encode(), "data": data.encode()}


async def test_a_write_in_flight_across_a_whole_failover_is_not_confirmed(
    redis_sentinel_group: SentinelGroup,
) -> None:
    """+try-failover and +switch-master both arrive while a confirmed write is in flight (it
    was sent to the old primary, and a replica still following it acknowledged it): the
    write is refused, though no failover is under way by the time its reply is read."""
    conn = _conn(redis_sentinel_group)
    service = redis_sentinel_group.master_name
    try:
        await conn.start()
        write = asyncio.ensure_future(
            conn.script(SLOW_SET, [f"gw-test:{uuid.uuid4().hex}"], ["v", 400], confirm=True)
        )
        await asyncio.sleep(0.15)
        on_event = conn._on_event  # type: ignore[attr-defined]
        source = "127.0.0.1:1"
        await on_event(_event("+try-failover", f"master {service} 127.0.0.1 1 #quorum 2/2"), source)
        await on_event(_event("+switch-master", f"{service} 127.0.0.1 1 127.0.0.1 2"), source)
        with pytest.raises(StoreUnavailable, match="failover"):
            await write
    finally:
        await conn.close()


async def test_one_sentinels_abandoned_attempt_does_not_end_anothers_failover_hold(
    redis_sentinel_group: SentinelGroup,
) -> None:
    """Two Sentinels start a failover; the one not elected gives up (-failover-abort-not-
    elected) while the elected one is still promoting: confirmed writes stay refused."""
    conn = _conn(redis_sentinel_group)
    service = redis_sentinel_group.master_name
    started = _event("+try-failover", f"master {service} 127.0.0.1 1 #quorum 2/2")
    try:
        await conn.start()
        on_event = conn._on_event  # type: ignore[attr-defined]
        await on_event(started, "127.0.0.1:1")
        await on_event(started, "127.0.0.1:2")
        await on_event(
            _event("-failover-abort-not-elected", f"master {service} 127.0.0.1 1"), "127.0.0.1:2"
        )
        with pytest.raises(StoreUnavailable, match="failover under way"):
            await conn.script(SET_GET, [f"gw-test:{uuid.uuid4().hex}"], ["v"], confirm=True)
        await on_event(_event("+switch-master", f"{service} 127.0.0.1 1 127.0.0.1 2"), "x:3")
        await conn.script(SET_GET, [f"gw-test:{uuid.uuid4().hex}"], ["v"], confirm=True)
    finally:
        await conn.close()


async def test_a_failover_started_before_the_listener_subscribed_holds_confirmations(
    redis_sentinel_group_factory: Callable[..., SentinelGroup],
) -> None:
    """The ``+try-failover`` of a failover that began before the conn listened was never heard:
    the master's ``failover_in_progress`` flag, read on subscribing, holds confirmed writes
    until the new primary is announced, so no write is confirmed by the primary being demoted.
    The replicas are frozen right after the failover starts, so it stays under way (Sentinel
    waits for a promotion) while the conn starts."""
    group = redis_sentinel_group_factory(replicas=2, sentinels=1)
    frozen = [node.pid for node in group.replicas if node.pid is not None]
    group.sentinels[0].server.command("SENTINEL", "FAILOVER", group.master_name)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    conn = _conn(group)
    try:
        await conn.start()
        with pytest.raises(StoreUnavailable, match="failover"):
            await conn.script(SET_GET, [f"gw-test:{uuid.uuid4().hex}"], ["during"], confirm=True)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    try:
        key = f"gw-test:{uuid.uuid4().hex}"
        await _write_until_confirmed(conn, key)
        assert _get(group.current_primary(), key) == b"after"
    finally:
        await conn.close()
