"""ClusterConn.script while the slot of its keys is being migrated, keys split between the
two nodes (``TRYAGAIN``): the script did not run, so it is sent again after a pause, for up to
0.75 s, instead of answering 503 at once; a split that lasts longer is still a 503."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import RedisClientSettings
from gateway.store.redis_cluster import ClusterConn, cluster_key_slot
from gateway.store.redis_conn import LuaScript
from gateway.store.redis_support import _mapped
from tests.api.test_redis_cluster_faults import node_id, slot_owner
from tests.redis_servers import RedisCluster, redis_server_binary, start_cluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

BOTH = LuaScript(
    "redis.call('INCR', KEYS[1]) redis.call('INCR', KEYS[2]) "
    "return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}"
)
KEYS = ["mig:{b7}:one", "mig:{b7}:two"]


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    made = start_cluster(masters=3)
    try:
        yield made
    finally:
        made.stop()


def half_migrate(cluster: RedisCluster) -> tuple[threading.Event, threading.Thread]:
    """Start moving the keys' slot, move the first key only; the thread moves the second and
    ends the migration once the returned event is set."""
    slot = cluster_key_slot(KEYS[0])
    source = slot_owner(cluster, slot)
    target = next(n for n in cluster.primaries if n is not source)
    target.server.command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    source.server.command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
    source.server.command("MIGRATE", "127.0.0.1", target.port, KEYS[0], 0, 5000)
    finish = threading.Event()

    def rest() -> None:
        finish.wait(10)
        source.server.command("MIGRATE", "127.0.0.1", target.port, KEYS[1], 0, 5000)
        for node in cluster.primaries:
            node.server.command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))

    return finish, threading.Thread(target=rest)


@pytest.mark.parametrize(("split_s", "runs"), [(0.3, True), (2.0, False)])
async def test_a_script_on_a_half_migrated_slot_waits_for_the_split_to_end(
    cluster: RedisCluster, split_s: float, runs: bool
) -> None:
    conn = ClusterConn(
        cluster.seed_url, RedisClientSettings(), wait_replicas=0, wait_timeout_ms=500
    )
    await conn.start()
    try:
        assert await conn.script(BOTH, KEYS, []) == [b"1", b"1"]
        finish, mover = half_migrate(cluster)
        mover.start()
        asyncio.get_running_loop().call_later(split_s, finish.set)
        try:
            if runs:
                assert await conn.script(BOTH, KEYS, []) == [b"2", b"2"]
            else:
                with pytest.raises(StoreUnavailable, match="TryAgain"), _mapped("script"):
                    await conn.script(BOTH, KEYS, [])
        finally:
            finish.set()
            await asyncio.get_running_loop().run_in_executor(None, mover.join)
        # once moved, the script runs on the new owner (after one MOVED)
        expected = [b"3", b"3"] if runs else [b"2", b"2"]
        assert await conn.script(BOTH, KEYS, []) == expected
    finally:
        await conn.close()
