"""ClusterConn.read while every connection of the cluster client to a node is busy: redis-py's
cluster pools do not wait (``MaxConnectionsError``), so a burst of session reads beyond
``GATEWAY_REDIS_MAX_CONNECTIONS`` answered 503 (12 of 300 GETs with 8 connections) and each
failure re-learned the topology. A read now waits for a free connection, up to the pool
timeout, as the scripts' blocking pools do."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.redis_client import RedisClientSettings
from gateway.store.redis_cluster import ClusterConn
from tests.redis_servers import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def test_a_read_burst_beyond_the_pool_waits_for_connections(
    redis_cluster: RedisCluster,
) -> None:
    conn = ClusterConn(
        redis_cluster.seed_url,
        RedisClientSettings(max_connections=2, pool_timeout_s=5.0),
        wait_replicas=0,
        wait_timeout_ms=500,
    )
    await conn.start()
    try:
        await conn.client.set("busy:{b1}:k", b"v")
        epoch = conn._topology_epoch

        async def one() -> bytes:
            async def get() -> bytes:
                value: bytes = await conn.client.get("busy:{b1}:k")
                return value

            return await conn.read(get)

        answers = await asyncio.gather(*(one() for _ in range(200)), return_exceptions=True)
        failures = [a for a in answers if isinstance(a, BaseException)]
        assert not failures, f"{len(failures)} failed: {failures[0]!r}"
        assert conn._topology_epoch == epoch  # a busy pool is not a topology change
        await conn.client.delete("busy:{b1}:k")
    finally:
        await conn.close()
