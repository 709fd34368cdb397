"""A gateway whose ``GATEWAY_REDIS_MODE`` does not match the deployment it is pointed at is not
ready, and ``/readyz`` says why (never a password): a standalone client on a Redis Cluster node
would answer for that node's slots only and 503 every other key (MOVED) while reading ready."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.app import create_app
from tests.api.test_redis_startup import settings_for
from tests.redis_servers import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def readyz(client: Any) -> tuple[int, dict[str, Any]]:
    answer = await client.get("/readyz")
    return answer.status, await answer.json()


async def test_standalone_mode_on_a_cluster_node_is_not_ready_and_says_why(
    aiohttp_client: Any, redis_cluster: RedisCluster
) -> None:
    node = redis_cluster.primaries[0]
    settings = settings_for(
        store="redis",
        redis_url=f"redis://:s3cret-pw@127.0.0.1:{node.port}/0",
        redis_warm_connections=1,
        redis_connect_retries=0,
    )
    client = await aiohttp_client(create_app(settings))
    for _ in range(3):  # the start is retried in the background: it keeps failing
        status, body = await readyz(client)
        assert status == 503, body
        assert body["checks"]["redis"]["ok"] is False
        assert "GATEWAY_REDIS_MODE=cluster" in body["checks"]["redis"]["error"]
        assert "s3cret-pw" not in str(body)
        await asyncio.sleep(0.6)


async def test_cluster_mode_on_a_standalone_server_is_not_ready_and_says_why(
    aiohttp_client: Any, redis_url: str
) -> None:
    settings = settings_for(
        store="redis",
        redis_mode="cluster",
        redis_url=redis_url.rsplit("/", 1)[0] + "/0",
        redis_warm_connections=1,
        redis_connect_retries=0,
    )
    client = await aiohttp_client(create_app(settings))
    status, body = await readyz(client)
    assert status == 503, body
    assert body["checks"]["redis"]["ok"] is False
    assert "cluster" in body["checks"]["redis"]["error"].lower()
