"""Attacks on capture, void and refunds from outside: real `gateway serve` processes sharing one
Redis, the sandbox on its own socket (its webhooks go to the first process), SIGKILL in the
middle of a provider call, racing calls on one session from two processes.

The promise under attack: a retry never makes a second provider capture or refund, never more
is refunded than captured, and every fault ends in a defined answer (never a 500)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import SandboxConfig
from providers.sandbox.stripe_payments import ledger
from tests.api.conftest import headers, seed
from tests.api.test_failover import sandbox_state
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.lifecycle.conftest import pinned_rules
from tests.providers.hosted_inputs import press

#: the provider timeout of the processes: their key leases last 2 * 1 + 1 = 3 s
TIMEOUT_S = 1.0


@dataclass
class Cluster:
    """Two gateway processes on one Redis; the sandbox's webhooks go to ``ports[0]``."""

    sandbox: Any
    ports: list[int]
    procs: list[subprocess.Popen[str]]
    http: aiohttp.ClientSession

    def url(self, index: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[index]}{path}"

    async def call(
        self, index: int, path: str, body: Any = None, *, key: str | None, method: str = "POST"
    ) -> tuple[int, dict[str, Any]]:
        data = b"" if body is None else json.dumps(body).encode()
        async with self.http.request(
            method, self.url(index, path), data=data, headers=headers(key)
        ) as answer:
            raw = await answer.read()
            return answer.status, (json.loads(raw) if raw else {})

    async def faults(self, **faults: Any) -> None:
        async with self.http.post(
            str(self.sandbox.make_url("/sandbox/admin/faults")), json=faults
        ) as answer:
            assert answer.status == 200, await answer.text()

    async def read(self, session_id: str, index: int = 1) -> dict[str, Any]:
        status, view = await self.call(
            index, f"/api/v1/sessions/{session_id}", key=None, method="GET"
        )
        assert status == 200, view
        return view

    async def paid(self, key: str, *, manual: bool) -> str:
        """A stripe session the payer paid on the sandbox page: AUTHORIZED or COMPLETED."""
        body = seed(
            redirectUrls={
                "success": "https://shop.example/ok",
                "failure": "https://shop.example/no",
            },
            orderReference=f"ORD-{key}",
            **({"captureMethod": "manual"} if manual else {}),
        )
        status, created = await self.call(0, "/api/v1/sessions", body, key=key)
        assert status == 201, created
        pressed, _ = await press(created["checkoutUrl"], "pay")
        assert pressed == 303
        wanted = "AUTHORIZED" if manual else "COMPLETED"
        await until(lambda: self._status_is(created["sessionId"], wanted))
        return str(created["sessionId"])

    async def _status_is(self, session_id: str, status: str) -> bool:
        return (await self.read(session_id))["status"] == status


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def make_cluster(
    aiohttp_server: Any,
    redis_url: str,
    redis_prefix: str,
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> Any:
    """``await make_cluster(redis_url=...)``: the two processes (on the test Redis unless
    another URL, such as a proxy's, is given)."""
    async with aiohttp.ClientSession() as http:

        async def factory(*, store_url: str | None = None) -> Cluster:
            ports = [free_port(), free_port()]
            sandbox = await aiohttp_server(
                create_sandbox_root(
                    SandboxConfig(
                        gateway_base_url=f"http://127.0.0.1:{ports[0]}",
                        expiry_sweep_seconds=0,
                        random_seed=7,
                    )
                )
            )
            env = {
                **base_env(sandbox),
                "GATEWAY_STORE": "redis",
                "GATEWAY_REDIS_URL": store_url or redis_url,
                "GATEWAY_REDIS_PREFIX": redis_prefix,
                "GATEWAY_RULES_PATH": str(pinned_rules(tmp_path, "stripe")),
                "GATEWAY_PROVIDER_TIMEOUT_SECONDS": str(TIMEOUT_S),
                "GATEWAY_REQUEST_DEADLINE_SECONDS": "3",
                "GATEWAY_IDEMPOTENCY_LEASE_SECONDS": "5",
            }
            procs = []
            for port in ports:
                proc = start_gateway(port, env, output=tmp_path / f"gateway-{port}.log")
                processes.append(proc)
                procs.append(proc)
            for port, proc in zip(ports, procs, strict=True):
                await wait_ready(port, proc)
            return Cluster(sandbox, ports, procs, http)

        yield factory


@pytest.fixture
async def cluster(make_cluster: ClusterFactory) -> Cluster:
    return await make_cluster()


def stripe_refunds(cluster: Cluster) -> list[dict[str, Any]]:
    return list(ledger(sandbox_state(cluster.sandbox)).refunds.values())


@pytest.mark.redis
@pytest.mark.timeout(40)
async def test_a_refund_whose_process_died_in_the_provider_call_is_made_once(
    cluster: Cluster,
) -> None:
    session_id = await cluster.paid("k-kill", manual=False)
    refunds = f"/api/v1/sessions/{session_id}/refunds"
    # the provider takes its time after claiming the key: the process dies meanwhile
    await cluster.faults(provider="stripe", processingMs=1500)
    first = asyncio.create_task(cluster.call(0, refunds, {"amount": "40.00"}, key="rf-kill"))
    await until(lambda: _sent(cluster), timeout=5)
    cluster.procs[0].kill()
    with pytest.raises(aiohttp.ClientError):
        await first
    await cluster.faults(provider="stripe")
    answers: list[int] = []
    for _ in range(60):  # the dead holder's lease lapses; then the retry takes the key over
        status, body = await cluster.call(1, refunds, {"amount": "40.00"}, key="rf-kill")
        answers.append(status)
        assert status in (201, 409), body
        if status == 201:
            break
        await asyncio.sleep(0.25)
    assert answers[-1] == 201, answers
    assert body["amount"] == "40.00"
    made = stripe_refunds(cluster)
    assert [r["amount"] for r in made] == [4000], made
    # still bounded: 100.76 more is refundable, not a cent above
    view = await cluster.read(session_id)
    assert view["amountRefunded"] == "40.00"
    over, refused = await cluster.call(1, refunds, {"amount": "100.77"}, key="rf-over")
    assert (over, refused["code"]) == (422, "REFUND_AMOUNT_EXCEEDED")
    again, replay = await cluster.call(1, refunds, {"amount": "40.00"}, key="rf-kill")
    assert (again, replay["refundId"]) == (201, body["refundId"])
    assert len(stripe_refunds(cluster)) == 1


async def _sent(cluster: Cluster) -> bool:
    """Whether a Stripe request is in flight at the sandbox (its key claimed, no answer yet)."""
    records = sandbox_state(cluster.sandbox).idempotency.get("stripe", {})
    return any(record.in_flight for record in records.values())


@pytest.mark.redis
@pytest.mark.timeout(40)
async def test_capture_and_void_raced_from_two_processes_move_the_money_one_way(
    cluster: Cluster,
) -> None:
    for round_ in range(3):
        session_id = await cluster.paid(f"k-race-{round_}", manual=True)
        path = f"/api/v1/sessions/{session_id}"
        answers = await asyncio.gather(
            cluster.call(0, f"{path}/capture", key=f"cap-{round_}"),
            cluster.call(
                1,
                f"{path}/cancel",
                {"cancellationReason": "requested_by_customer"},
                key=f"void-{round_}",
            ),
            cluster.call(1, f"{path}/capture", {"amount": "10.00"}, key=f"cap2-{round_}"),
            cluster.call(
                0, f"{path}/cancel", {"cancellationReason": "abandoned"}, key=f"void2-{round_}"
            ),
        )
        statuses = [status for status, _ in answers]
        assert all(s in (200, 409) for s in statuses), answers
        assert statuses.count(200) == 1, answers
        view = await cluster.read(session_id)
        intent = ledger(sandbox_state(cluster.sandbox)).intents[view["paymentId"]]
        expected = {"COMPLETED": "succeeded", "CANCELLED": "canceled"}[view["status"]]
        assert intent["status"] == expected, (view["status"], intent["status"])


@pytest.mark.redis
@pytest.mark.timeout(40)
async def test_one_key_across_capture_refund_cancel_and_sessions(cluster: Cluster) -> None:
    first = await cluster.paid("k-a", manual=True)
    second = await cluster.paid("k-b", manual=True)
    status, captured = await cluster.call(0, f"/api/v1/sessions/{first}/capture", key="same")
    assert status == 200, captured
    # the same key on the same session for another call: a mismatch, nothing moved
    for call, body in (
        ("refunds", {"amount": "1.00"}),
        ("cancel", {"cancellationReason": "requested_by_customer"}),
    ):
        status, refused = await cluster.call(
            1, f"/api/v1/sessions/{first}/{call}", body, key="same"
        )
        assert (status, refused.get("code")) == (422, "IDEMPOTENCY_KEY_MISMATCH"), (call, refused)
    assert ledger(sandbox_state(cluster.sandbox)).refunds == {}
    # the same key on another session is another call: that session is captured once
    status, other = await cluster.call(1, f"/api/v1/sessions/{second}/capture", key="same")
    assert (status, other["sessionId"], other["status"]) == (200, second, "COMPLETED"), other
    status, refund = await cluster.call(
        0, f"/api/v1/sessions/{second}/refunds", {"amount": "1.00"}, key="r"
    )
    assert status == 201, refund
    status, refund2 = await cluster.call(
        1, f"/api/v1/sessions/{first}/refunds", {"amount": "1.00"}, key="r"
    )
    assert status == 201, refund2
    assert refund["refundId"] != refund2["refundId"]
    assert len(ledger(sandbox_state(cluster.sandbox)).refunds) == 2


@pytest.mark.redis
@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", ["capture", "refund"])
async def test_a_provider_slower_than_the_timeout_is_called_once_over_retries(
    cluster: Cluster, kind: str
) -> None:
    session_id = await cluster.paid(f"k-slow-{kind}", manual=kind == "capture")
    path = f"/api/v1/sessions/{session_id}/" + ("capture" if kind == "capture" else "refunds")
    body = None if kind == "capture" else {"amount": "140.76"}
    await cluster.faults(provider="stripe", processingMs=2500)
    status, answer = await cluster.call(0, path, body, key="slow")
    assert (status, answer["code"]) == (504, "PROVIDER_TIMEOUT"), answer
    seen = []
    for attempt in range(40):
        status, answer = await cluster.call(attempt % 2, path, body, key="slow")
        seen.append(status)
        assert status in (200, 201, 409, 504), answer
        if status in (200, 201):
            break
        await asyncio.sleep(0.2)
    assert seen[-1] in (200, 201), seen
    book = ledger(sandbox_state(cluster.sandbox))
    if kind == "refund":
        assert [r["amount"] for r in book.refunds.values()] == [14076]
    else:
        view = await cluster.read(session_id)
        assert (view["status"], view["amountCaptured"]) == ("COMPLETED", "140.76")
        assert book.intents[view["paymentId"]]["amount_received"] == 14076
