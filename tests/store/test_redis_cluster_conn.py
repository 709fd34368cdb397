"""ClusterConn against a real 3-primary Redis Cluster (tests/redis_servers.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import RedisClientSettings, open_redis
from gateway.store.redis_cluster import ClusterConn, cluster_key_slot
from gateway.store.redis_conn import LuaScript, RedisConn
from gateway.store.redis_support import _mapped
from tests.redis_servers import RedisCluster, RedisNode

SET_GET = LuaScript("redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])")
#: an increment that keeps the server busy a moment after it, so that a connection killed
#: meanwhile loses the reply of an increment that happened
INCR = LuaScript(
    "local n = redis.call('INCR', KEYS[1]) local x = 0 for i = 1, 20000 do x = x + i end return n"
)


def _conn(cluster: RedisCluster, **settings: object) -> RedisConn:
    return open_redis(
        Settings(redis_mode="cluster", redis_url=cluster.seed_url, **settings),  # type: ignore[arg-type]
        RedisClientSettings(socket_timeout_s=2.0),
    )


@pytest.fixture
async def conn(redis_cluster: RedisCluster) -> AsyncIterator[RedisConn]:
    made = _conn(redis_cluster)
    await made.start()
    yield made
    await made.close()


def _owner(cluster: RedisCluster, key: str) -> RedisNode:
    """The primary whose slot ranges hold ``key``'s slot (asked of the servers)."""
    slot = cluster_key_slot(key)
    with cluster.nodes[0].server.client() as client:
        for start, end, owner, *_ in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return next(n for n in cluster.nodes if n.port == int(owner[1]))
    raise AssertionError(f"slot {slot} is not covered")


def _keys_on_every_primary(cluster: RedisCluster, tag: str) -> list[str]:
    """A key per primary, each under its own hash tag."""
    found: dict[int, str] = {}
    for index in range(200):
        key = f"{{{tag}{index}}}:k"
        found.setdefault(_owner(cluster, key).port, key)
        if len(found) == len(cluster.primaries):
            break
    return list(found.values())


async def test_a_script_runs_on_the_primary_owning_its_slot_on_every_master(
    redis_cluster: RedisCluster, conn: RedisConn
) -> None:
    keys = _keys_on_every_primary(redis_cluster, uuid.uuid4().hex)
    assert len(keys) == 3
    for key in keys:
        assert await conn.script(SET_GET, [key], [key]) == key.encode()
    for key in keys:
        with _owner(redis_cluster, key).server.client() as node:
            assert node.get(key) == key.encode()  # on the owner itself, no redirection
    assert conn.wait_replicas == 0  # no replicas: auto resolved to 0
    assert len(await conn.primaries()) == 3


async def test_keys_of_one_script_in_several_slots_are_a_store_outage_not_a_crash(
    conn: RedisConn,
) -> None:
    with pytest.raises(StoreUnavailable, match="CROSSSLOT"):
        await conn.script(SET_GET, ["{a}1", "{b}2"], ["x"])
    # the cluster client's own refusal is a RedisClusterException, not a RedisError
    with pytest.raises(StoreUnavailable, match="RedisClusterException"), _mapped("raw"):
        await conn.client.execute_command("EVAL", "return 1", 2, "{a}1", "{b}2")


async def test_a_confirmed_write_waits_for_a_replica(
    redis_cluster_replicated: RedisCluster,
) -> None:
    conn = _conn(redis_cluster_replicated)
    try:
        assert await conn.start() == []  # durable settings on every primary: no warning
        assert conn.wait_replicas == 1
        for key in _keys_on_every_primary(redis_cluster_replicated, uuid.uuid4().hex):
            await conn.script(SET_GET, [key], ["v"], confirm=True)
            owner = _owner(redis_cluster_replicated, key)
            replica = next(
                r
                for r in redis_cluster_replicated.replicas
                if r.server.info("replication")["master_port"] == owner.port
            )
            with replica.server.client() as client:
                client.execute_command("READONLY")
                assert client.get(key) == b"v"  # WAIT said it got there
    finally:
        await conn.close()


async def test_a_write_no_replica_can_confirm_is_refused(redis_cluster: RedisCluster) -> None:
    conn = _conn(redis_cluster, redis_wait_replicas=1, redis_wait_timeout_ms=50)
    try:
        warnings = await conn.start()
        assert any("0 replicas but writes wait for 1" in line for line in warnings)
        with pytest.raises(StoreUnavailable, match="reached 0 of 1 replicas"):
            await conn.script(SET_GET, [f"{{{uuid.uuid4().hex}}}"], ["v"], confirm=True)
    finally:
        await conn.close()


async def test_start_warns_about_a_cluster_without_replicas(redis_cluster: RedisCluster) -> None:
    conn = _conn(redis_cluster)
    try:
        warnings = await conn.start()
    finally:
        await conn.close()
    assert sum("no replica confirms writes" in line for line in warnings) == 3
    assert sum("appendonly is not yes" in line for line in warnings) == 3


async def test_a_moved_slot_is_followed_once_the_script_did_not_run(
    redis_cluster: RedisCluster, conn: RedisConn
) -> None:
    key = f"{{{uuid.uuid4().hex}}}:moved"
    old = _owner(redis_cluster, key)
    new = next(n for n in redis_cluster.primaries if n is not old)
    new_id = new.server.command("CLUSTER", "MYID").decode()
    slot = cluster_key_slot(key)
    await conn.script(SET_GET, [f"{{{uuid.uuid4().hex}}}"], ["v"])  # topology learned
    for node in [new, *(n for n in redis_cluster.primaries if n is not new)]:
        node.server.command("CLUSTER", "SETSLOT", slot, "NODE", new_id)
    assert await conn.script(SET_GET, [key], ["moved"]) == b"moved"
    with new.server.client() as client:
        assert client.get(key) == b"moved"


@pytest.mark.parametrize("through", ["script", "client"])
async def test_no_script_runs_twice_while_connections_are_killed(
    redis_cluster: RedisCluster, conn: RedisConn, through: str
) -> None:
    """redis-py's default cluster retry re-sends a command after a connection error, when it
    may have run: more than 200 increments were stored for 200 calls. Ours never re-sends,
    neither in :meth:`script` nor through the plain cluster client other users share."""
    key = f"{{{uuid.uuid4().hex}}}:counter"
    owner = _owner(redis_cluster, key)
    admins = [redis.asyncio.Redis(port=n.port) for n in redis_cluster.primaries]
    stop = asyncio.Event()
    kills = 0

    async def killer() -> None:
        nonlocal kills
        while not stop.is_set():
            for admin in admins:
                kills += int(await admin.execute_command("CLIENT KILL TYPE normal"))
            await asyncio.sleep(0.001)

    async def increment(index: int) -> bool:
        await asyncio.sleep(index * 0.002)  # spread over the killing
        try:
            with _mapped("increment"):
                if through == "script":
                    await conn.script(INCR, [key], [])
                else:
                    await conn.client.eval(INCR.source, 1, key)
        except StoreUnavailable:
            return False
        return True

    killing = asyncio.create_task(killer())
    try:
        outcomes = await asyncio.gather(*(increment(i) for i in range(200)))
    finally:
        stop.set()
        await killing
    with owner.server.client() as client:
        stored = int(client.get(key) or 0)
    for admin in admins:
        await admin.aclose()
    succeeded = sum(outcomes)
    assert kills > 0
    assert succeeded <= stored <= 200
    assert succeeded < 200  # the kills did hit calls in flight


async def test_an_idempotent_read_is_retried_after_its_connection_was_killed(
    redis_cluster: RedisCluster, conn: RedisConn
) -> None:
    key = f"{{{uuid.uuid4().hex}}}:read"
    await conn.script(SET_GET, [key], ["r"])
    await conn.client.get(key)  # a pooled connection to the owner exists
    for node in redis_cluster.primaries:
        node.server.command("CLIENT", "KILL", "TYPE", "normal")
    assert await conn.read(lambda: conn.client.get(key)) == b"r"


async def test_an_unreachable_seed_is_a_store_outage() -> None:
    """No node answers: StoreUnavailable (503), not a 500."""
    conn = ClusterConn(
        "redis://127.0.0.1:1/0", RedisClientSettings(), wait_replicas="auto", wait_timeout_ms=50
    )
    try:
        with pytest.raises(StoreUnavailable, match="redis start failed"):
            await conn.start()
    finally:
        await conn.close()
