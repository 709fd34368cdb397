"""ClusterConn.ping (what ``/readyz`` asks) after a primary dies or freezes, with no other
traffic to re-learn the topology: it pings the primaries the cluster has now (it kept pinging
the dead one, so a gateway stayed not ready for good), and each ping ends within about the
socket timeout (a frozen node took 3.3 s: a connect attempt per retry, each a timeout).
And a start while the URL's node is down finds the cluster through the other seeds."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import RedisClientSettings, open_redis
from gateway.store.redis_cluster import ClusterConn
from gateway.store.redis_support import _mapped
from tests.redis_servers import RedisCluster, redis_server_binary, start_cluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    """3 durable primaries with a replica each, of this test's own (one gets killed)."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    made = start_cluster(masters=3, replicas_per_master=1, durable=True, node_timeout_ms=2000)
    try:
        yield made
    finally:
        made.stop()


async def pings(conn: ClusterConn, seconds: float) -> list[tuple[float, bool, float]]:
    """(when, answered, how long) of a ping every 0.2 s for ``seconds``."""
    seen: list[tuple[float, bool, float]] = []
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        sent = time.monotonic()
        try:
            with _mapped("ping"):
                await conn.ping()
            ok = True
        except StoreUnavailable:
            ok = False
        seen.append((round(sent - began, 1), ok, round(time.monotonic() - sent, 2)))
        await asyncio.sleep(0.2)
    return seen


@pytest.mark.parametrize("fault", ["killed", "frozen"])
async def test_ping_follows_a_failover_and_stays_bounded(cluster: RedisCluster, fault: str) -> None:
    conn = ClusterConn(
        cluster.seed_url,
        RedisClientSettings(socket_timeout_s=1.0),
        wait_replicas="auto",
        wait_timeout_ms=500,
    )
    await conn.start()
    victim = cluster.primaries[0]  # the seed node
    pid = victim.pid
    assert pid is not None
    try:
        if fault == "killed":
            victim.server.kill()
        else:
            os.kill(pid, signal.SIGSTOP)
        seen = await pings(conn, 12)
    finally:
        if fault == "frozen":
            os.kill(pid, signal.SIGCONT)
        await conn.close()
    print(f"\n{fault}: {seen}")
    assert not seen[0][1]
    assert all(took < 2.5 for _, _, took in seen), seen
    assert all(ok for _, ok, _ in seen[-5:]), seen  # the replica took over meanwhile


async def test_a_start_while_the_url_node_is_down_finds_the_cluster_through_more_seeds(
    cluster: RedisCluster,
) -> None:
    """The URL names one node; once it died (its replica took over) a gateway started then
    found no cluster at all, for as long as that node stays down."""
    seed = cluster.seed_url
    others = ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes[1:])
    cluster.primaries[0].server.kill()
    alone = open_redis(Settings(redis_mode="cluster", redis_url=seed))  # type: ignore[call-arg]
    with pytest.raises(StoreUnavailable, match="cannot be connected"):
        await alone.start()
    await alone.close()
    seeded = open_redis(
        Settings(redis_mode="cluster", redis_url=seed, redis_cluster_nodes=others)  # type: ignore[call-arg]
    )
    try:
        began = time.monotonic()
        while True:  # until the replica of the dead node took over
            try:
                await seeded.start()
                break
            except StoreUnavailable:
                assert time.monotonic() - began < 20
                await asyncio.sleep(0.2)
        await seeded.ping()
    finally:
        await seeded.close()


def test_malformed_cluster_nodes_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(redis_mode="cluster", redis_cluster_nodes="h:1,s3cr3t-host")  # type: ignore[call-arg]
    assert "redis_cluster_nodes must be host:port pairs" in str(caught.value)
    assert "s3cr3t-host" not in str(caught.value)
