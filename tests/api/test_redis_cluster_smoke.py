"""A real ``gateway serve`` on a 3-master Redis Cluster (``GATEWAY_REDIS_MODE=cluster``),
without replicas and with one replica per master (durable settings: writes wait for it).

The whole path of a payment: create, read, the customer pays on the sandbox's hosted page,
the provider's webhook reaches the gateway, the session is COMPLETED and the merchant is
notified; the order search; the idempotency races (one key sent many times at once, one order
under many keys at once) end in one provider session. The keys land on every master, and the
clean-up finds them on every master.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import SandboxConfig
from tests.api.conftest import headers, seed
from tests.api.test_failover import sandbox_state
from tests.api.test_postgres_lifecycle_races import notification_receiver
from tests.gateway_processes import (
    base_env,
    free_port,
    readyz_checks,
    start_gateway,
    wait_ready,
)
from tests.lifecycle.conftest import merchants_file, pinned_rules
from tests.providers.hosted_inputs import press
from tests.redis_cleanup import delete_matching
from tests.redis_servers import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


@dataclass
class ClusterGateway:
    """A gateway process on the cluster, the sandbox it calls, the merchant's receiver."""

    sessions: str
    sandbox: Any
    notified: list[dict[str, Any]]
    prefix: str
    cluster: RedisCluster


def primary_clients(cluster: RedisCluster) -> list[redis.Redis]:
    return [node.server.client() for node in cluster.primaries]


@pytest.fixture(params=["3 masters", "3 masters + replicas"])
def smoke_cluster(request: pytest.FixtureRequest) -> Iterator[tuple[RedisCluster, str]]:
    """The cluster under test (without replicas; with one replica per master, durable: every
    create and lifecycle write waits for a replica) and a key prefix of the test's own,
    deleted on every primary afterwards."""
    fixture = "redis_cluster" if request.param == "3 masters" else "redis_cluster_replicated"
    cluster: RedisCluster = request.getfixturevalue(fixture)
    prefix = f"smoke:{uuid.uuid4().hex}:"
    yield cluster, prefix
    clients = primary_clients(cluster)
    try:
        delete_matching(clients, f"{prefix}*")
    finally:
        for client in clients:
            client.close()


@pytest.fixture
async def cluster_gateway(
    smoke_cluster: tuple[RedisCluster, str],
    aiohttp_server: Any,
    processes: list[Any],
    tmp_path: Path,
) -> ClusterGateway:
    cluster, prefix = smoke_cluster
    notified, receiver = await notification_receiver(aiohttp_server)
    port = free_port()
    # the sandbox's webhooks go straight to the gateway process
    sandbox = await aiohttp_server(
        create_sandbox_root(
            SandboxConfig(
                gateway_base_url=f"http://127.0.0.1:{port}",
                expiry_sweep_seconds=0,
                random_seed=7,
            )
        )
    )
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_MODE": "cluster",
        "GATEWAY_REDIS_URL": cluster.seed_url,
        "GATEWAY_REDIS_PREFIX": prefix,
        "GATEWAY_MERCHANTS_PATH": str(merchants_file(tmp_path, str(receiver.make_url("")))),
        "GATEWAY_RULES_PATH": str(pinned_rules(tmp_path, "stripe")),
        "GATEWAY_NOTIFICATION_POLL_INTERVAL_SECONDS": "0.05",
    }
    processes.append(start_gateway(port, env, output=tmp_path / "gateway.log"))
    await wait_ready(port, processes[-1], timeout=60)
    # with replicas (durable settings) every write waits for one, and nothing is missing
    redis_check = (await readyz_checks(port))["redis"]
    assert (redis_check["mode"], redis_check["waitReplicas"]) == (
        "cluster",
        1 if cluster.replicas else 0,
    ), redis_check
    if cluster.replicas:
        assert "warnings" not in redis_check, redis_check
    return ClusterGateway(
        f"http://127.0.0.1:{port}/api/v1/sessions", sandbox, notified, prefix, cluster
    )


async def until(condition: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def created_at_sandbox(sandbox: Any) -> int:
    return sum(len(sessions) for sessions in sandbox_state(sandbox).sessions.values())


async def test_create_pay_webhook_notification_and_order_search_on_a_cluster(
    cluster_gateway: ClusterGateway,
) -> None:
    gw = cluster_gateway
    async with aiohttp.ClientSession() as http:
        body = seed(orderReference="ORD-CLUSTER-1")
        async with http.post(gw.sessions, json=body, headers=headers("smoke-1")) as made:
            assert made.status == 201, await made.text()
            created = await made.json()
        session_id = created["sessionId"]
        async with http.get(f"{gw.sessions}/{session_id}", headers=headers(None)) as read:
            assert read.status == 200
            view = await read.json()
        assert {name: view.get(name) for name in created} == created

        assert (await press(created["checkoutUrl"], "pay"))[0] == 303

        async def completed() -> bool:
            async with http.get(f"{gw.sessions}/{session_id}", headers=headers(None)) as read:
                return bool((await read.json())["status"] == "COMPLETED")

        await until(completed)

        async def notified() -> bool:
            return any(
                n["sessionId"] == session_id and n["status"] == "COMPLETED" for n in gw.notified
            )

        await until(notified)

        async with http.get(
            gw.sessions, params={"orderReference": "ORD-CLUSTER-1"}, headers=headers(None)
        ) as found:
            assert found.status == 200, await found.text()
            page = await found.json()
        assert [v["sessionId"] for v in page["data"]] == [session_id]
        assert page["data"][0]["status"] == "COMPLETED"

        # more sessions: their records spread over the cluster's slots
        for i in range(30):
            body = seed(orderReference=f"ORD-CLUSTER-SPREAD-{i}")
            async with http.post(gw.sessions, json=body, headers=headers(f"spread-{i}")) as made:
                assert made.status == 201, await made.text()
    per_master = {}
    for node in gw.cluster.primaries:
        with node.server.client() as client:
            per_master[node.port] = sum(1 for _ in client.scan_iter(match=f"{gw.prefix}*"))
    print(f"\nkeys per master after 31 sessions: {per_master}")
    assert all(count > 0 for count in per_master.values()), per_master


async def test_idempotency_races_on_a_cluster_make_one_provider_session(
    cluster_gateway: ClusterGateway,
) -> None:
    gw = cluster_gateway
    async with aiohttp.ClientSession() as http:
        for provider in ("stripe", "adyen", "paypal"):  # creates overlap at the provider
            await http.post(
                str(gw.sandbox.make_url("/sandbox/admin/faults")),
                json={"provider": provider, "latencyMs": 200},
            )

        async def create(key: str, order: str) -> tuple[int, dict[str, Any]]:
            body = seed(orderReference=order)
            async with http.post(gw.sessions, json=body, headers=headers(key)) as answer:
                return answer.status, json.loads(await answer.read())

        # one key, twenty times at once
        answers = await asyncio.gather(*(create("race-key", "ORD-RACE-KEY") for _ in range(20)))
        statuses = [status for status, _ in answers]
        assert set(statuses) <= {201, 409}, answers
        ids = {body["sessionId"] for status, body in answers if status == 201}
        assert len(ids) == 1, answers
        assert created_at_sandbox(gw.sandbox) == 1
        # once settled, the key replays its one session
        status, body = await create("race-key", "ORD-RACE-KEY")
        assert (status, body["sessionId"]) == (201, ids.pop())

        # one order, twenty keys at once
        answers = await asyncio.gather(
            *(create(f"order-race-{i}", "ORD-RACE-ORDER") for i in range(20))
        )
        assert sorted(status for status, _ in answers) == [201] + [409] * 19, answers
        assert created_at_sandbox(gw.sandbox) == 2
        async with http.get(
            gw.sessions, params={"orderReference": "ORD-RACE-ORDER"}, headers=headers(None)
        ) as found:
            assert len((await found.json())["data"]) == 1


def test_clean_up_finds_and_deletes_keys_on_every_master(redis_cluster: RedisCluster) -> None:
    prefix = f"cleanup:{uuid.uuid4().hex}:"
    other = f"cleanup:{uuid.uuid4().hex}:"
    with redis.RedisCluster.from_url(redis_cluster.seed_url) as cluster:
        for i in range(300):  # untagged keys: spread over every slot range
            cluster.set(f"{prefix}{i}", "x")
        cluster.set(f"{other}kept", "x")
    clients = primary_clients(redis_cluster)
    try:
        held = [sum(1 for _ in c.scan_iter(match=f"{prefix}*")) for c in clients]
        assert all(n > 0 for n in held), held
        assert sum(held) == 300
        assert delete_matching(clients, f"{prefix}*") == 300
        assert [sum(1 for _ in c.scan_iter(match=f"{prefix}*")) for c in clients] == [0, 0, 0]
        assert sum(1 for c in clients for _ in c.scan_iter(match=f"{other}*")) == 1
        delete_matching(clients, f"{other}*")
    finally:
        for client in clients:
            client.close()
