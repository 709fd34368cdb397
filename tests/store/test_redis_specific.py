"""What only the Redis store (and the Redis circuits) has: error mapping, key layout and TTLs,
pool, process races."""

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

from gateway.idempotency import session_id_for
from gateway.store.base import (
    ClaimKind,
    Completion,
    CreatePin,
    StoredResponse,
    StoreUnavailable,
)
from gateway.store.circuits_redis import RedisCircuits
from gateway.store.keys import RedisKeys
from gateway.store.redis import RedisStore
from gateway.store.redis_client import RedisClientSettings, StandaloneConn
from tests.redis_stores import redis_store

from .samples import make_session
from .test_lifecycle_contract import item

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _completion(token: str = "t", order_ref: str | None = "o") -> Completion:
    return Completion("m", "k", token, StoredResponse(201, b"x"), 60, order_ref, 60)


Operation = Callable[[RedisStore, RedisCircuits], Awaitable[Any]]

OPERATIONS: list[tuple[str, Operation]] = [
    ("ping", lambda s, c: s.ping()),
    (
        "begin_create",
        lambda s, c: s.begin_create("m", "k", "fp", token="t", lease_ms=1000, order_ref="o"),
    ),
    (
        "commit_create",
        lambda s, c: s.commit_create(make_session(), _completion(), ttl_s=60, expires_at=None),
    ),
    ("abandon_create", lambda s, c: s.abandon_create("m", "k", "t", sent=["stripe"])),
    ("release", lambda s, c: s.release("m", "k", "t")),
    ("replace_order", lambda s, c: s.replace_order("m", "o", "s_1", "t", lease_ms=1000)),
    ("release_order", lambda s, c: s.release_order("m", "o", "t")),
    ("get_session", lambda s, c: s.get_session("s_1")),
    ("circuit_states", lambda s, c: c.circuit_states(["stripe"], now=1.0)),
    (
        "circuit_failure",
        lambda s, c: c.circuit_failure("stripe", now=1.0, window_s=10, threshold=3, open_s=30),
    ),
    ("circuit_success", lambda s, c: c.circuit_success("stripe", now=1.0)),
    (
        "circuit_acquire_probe",
        lambda s, c: c.circuit_acquire_probe("stripe", now=1.0, max_probes=1, probe_ttl_s=5),
    ),
]


# failures map to StoreUnavailable, fast ----------------------------------------------------


@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[n for n, _ in OPERATIONS])
async def test_unreachable_redis_is_store_unavailable_and_fast(
    name: str, operation: Operation
) -> None:
    store = redis_store(f"redis://127.0.0.1:{closed_port()}/0", "gw:")
    circuits = RedisCircuits(store.conn, "gw:")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=name) as caught:
            await operation(store, circuits)
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
    store = redis_store(f"redis://127.0.0.1:{silent_server}/0", "gw:")  # default timeouts
    conf = RedisClientSettings()
    # every try to open a connection hangs in its handshake until the socket timeout
    bound = (conf.connect_retries + 1) * (conf.socket_timeout_s + 0.4) + 1.0
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="begin_create"):
            await store.begin_create("m", "k", "fp", token="t", lease_ms=1000, order_ref=None)
        assert time.monotonic() - started < bound
    finally:
        await store.close()


async def test_redis_error_reply_is_store_unavailable(
    store_factory: Any, redis_client: aioredis.Redis
) -> None:
    store: RedisStore = await store_factory("redis")
    await redis_client.set(store.keys.idempotency("m", "k"), b"not a hash", px=60_000)
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        await store.begin_create("m", "k", "fp", token="t", lease_ms=1000, order_ref=None)


async def test_unreadable_session_is_store_unavailable(
    store_factory: Any, redis_client: aioredis.Redis
) -> None:
    store: RedisStore = await store_factory("redis")
    await redis_client.set(store.keys.session("s_1"), b'{"sessionId": "s_1"}', px=60_000)
    with pytest.raises(StoreUnavailable, match="s_1"):
        await store.get_session("s_1")


# keys, TTLs, round trips -------------------------------------------------------------------


async def exercise_everything(store: RedisStore, circuits: RedisCircuits) -> None:
    """Touch every kind of key that carries a TTL (the durable queues are left empty)."""
    await store.begin_create("m", "in-flight", "fp", token="t1", lease_ms=30_000, order_ref="O1")
    await store.begin_create("m", "done", "fp", token="t2", lease_ms=30_000, order_ref="O2")
    completion = Completion("m", "done", "t2", StoredResponse(201, b"{}", "/x"), 600, "O2", 600)
    assert await store.commit_create(make_session(), completion, ttl_s=600, expires_at=None)
    assert await store.claim_event("stripe", "evt_1", lease_s=30) == "new"
    await store.finish_event("stripe", "evt_2", ttl_s=600)
    now = time.time()
    await circuits.circuit_failure("adyen", now=now, window_s=10, threshold=5, open_s=30)
    for _ in range(2):
        await circuits.circuit_failure("stripe", now=now, window_s=10, threshold=2, open_s=0.5)
    assert await circuits.circuit_acquire_probe("stripe", now=now + 1, max_probes=1, probe_ttl_s=5)


async def test_every_key_has_a_ttl_and_follows_the_layout(
    store_factory: Any, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    store: RedisStore = await store_factory("redis")
    await exercise_everything(store, RedisCircuits(store.conn, redis_prefix))

    keys = RedisKeys(redis_prefix)
    found = {key.decode() async for key in redis_client.scan_iter(match=redis_prefix + "*")}
    assert found == {
        keys.idempotency("m", "in-flight"),
        keys.idempotency("m", "done"),
        keys.order("m", "O1"),
        keys.order("m", "O2"),
        keys.session("s_1"),
        keys.order_sessions("merchant-1", "ORD-2024-001"),
        f"{redis_prefix}webhook:stripe:evt_1",
        f"{redis_prefix}webhook:stripe:evt_2",
        f"{redis_prefix}circuit:{{adyen}}",
        f"{redis_prefix}circuit:{{adyen}}:fails",
        f"{redis_prefix}circuit:{{stripe}}",
        f"{redis_prefix}circuit:{{stripe}}:probes",
    }
    for key in found:
        ttl = await redis_client.pttl(key)
        assert ttl > 0, f"{key} has no TTL ({ttl})"
    assert await redis_client.pttl(f"{redis_prefix}circuit:{{stripe}}:probes") <= 5_000
    # a running create's reservation lives as long as a bound one, its lease is in its value
    assert await redis_client.pttl(keys.order("m", "O1")) > 29 * 86_400_000


async def test_records_are_visible_across_stores_sharing_a_prefix(store_factory: Any) -> None:
    first: RedisStore = await store_factory("redis")
    second: RedisStore = await store_factory("redis")

    async def begin(store: RedisStore, token: str) -> ClaimKind:
        begun = await store.begin_create(
            "m", "k", "fp", token=token, lease_ms=5_000, order_ref=None
        )
        return begun.claim.kind

    assert await begin(first, "t1") is ClaimKind.CLAIMED
    assert await begin(second, "t2") is ClaimKind.IN_FLIGHT
    completion = Completion("m", "k", "t1", StoredResponse(201, b"ok"), 60)
    assert await second.commit_create(make_session(), completion, ttl_s=60, expires_at=None)
    assert await begin(first, "t3") is ClaimKind.REPLAY
    assert await first.get_session("s_1") == make_session()


async def test_prefixes_isolate_gateways(redis_url: str, redis_prefix: str) -> None:
    one = redis_store(redis_url, redis_prefix + "one:")
    two = redis_store(redis_url, redis_prefix + "two:")
    try:
        for store in (one, two):
            begun = await store.begin_create(
                "m", "k", "fp", token="t", lease_ms=5_000, order_ref=None
            )
            assert begun.claim.kind is ClaimKind.CLAIMED
    finally:
        await one.close()
        await two.close()


async def test_hot_path_round_trips(store_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guarded create costs four scripts (claim, reservation, session, order binding); its
    first replay three (the claim, the order binding run again, its record cleared: B may have
    failed after the key was completed), later replays one; a read one GET."""
    store: RedisStore = await store_factory("redis")
    await exercise_everything(store, RedisCircuits(store.conn, "unused:"))  # scripts loaded
    commands: list[str] = []
    original = store.client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return await original(*args, **options)

    monkeypatch.setattr(store.client, "execute_command", counting)

    scope, order = "merchant-1", "ORD-2024-001"
    session_id = session_id_for(scope, "hot")
    await store.begin_create(scope, "hot", "fp", token="t", lease_ms=5_000, order_ref=order)
    completion = Completion(scope, "hot", "t", StoredResponse(201, b"{}"), 60, order, 60)
    await store.commit_create(make_session(session_id), completion, ttl_s=60, expires_at=1.0)
    assert commands == ["EVALSHA"] * 4
    await store.begin_create(scope, "hot", "fp", token="t2", lease_ms=5_000, order_ref=order)
    assert commands == ["EVALSHA"] * 6 + ["HDEL"]
    commands.clear()
    await store.begin_create(scope, "hot", "fp", token="t3", lease_ms=5_000, order_ref=order)
    await store.get_session(session_id)
    assert commands == ["EVALSHA", "GET"]
    # without the order guard a create is two scripts, as before
    await store.begin_create(scope, "plain", "fp", token="t", lease_ms=5_000, order_ref=None)
    plain = Completion(scope, "plain", "t", StoredResponse(201, b"{}"), 60)
    await store.commit_create(
        make_session(session_id_for(scope, "plain")), plain, ttl_s=60, expires_at=None
    )
    assert commands == ["EVALSHA", "GET"] + ["EVALSHA"] * 3  # + the index of B


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
    begun = await asyncio.gather(
        *(
            store.begin_create("m", f"k{i}", "fp", token="t", lease_ms=5_000, order_ref=None)
            for i in range(64)
        )
    )
    assert all(b.claim.kind is ClaimKind.CLAIMED for b in begun)


async def test_close_leaves_a_given_conn_open(redis_url: str, redis_prefix: str) -> None:
    conn = StandaloneConn(aioredis.Redis.from_url(redis_url), wait_replicas=0, wait_timeout_ms=1)
    try:
        store = RedisStore(conn, redis_prefix)
        await store.ping()
        await store.close()
        assert await conn.client.ping() is True
    finally:
        await conn.close()


# two OS processes race for one key ---------------------------------------------------------

WORKER = r"""
import asyncio, json, os, sys

from tests.redis_stores import redis_store


async def main(url: str, prefix: str, key: str, count: int) -> None:
    store = redis_store(url, prefix)
    try:
        # open all connections first, so the burst races on Redis, not on connecting
        await asyncio.gather(*(store.ping() for _ in range(count)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        begun = await asyncio.gather(
            *(
                store.begin_create(
                    "race", key, "fp", token=f"{os.getpid()}-{i}", lease_ms=30_000, order_ref=key
                )
                for i in range(count)
            )
        )
        print(json.dumps([[b.claim.kind.value, b.claim.token] for b in begun]), flush=True)
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

    # the winner really holds the key and the order: only its token completes and binds them
    store = redis_store(redis_url, redis_prefix)
    try:
        assert winners[0] is not None

        def completion(token: str) -> Completion:
            response = StoredResponse(201, b"won")
            return Completion("race", "order-42", token, response, 60, "order-42", 60)

        for token, session_id in (("nobody", "s_nobody"), (winners[0], "s_won")):
            won = await store.commit_create(
                make_session(session_id), completion(token), ttl_s=60, expires_at=None
            )
            assert won is (token == winners[0])
        probe = await store.begin_create(
            "race", "probe", "fp", token="p", lease_ms=5_000, order_ref="order-42"
        )
        assert probe.order_holder == "s_won"
    finally:
        await store.close()


async def test_a_pinned_create_costs_one_script_per_step(
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
            order_ref=None,
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
    completion = Completion("m", "pinned", "t2", StoredResponse(201, b"{}"), 60)
    record = make_session(session_id_for("m", "pinned"))
    assert await store.commit_create(record, completion, ttl_s=60, expires_at=None)
    # begin, abandon, begin, then the session (A) and its orderReference index (B)
    assert commands == ["EVALSHA"] * 5
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


@pytest.mark.redis
async def test_redis_outbox_survives_a_new_store_instance(store_factory: object) -> None:
    from tests.conftest import StoreFactory

    assert callable(store_factory)
    make: StoreFactory = store_factory
    first = await make("redis")
    await first.outbox_add([item("durable")], due=1.0)
    await first.close()
    second = await make("redis")
    assert isinstance(second, RedisStore)
    (claimed,) = await second.outbox_claim(now=2.0, lease_s=30, limit=5)
    assert claimed.id == "durable"
