"""The Redis connection is started (connected, checked, replicas resolved) and warmed before
the gateway takes traffic; a Redis down at start leaves the gateway listening but not ready
until the start, retried in the background, succeeds; the start banner names the Redis mode
and endpoints, never a password."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.redis_startup import describe_redis
from gateway.settings import Settings
from tests.api.conftest import JWT_SECRET, ROOT
from tests.gateway_processes import free_port, start_gateway, stop_process, wait_ready


def settings_for(**values: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, jwt_secret=JWT_SECRET, rules_path=ROOT / "routing_rules.yaml", **values
    )


async def test_readyz_names_the_started_redis_connection(
    aiohttp_client: Any, redis_url: str, redis_prefix: str
) -> None:
    settings = settings_for(
        store="redis", redis_url=redis_url, redis_prefix=redis_prefix, redis_warm_connections=4
    )
    client = await aiohttp_client(create_app(settings))
    answer = await client.get("/readyz")
    body = await answer.json()
    assert answer.status == 200, body
    assert body["checks"]["redis"] == {"ok": True, "mode": "standalone", "waitReplicas": 0}
    assert body["checks"]["store"] == {"ok": True, "backend": "redis"}
    assert body["checks"]["coordination"] == {"ok": True, "backend": "redis"}


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A free port for a private redis-server the test starts when it wants; stopped by pid."""
    started: list[subprocess.Popen[bytes]] = []
    yield free_port(), started
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--dir", str(directory), "--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
    )


async def test_a_redis_down_at_start_is_not_ready_until_its_start_succeeds(
    aiohttp_client: Any,
    tmp_path: Path,
    redis_port: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    port, started = redis_port
    settings = settings_for(
        store="redis",
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_warm_connections=2,
        redis_connect_retries=0,
    )
    client = await aiohttp_client(create_app(settings))  # listens although Redis is down
    down = await client.get("/readyz")
    body = await down.json()
    assert down.status == 503, body
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["store"]["ok"] is False
    started.append(start_redis(port, tmp_path))
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        answer = await client.get("/readyz")
        body = await answer.json()
        if answer.status == 200 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert answer.status == 200, body
    assert body["checks"]["redis"] == {"ok": True, "mode": "standalone", "waitReplicas": 0}


async def test_coordination_alone_in_a_redis_that_is_down_does_not_decide_readiness(
    aiohttp_client: Any,
) -> None:
    settings = settings_for(
        coordination="redis",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_connect_retries=0,
    )
    client = await aiohttp_client(create_app(settings))
    answer = await client.get("/readyz")
    body = await answer.json()
    assert answer.status == 200, body
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["coordination"]["ok"] is False


def test_the_banner_describes_each_redis_mode_without_a_password() -> None:
    standalone = settings_for(redis_url="rediss://app:s3cret@cache.internal:6380/2?password=x")
    assert describe_redis(standalone) == "standalone, rediss://cache.internal:6380/2"
    cluster = settings_for(redis_mode="cluster", redis_url="redis://:s3cret@10.0.0.5:7000/0")
    assert describe_redis(cluster) == "cluster, seed redis://10.0.0.5:7000/0"
    sentinel = settings_for(
        redis_mode="sentinel",
        redis_sentinels="s1:26379, s2:26379,s3:26379",
        redis_sentinel_service="gateway",
        redis_sentinel_password="s3cret",
        redis_url="redis://:s3cret@ignored:6379/0",
    )
    assert describe_redis(sentinel) == "sentinel, service 'gateway' via s1:26379,s2:26379,s3:26379"


async def test_gateway_serve_names_the_coordination_and_redis_in_its_banner(
    tmp_path: Path, redis_url: str
) -> None:
    output = tmp_path / "gateway.log"
    port = free_port()
    secret_url = redis_url.replace("redis://", "redis://default:s3cret-pw@", 1)
    proc = start_gateway(
        port,
        {
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_RULES_PATH": str(ROOT / "routing_rules.yaml"),
            "GATEWAY_COORDINATION": "redis",
            "GATEWAY_REDIS_URL": secret_url,
            "GATEWAY_REDIS_CONNECT_RETRIES": "0",
        },
        output=output,
    )
    try:
        await wait_ready(port, proc)
    finally:
        stop_process(proc)
    text = output.read_text()
    assert "store=memory, coordination=redis, workers=1" in text
    assert f"gateway: redis standalone, {redis_url}\n" in text
    assert "s3cret-pw" not in text
