"""What only the Redis store has: error mapping, key layout and TTLs, pool, process races."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool

from gateway.store.base import (
    ClaimKind,
    Completion,
    CreatePin,
    StoredResponse,
    StoreUnavailable,
)
from gateway.store.redis import RedisStore
from gateway.store.redis_client import RedisClientSettings

from .samples import make_session

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


OPERATIONS: list[tuple[str, Callable[[RedisStore], Awaitable[Any]]]] = [
    ("ping", lambda s: s.ping()),
    ("claim", lambda s: s.claim("m", "k", "fp", token="t", lease_ms=1000)),
    ("complete", lambda s: s.complete("m", "k", "t", StoredResponse(201, b"x"), ttl_s=60)),
    ("release", lambda s: s.release("m", "k", "t")),
    ("reserve_order", lambda s: s.reserve_order("m", "o", "t", lease_ms=1000)),
    ("replace_order", lambda s: s.replace_order("m", "o", "s_1", "t", lease_ms=1000)),
    ("bind_order", lambda s: s.bind_order("m", "o", "t", "s_1", ttl_s=60)),
    ("release_order", lambda s: s.release_order("m", "o", "t")),
    ("put_session", lambda s: s.put_session(make_session(), ttl_s=60)),
    ("get_session", lambda s: s.get_session("s_1")),
    ("circuit_states", lambda s: s.circuit_states(["stripe"], now=1.0)),
    (
        "circuit_failure",
        lambda s: s.circuit_failure("stripe", now=1.0, window_s=10, threshold=3, open_s=30),
    ),
    ("circuit_success", lambda s: s.circuit_success("stripe", now=1.0)),
    (
        "circuit_acquire_probe",
        lambda s: s.circuit_acquire_probe("stripe", now=1.0, max_probes=1, probe_ttl_s=5),
    ),
]


# failures map to StoreUnavailable, fast ----------------------------------------------------


@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[n for n, _ in OPERATIONS])
async def test_unreachable_redis_is_store_unavailable_and_fast(
    name: str, operation: Callable[[RedisStore], Awaitable[Any]]
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", "gw:")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=name) as caught:
            await operation(store)
        assert time.monotonic() - started < 2.0
        assert caught.value.__cause__ is not None  # mapped with `raise ... from exc`
    finally:
        await store.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    yield port
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_hung_redis_times_out_into_store_unavailable(silent_server: int) -> None:
    store = RedisStore(f"redis://127.0.0.1:{silent_server}/0", "gw:")  # default timeouts
    conf = RedisClientSettings()
    # every try to open a connection hangs in its handshake until the socket timeout
    bound = (conf.connect_retries + 1) * (conf.socket_timeout_s + 0.4) + 1.0
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="claim"):
            await store.claim("m", "k", "fp", token="t", lease_ms=1000)
        assert time.monotonic() - started < bound
    finally:
        await store.close()


async def test_redis_error_reply_is_store_unavailable(
    store_factory: Any, redis_client: aioredis.Redis
) -> None:
    store: RedisStore = await store_factory("redis")
    await redis_client.set(store.keys.idempotency("m", "k"), b"not a hash", px=60_000)
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        await store.claim("m", "k", "fp", token="t", lease_ms=1000)


async def test_unreadable_session_is_store_unavailable(
    store_factory: Any, redis_client: aioredis.Redis
) -> None:
    store: RedisStore = await store_factory("redis")
    await redis_client.set(store.keys.session("s_1"), b'{"sessionId": "s_1"}', px=60_000)
    with pytest.raises(StoreUnavailable, match="s_1"):
        await store.get_session("s_1")


# keys, TTLs, round trips -------------------------------------------------------------------


async def exercise_everything(store: RedisStore) -> None:
    """Touch every kind of key the store writes."""
    await store.claim("m", "in-flight", "fp", token="t1", lease_ms=30_000)
    await store.claim("m", "done", "fp", token="t2", lease_ms=30_000)
    await store.complete("m", "done", "t2", StoredResponse(201, b"{}", "/x"), ttl_s=600)
    await store.reserve_order("m", "ORD-1", "t1", lease_ms=30_000)
    await store.reserve_order("m", "ORD-2", "t2", lease_ms=30_000)
    await store.bind_order("m", "ORD-2", "t2", "s_1", ttl_s=600)
    await store.put_session(make_session(), ttl_s=600)
    now = time.time()
    await store.circuit_failure("adyen", now=now, window_s=10, threshold=5, open_s=30)
    for _ in range(2):
        await store.circuit_failure("stripe", now=now, window_s=10, threshold=2, open_s=0.5)
    assert await store.circuit_acquire_probe("stripe", now=now + 1, max_probes=1, probe_ttl_s=5)


async def test_every_key_has_a_ttl_and_follows_the_layout(
    store_factory: Any, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    store: RedisStore = await store_factory("redis")
    await exercise_everything(store)

    found = {key.decode() async for key in redis_client.scan_iter(match=redis_prefix + "*")}
    assert found == {
        f"{redis_prefix}idem:m:in-flight",
        f"{redis_prefix}idem:m:done",
        f"{redis_prefix}order:m:ORD-1",
        f"{redis_prefix}order:m:ORD-2",
        f"{redis_prefix}session:s_1",
        f"{redis_prefix}circuit:{{adyen}}",
        f"{redis_prefix}circuit:{{adyen}}:fails",
        f"{redis_prefix}circuit:{{stripe}}",
        f"{redis_prefix}circuit:{{stripe}}:probes",
    }
    for key in found:
        ttl = await redis_client.pttl(key)
        assert ttl > 0, f"{key} has no TTL ({ttl})"
    assert await redis_client.pttl(f"{redis_prefix}circuit:{{stripe}}:probes") <= 5_000


async def test_records_are_visible_across_stores_sharing_a_prefix(store_factory: Any) -> None:
    first: RedisStore = await store_factory("redis")
    second: RedisStore = await store_factory("redis")
    assert (await first.claim("m", "k", "fp", token="t1", lease_ms=5_000)).kind is (
        ClaimKind.CLAIMED
    )
    assert (await second.claim("m", "k", "fp", token="t2", lease_ms=5_000)).kind is (
        ClaimKind.IN_FLIGHT
    )
    assert await second.complete("m", "k", "t1", StoredResponse(201, b"ok"), ttl_s=60)
    assert (await first.claim("m", "k", "fp", token="t3", lease_ms=5_000)).kind is ClaimKind.REPLAY


async def test_prefixes_isolate_gateways(redis_url: str, redis_prefix: str) -> None:
    one = RedisStore(redis_url, redis_prefix + "one:")
    two = RedisStore(redis_url, redis_prefix + "two:")
    try:
        assert (await one.claim("m", "k", "fp", token="t1", lease_ms=5_000)).kind is (
            ClaimKind.CLAIMED
        )
        assert (await two.claim("m", "k", "fp", token="t2", lease_ms=5_000)).kind is (
            ClaimKind.CLAIMED
        )
    finally:
        await one.close()
        await two.close()


async def test_hot_path_is_one_round_trip_each(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: RedisStore = await store_factory("redis")
    await exercise_everything(store)  # scripts are loaded now
    commands: list[str] = []
    original = store.client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return await original(*args, **options)

    monkeypatch.setattr(store.client, "execute_command", counting)

    await store.claim("m", "hot", "fp", token="t", lease_ms=5_000)
    await store.complete("m", "hot", "t", StoredResponse(201, b"{}"), ttl_s=60)
    await store.claim("m", "hot", "fp", token="t2", lease_ms=5_000)
    await store.put_session(make_session(), ttl_s=60)
    await store.get_session("s_1")
    assert commands == ["EVALSHA", "EVALSHA", "EVALSHA", "EVALSHA", "GET"]


async def test_pool_is_sized_bounded_and_uses_hiredis(store_factory: Any) -> None:
    store: RedisStore = await store_factory("redis")
    pool = store.client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    conf = RedisClientSettings()
    assert pool.max_connections == conf.max_connections == 64
    assert pool.timeout == conf.pool_timeout_s
    assert pool.connection_kwargs["socket_timeout"] == conf.socket_timeout_s
    assert pool.connection_kwargs["socket_connect_timeout"] == conf.connect_timeout_s
    await store.ping()
    connection = await pool.get_connection()
    try:
        assert "Hiredis" in type(connection._parser).__name__
    finally:
        await pool.release(connection)


async def test_more_concurrent_requests_than_connections_wait_for_one(
    store_factory: Any,
) -> None:
    store: RedisStore = await store_factory("redis", max_connections=4)
    claims = await asyncio.gather(
        *(store.claim("m", f"k{i}", "fp", token="t", lease_ms=5_000) for i in range(64))
    )
    assert all(c.kind is ClaimKind.CLAIMED for c in claims)


async def test_close_leaves_a_given_client_open(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisStore(redis_url, redis_prefix, client=client)
        await store.ping()
        await store.close()
        assert await client.ping() is True
    finally:
        await client.aclose()


# two OS processes race for one key ---------------------------------------------------------

WORKER = r"""
import asyncio, json, os, sys

from gateway.store.redis import RedisStore


async def main(url: str, prefix: str, key: str, count: int) -> None:
    store = RedisStore(url, prefix)
    try:
        # open all connections first, so the burst races on Redis, not on connecting
        await asyncio.gather(*(store.ping() for _ in range(count)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        claims = await asyncio.gather(
            *(
                store.claim("race", key, "fp", token=f"{os.getpid()}-{i}", lease_ms=30_000)
                for i in range(count)
            )
        )
        print(json.dumps([[c.kind.value, c.token] for c in claims]), flush=True)
    finally:
        await store.close()


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_two_processes_fifty_claims_one_winner(redis_url: str, redis_prefix: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            redis_url,
            redis_prefix,
            "order-42",
            "25",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
            assert line.strip() == b"ready", line
        for proc in procs:  # release both bursts together
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        for proc in procs:
            assert proc.stdin is not None
            await proc.stdin.drain()
        outputs = [await asyncio.wait_for(proc.communicate(), timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    results: list[list[str | None]] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        results.extend(json.loads(out))
    assert len(results) == 50
    winners = [tok for kind, tok in results if kind == "claimed"]
    assert len(winners) == 1
    assert sum(kind == "in_flight" for kind, _ in results) == 49

    # the winner really holds the key: only its token can complete it
    store = RedisStore(redis_url, redis_prefix)
    try:
        assert winners[0] is not None
        response = StoredResponse(201, b"won")
        assert not await store.complete("race", "order-42", "nobody", response, ttl_s=60)
        assert await store.complete("race", "order-42", winners[0], response, ttl_s=60)
    finally:
        await store.close()


async def test_a_pinned_create_costs_one_round_trip_per_step(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch, redis_client: aioredis.Redis
) -> None:
    store: RedisStore = await store_factory("redis")
    pin = CreatePin(created_at=datetime(2026, 1, 1, tzinfo=UTC), request_id="rq")

    async def begin(token: str) -> Any:
        return await store.begin_create(
            "m",
            "pinned",
            "fp",
            token=token,
            lease_ms=5_000,
            order_ref="ORD-P",
            pin=pin,
            pin_ttl_ms=600_000,
        )

    await begin("warm")  # scripts are loaded now
    await store.abandon_create("m", "pinned", "warm", sent=["stripe"])
    commands: list[str] = []
    original = store.client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return await original(*args, **options)

    monkeypatch.setattr(store.client, "execute_command", counting)
    resumed = await begin("t1")
    assert resumed.resumed
    await store.abandon_create("m", "pinned", "t1", sent=["adyen"])
    again = await begin("t2")
    completion = Completion("m", "pinned", "t2", StoredResponse(201, b"{}"), 60, "ORD-P", 60)
    assert await store.commit_create(make_session(), completion, ttl_s=60, expires_at=None)
    assert commands == ["EVALSHA"] * 4
    assert again.pin is not None
    assert again.pin.sent == ("stripe", "adyen")
    # while pinned, the record outlives the lease (it holds the lease in a field)
    await store.begin_create(
        "m",
        "lease",
        "fp",
        token="t",
        lease_ms=5_000,
        order_ref=None,
        pin=pin,
        pin_ttl_ms=600_000,
    )
    assert await redis_client.pttl(store.keys.idempotency("m", "lease")) > 5_000
