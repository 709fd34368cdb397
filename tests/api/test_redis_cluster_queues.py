"""The queues of a Redis Cluster deployment with two ``gateway serve`` processes sharing it:
sessions in all 16 buckets expire (both processes' sweeps find every bucket), and the merchant
is notified of each (every bucket's outbox drained, nothing left due, leased or dead)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.domain.session import utcnow
from gateway.settings import Settings
from gateway.store.keys import QUEUE_BUCKETS, bucket
from gateway.store.redis import RedisStore
from gateway.store.redis_client import RedisClientSettings, open_redis
from tests.api.conftest import headers, seed
from tests.api.test_failover import card_order
from tests.api.test_postgres_lifecycle_races import notification_receiver
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.lifecycle.conftest import merchants_file
from tests.redis_servers import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


async def backdate(store: RedisStore, session_id: str) -> None:
    """Move the session's expiry into the past, so a sweep finds it due."""
    record = await store.get_session(session_id)
    assert record is not None
    past = utcnow() - timedelta(seconds=1)
    moved = record.model_copy(update={"expiresAt": past, "version": record.version + 1})
    assert await store.update_session(moved, expected_version=record.version)
    await store.schedule_expiry(session_id, past.timestamp())


async def two_gateways(env: dict[str, str], processes: list[Any], tmp_path: Path) -> list[str]:
    """Two ``gateway serve`` processes on ``env`` (kept in ``processes``); their base URLs."""
    bases = []
    for _ in range(2):
        port = free_port()
        processes.append(start_gateway(port, env, output=tmp_path / f"gateway-{port}.log"))
        await wait_ready(port, processes[-1], timeout=60)
        bases.append(f"http://127.0.0.1:{port}")
    return bases


async def cluster_store(seed_url: str, prefix: str) -> RedisStore:
    """A started store on the cluster under ``prefix``, to look at what the gateways wrote."""
    conn = open_redis(
        Settings(redis_mode="cluster", redis_url=seed_url),  # type: ignore[call-arg]
        RedisClientSettings(),
    )
    await conn.start()
    return RedisStore(conn, prefix, owns_conn=True)


async def test_two_gateways_expire_and_notify_sessions_of_every_bucket(
    redis_cluster: RedisCluster,
    sandbox: Any,
    aiohttp_server: Any,
    processes: list[Any],
    tmp_path: Path,
) -> None:
    prefix = f"queues:{uuid.uuid4().hex[:8]}:"
    notified, receiver = await notification_receiver(aiohttp_server)
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_MODE": "cluster",
        "GATEWAY_REDIS_URL": redis_cluster.seed_url,
        "GATEWAY_REDIS_PREFIX": prefix,
        "GATEWAY_MERCHANTS_PATH": str(merchants_file(tmp_path, str(receiver.make_url("")))),
        "GATEWAY_EXPIRY_SWEEP_INTERVAL_SECONDS": "0.2",
        "GATEWAY_NOTIFICATION_POLL_INTERVAL_SECONDS": "0.1",
    }
    bases = await two_gateways(env, processes, tmp_path)
    store = await cluster_store(redis_cluster.seed_url, prefix)
    try:
        ids: list[str] = []
        async with aiohttp.ClientSession() as http:
            i = 0
            while len({bucket(s) for s in ids}) < QUEUE_BUCKETS or len(ids) < 48:
                base = bases[i % 2]
                body = seed(orderReference=f"ORD-Q-{i}")
                async with http.post(
                    f"{base}/api/v1/sessions", json=body, headers=headers(f"q-{i}")
                ) as made:
                    assert made.status == 201, await made.text()
                    ids.append((await made.json())["sessionId"])
                i += 1
        for session_id in ids:
            await backdate(store, session_id)

        deadline = asyncio.get_running_loop().time() + 30
        while True:
            expired = {n["sessionId"] for n in notified if n["status"] == "EXPIRED"}
            if expired >= set(ids) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        missing = set(ids) - expired
        pairs = Counter((n["sessionId"], n["status"]) for n in notified)
        duplicates = sum(count - 1 for count in pairs.values())
        print(
            f"\n{len(ids)} sessions in {len({bucket(s) for s in ids})} buckets; "
            f"{len(notified)} notifications "
            f"{Counter(n['status'] for n in notified)}, duplicates "
            f"{duplicates}"
            "; buckets missing: "
            f"{sorted(Counter(bucket(s) for s in missing).items())}"
        )
        assert not missing, sorted(Counter(bucket(s) for s in missing).items())
        for session_id in ids:
            record = await store.get_session(session_id)
            assert record is not None
            assert record.status.value == "EXPIRED"
        await asyncio.sleep(1)
        left = {}
        for n in range(QUEUE_BUCKETS):
            keys = store.keys
            left[n] = (
                await store.client.zcard(keys.expiry_index(n)),
                await store.client.zcard(keys.outbox_due(n)),
                await store.client.hlen(keys.outbox_items(n)),
                await store.client.zcard(keys.outbox_dead(n)),
            )
        assert all(counts == (0, 0, 0, 0) for counts in left.values()), left
    finally:
        await store.close()


async def test_two_gateways_expire_the_orphans_of_every_bucket(
    redis_cluster: RedisCluster, sandbox: Any, processes: list[Any], tmp_path: Path
) -> None:
    """Stripe times out (it creates each session 1.5 s late), Adyen creates it: each create
    leaves a Stripe orphan whose job sits in its session's bucket; the two processes' workers
    find the jobs of every bucket, expire every orphan and leave no job behind."""
    prefix = f"orphans:{uuid.uuid4().hex[:8]}:"
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_MODE": "cluster",
        "GATEWAY_REDIS_URL": redis_cluster.seed_url,
        "GATEWAY_REDIS_PREFIX": prefix,
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "0.5",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "4",
    }
    bases = await two_gateways(env, processes, tmp_path)
    store = await cluster_store(redis_cluster.seed_url, prefix)
    try:
        async with aiohttp.ClientSession() as http:
            admin = str(sandbox.make_url("/sandbox/admin/faults"))
            await http.post(admin, json={"provider": "stripe", "processingMs": 1500})

            async def create(i: int) -> str | None:
                body = card_order(f"ORD-ORPHAN-{i}")
                async with http.post(
                    f"{bases[i % 2]}/api/v1/sessions", json=body, headers=headers(f"orph-{i}")
                ) as made:
                    assert made.status == 201, await made.text()
                    created = await made.json()
                outcomes = [a["outcome"] for a in created["routing"]["attempts"]]
                # the routing statistics soon send creates straight to Adyen: no orphan
                if outcomes != ["timeout", "created"]:
                    return None
                return str(created["sessionId"])

            made = await asyncio.gather(*(create(i) for i in range(32)))
        ids = [session_id for session_id in made if session_id is not None]
        assert len(ids) >= 8, len(ids)
        covered = {bucket(s) for s in ids}
        deadline = asyncio.get_running_loop().time() + 45
        while True:
            statuses = Counter()
            for session_id in ids:
                record = await store.get_session(session_id)
                assert record is not None
                statuses.update(o.status for o in record.orphans)
            if statuses == Counter({"expired": len(ids)}):
                break
            assert asyncio.get_running_loop().time() < deadline, statuses
            await asyncio.sleep(0.5)
        print(f"\n{len(ids)} orphans in {len(covered)} buckets, all expired")
        left = [await store.client.hlen(store.keys.orphans_items(n)) for n in range(QUEUE_BUCKETS)]
        assert left == [0] * QUEUE_BUCKETS, left
    finally:
        await store.close()
