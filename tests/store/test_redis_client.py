"""The shared Redis client: connections are retried and warmed, commands are never re-sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import (
    RedisClientSettings,
    open_redis,
    open_redis_client,
    warm_up,
)
from gateway.store.redis_conn import LuaScript
from tests.redis_servers import SentinelGroup
from tests.redis_stores import redis_store


@dataclass
class FakeRedis:
    """A TCP server speaking just enough RESP: +OK to the connection handshake, silence to
    every script call, which it counts. Connections it should refuse are closed at once."""

    port: int = 0
    connections: int = 0
    scripts: int = 0
    refuse_first: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        if self.connections <= self.refuse_first:
            writer.close()
            return
        buffer = b""
        while chunk := await reader.read(65536):
            buffer += chunk
            while b"\r\n" in buffer:
                line, _, buffer = buffer.partition(b"\r\n")
                word = line.upper()
                if word in (b"EVALSHA", b"EVAL"):
                    self.scripts += 1  # never answered: the caller times out
                elif word in (b"CLIENT", b"PING", b"SELECT", b"HELLO"):
                    writer.write(b"+OK\r\n" if word != b"PING" else b"+PONG\r\n")
                    await writer.drain()


@pytest.fixture
async def fake_redis() -> AsyncIterator[FakeRedis]:
    fake = FakeRedis()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    yield fake
    for writer in fake.writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_script_that_timed_out_is_never_sent_again(fake_redis: FakeRedis) -> None:
    store = redis_store(
        f"redis://127.0.0.1:{fake_redis.port}/0", "gw:", socket_timeout_s=0.3, connect_retries=3
    )
    try:
        with pytest.raises(StoreUnavailable, match="begin_create"):
            await store.begin_create("m", "k", "fp", token="t", lease_ms=1000, order_ref=None)
        # the claim may have run: only its caller, holding the lease, decides what follows
        assert fake_redis.scripts == 1
    finally:
        await store.close()


async def test_opening_a_connection_is_retried(fake_redis: FakeRedis) -> None:
    fake_redis.refuse_first = 2
    client = open_redis_client(
        f"redis://127.0.0.1:{fake_redis.port}/0", RedisClientSettings(connect_retries=2)
    )
    try:
        assert await client.ping() is True
        assert fake_redis.connections == 3
    finally:
        await client.aclose()


async def test_connect_retries_give_up_after_the_configured_tries(fake_redis: FakeRedis) -> None:
    fake_redis.refuse_first = 10
    store = redis_store(f"redis://127.0.0.1:{fake_redis.port}/0", "gw:", connect_retries=1)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="ping"):
            await store.ping()
        assert fake_redis.connections == 2
        assert time.monotonic() - started < 2.0
    finally:
        await store.close()


@pytest.mark.redis
async def test_warm_up_opens_the_configured_connections_before_traffic(redis_url: str) -> None:
    client = open_redis_client(redis_url, RedisClientSettings(max_connections=32))
    try:
        assert await warm_up(client, 12) == 12
        pool = client.connection_pool
        assert len(pool._available_connections) == 12  # type: ignore[attr-defined]
        assert all(c.is_connected for c in pool._available_connections)  # type: ignore[attr-defined]
    finally:
        await client.aclose()


async def test_warm_up_of_an_unreachable_redis_is_only_logged(
    caplog: pytest.LogCaptureFixture, fake_redis: FakeRedis
) -> None:
    fake_redis.refuse_first = 1000
    client = open_redis_client(
        f"redis://127.0.0.1:{fake_redis.port}/0", RedisClientSettings(connect_retries=0)
    )
    try:
        assert await warm_up(client, 4) == 0
        assert "warm-up opened 0 of 4" in caplog.text
    finally:
        await client.aclose()


def test_the_settings_reach_the_client() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_max_connections=7,
        redis_pool_timeout_seconds=3.5,
        redis_connect_timeout_seconds=0.7,
        redis_socket_timeout_seconds=0.9,
        redis_connect_retries=4,
        redis_warm_connections=5,
    )
    conf = RedisClientSettings.from_settings(settings)
    assert conf == RedisClientSettings(7, 3.5, 0.7, 0.9, 4, 5)
    pool = open_redis_client("redis://127.0.0.1:6379/0", conf).connection_pool
    assert (pool.max_connections, pool.timeout) == (7, 3.5)  # type: ignore[attr-defined]
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.7
    assert pool.connection_kwargs["socket_timeout"] == 0.9


async def test_a_standalone_primary_with_replicas_is_checked_for_durability(
    redis_sentinel_group_factory: Callable[..., SentinelGroup],
) -> None:
    """auto: 1 replica found, so writes wait for it; the primary lacks min-replicas-to-write
    and AOF: a loud warning each. The durable group's primary draws none."""
    loose = redis_sentinel_group_factory(replicas=1, sentinels=1, durable=False)
    durable = redis_sentinel_group_factory(replicas=1, sentinels=1)
    for group, expected in ((loose, 2), (durable, 0)):
        conn = open_redis(Settings(redis_url=group.primary.url))  # type: ignore[call-arg]
        try:
            warnings = await conn.start()
            assert conn.wait_replicas == 1
        finally:
            await conn.close()
        assert len(warnings) == expected, warnings
    conn = open_redis(Settings(redis_url=loose.primary.url))  # type: ignore[call-arg]
    try:
        await conn.start()
        assert await conn.script(LuaScript("return 1"), ["k"], [], confirm=True) == 1
    finally:
        await conn.close()


async def test_a_standalone_redis_without_replicas_draws_no_warning(redis_url: str) -> None:
    conn = open_redis(Settings(redis_url=redis_url))  # type: ignore[call-arg]
    try:
        assert await conn.start() == []
        assert conn.wait_replicas == 0
    finally:
        await conn.close()


async def test_an_attribute_error_inside_redis_py_is_a_lost_connection() -> None:
    """redis-py's asyncio connection raises AttributeError ('NoneType' object has no attribute
    'writelines') when another task disconnected it mid-command (seen in CI while connections
    were being killed): a store outage (503), not a 500. Our own AttributeErrors stay bugs."""
    from redis.asyncio.connection import Connection

    from gateway.store.redis_support import _mapped

    connection = Connection()
    with pytest.raises(StoreUnavailable, match="connection lost"), _mapped("eval"):
        await connection._send_packed_command([b"x"])  # its writer is gone
    with pytest.raises(AttributeError), _mapped("eval"):
        None.writelines([b"x"])  # type: ignore[attr-defined]
