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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import SandboxConfig
from providers.sandbox.stripe_payments import ledger
from tests.api.conftest import headers, seed
from tests.api.test_failover import sandbox_state
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.lifecycle.conftest import pinned_rules
from tests.lifecycle.test_loop import PROVIDERS
from tests.providers.hosted_inputs import press
from tests.tcp_proxy import TcpProxy

#: the provider timeout of the processes: their key leases last 2 * 1 + 1 = 3 s
TIMEOUT_S = 1.0


@dataclass
class Cluster:
    """Two gateway processes on one Redis; the sandbox's webhooks go to ``ports[0]``."""

    sandbox: Any
    ports: list[int]
    procs: list[subprocess.Popen[str]]
    http: aiohttp.ClientSession
    #: the provider every session is pinned to
    provider: str = "stripe"
    #: the headers of the last answer :meth:`call` read
    last_headers: dict[str, str] = field(default_factory=dict)

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
            self.last_headers = dict(answer.headers)
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

    async def paid(self, key: str, *, manual: bool, **extra: Any) -> str:
        """A stripe session the payer paid on the sandbox page: AUTHORIZED or COMPLETED."""
        body = seed(
            redirectUrls={
                "success": "https://shop.example/ok",
                "failure": "https://shop.example/no",
            },
            orderReference=f"ORD-{key}",
            **({"captureMethod": "manual"} if manual else {}),
            **PROVIDERS[self.provider],
            **extra,
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

        async def factory(
            *,
            store_url: str | None = None,
            store: dict[str, str] | None = None,
            provider: str = "stripe",
        ) -> Cluster:
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
                **(store or {}),
                "GATEWAY_RULES_PATH": str(pinned_rules(tmp_path, provider)),
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
            return Cluster(sandbox, ports, procs, http, provider=provider)

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
    records = sandbox_state(cluster.sandbox).idempotency.get(cluster.provider, {})
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
    assert int(cluster.last_headers["Retry-After"]) >= 1
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


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("store_kind", "kind"),
    [  # each call on one store, each store once: the two paths are the same code per store
        pytest.param("redis", "capture", marks=pytest.mark.redis),
        pytest.param("postgres", "refund", marks=pytest.mark.postgres),
    ],
)
async def test_a_store_outage_after_the_provider_call_answers_503_then_the_retry_once(
    make_cluster: ClusterFactory, request: pytest.FixtureRequest, kind: str, store_kind: str
) -> None:
    if store_kind == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("postgres_database")
    target = urlsplit(url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 0)
    await proxy.start()
    proxied = urlunsplit(
        target._replace(
            netloc=target.netloc.replace(
                f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}"
            )
        )
    )
    store = (
        {"GATEWAY_STORE": "redis", "GATEWAY_REDIS_URL": proxied}
        if store_kind == "redis"
        else {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": proxied}
    )
    try:
        cluster = await make_cluster(store=store)
        session_id = await cluster.paid(f"k-out-{kind}", manual=kind == "capture")
        path = f"/api/v1/sessions/{session_id}/" + ("capture" if kind == "capture" else "refunds")
        body = None if kind == "capture" else {"amount": "40.00"}
        await cluster.faults(provider="stripe", processingMs=500)
        first = asyncio.create_task(cluster.call(0, path, body, key="out"))
        await until(lambda: _sent(cluster), timeout=5)
        await proxy.stop()  # the provider acts; the gateway cannot record it
        status, answer = await first
        assert status == 503, answer
        assert int(cluster.last_headers["Retry-After"]) >= 1
        await proxy.start()
        await cluster.faults(provider="stripe")
        seen = []
        for attempt in range(60):
            status, answer = await cluster.call(attempt % 2, path, body, key="out")
            seen.append(status)
            assert status in (200, 201, 409, 503), answer
            if status in (200, 201):
                break
            await asyncio.sleep(0.2)
        assert seen[-1] in (200, 201), seen
        book = ledger(sandbox_state(cluster.sandbox))
        view = await cluster.read(session_id)
        if kind == "refund":
            assert [r["amount"] for r in book.refunds.values()] == [4000]
            assert view["amountRefunded"] == "40.00"
        else:
            assert (view["status"], view["amountCaptured"]) == ("COMPLETED", "140.76")
    finally:
        await proxy.stop()


def series_body(mandate_id: str, order: str, **changes: Any) -> dict[str, Any]:
    body = seed(
        sessionType="next_in_series", mandateSessionId=mandate_id, orderReference=order, **changes
    )
    del body["redirectUrls"]
    return body


@pytest.mark.redis
@pytest.mark.timeout(40)
async def test_racing_next_payments_on_one_order_charge_once(cluster: Cluster) -> None:
    mandate = await cluster.paid("k-mandate", manual=False, sessionType="first_in_series")
    before = set(ledger(sandbox_state(cluster.sandbox)).intents)
    body = series_body(mandate, "ORD-NEXT")
    answers = await asyncio.gather(
        *(cluster.call(i % 2, "/api/v1/sessions", body, key=f"next-{i}") for i in range(20))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses.count(201) == 1, answers
    assert set(statuses) <= {201, 409}, answers
    made = set(ledger(sandbox_state(cluster.sandbox)).intents) - before
    assert len(made) == 1, made
    created = next(view for status, view in answers if status == 201)
    assert created["status"] == "COMPLETED"
    # its retry with any of the losing keys still charges nothing more
    again = await asyncio.gather(
        *(cluster.call(i % 2, "/api/v1/sessions", body, key=f"next-{i}") for i in range(20))
    )
    assert sum(1 for status, _ in again if status == 201) == 1, again
    assert set(ledger(sandbox_state(cluster.sandbox)).intents) - before == made


@pytest.mark.redis
@pytest.mark.timeout(40)
async def test_a_next_payment_refuses_unusable_mandates(cluster: Cluster) -> None:
    mandate = await cluster.paid("k-m2", manual=False, sessionType="first_in_series")
    one_time = await cluster.paid("k-one", manual=False)
    before = len(ledger(sandbox_state(cluster.sandbox)).intents)
    # a FAILED mandate: the payer declined on the page
    status, declined = await cluster.call(
        0,
        "/api/v1/sessions",
        seed(
            sessionType="first_in_series",
            orderReference="ORD-DECL",
            redirectUrls={
                "success": "https://shop.example/ok",
                "failure": "https://shop.example/no",
            },
        ),
        key="k-decl",
    )
    assert status == 201, declined
    pressed, _ = await press(declined["checkoutUrl"], "decline")
    assert pressed == 303
    await until(lambda: cluster._status_is(declined["sessionId"], "FAILED"))
    for mandate_id, wanted in (
        (declined["sessionId"], (422, "MANDATE_NOT_USABLE")),
        (one_time, (422, "MANDATE_NOT_USABLE")),
        ("00000000-0000-4000-8000-000000000000", (404, None)),
    ):
        status, refused = await cluster.call(
            1,
            "/api/v1/sessions",
            series_body(mandate_id, f"ORD-{mandate_id}"),
            key=f"n-{mandate_id}",
        )
        assert (status, refused.get("code") if wanted[1] else None) == wanted, refused
    # another merchant's mandate reads as unknown
    async with cluster.http.post(
        cluster.url(1, "/api/v1/sessions"),
        data=json.dumps(series_body(mandate, "ORD-OTHER")).encode(),
        headers=headers("n-other", merchant="merchant-2"),
    ) as answer:
        assert answer.status == 404, await answer.text()
    assert len(ledger(sandbox_state(cluster.sandbox)).intents) == before


@pytest.mark.redis
@pytest.mark.timeout(40)
async def test_hostile_amounts_on_capture_and_refund_are_refused_plainly(cluster: Cluster) -> None:
    session_id = await cluster.paid("k-amounts", manual=True)
    capture = f"/api/v1/sessions/{session_id}/capture"
    refunds = f"/api/v1/sessions/{session_id}/refunds"
    hostile: list[Any] = [
        "-0",
        "0",
        "0.00",
        "-1",
        "0.001",
        "1e-3",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "9" * 400,
        "1E+999999999",
        True,
        [],
        {},
        "",
        " 1",
        "1,00",
        "0x10",
        "\u0661\u0660",  # Arabic-Indic digits
        "1_0",
        "+1",
        ".5e1",
        "140.761",
        "140.77",
        "1e3",
    ]
    seen = []
    for n, amount in enumerate(hostile):
        for path in (capture, refunds):
            status, body = await cluster.call(
                n % 2, path, {"amount": amount}, key=f"h-{n}-{path[-3:]}"
            )
            seen.append((amount, path[-7:], status, body.get("code")))
            assert status in (400, 409, 422), (amount, path, status, body)
            assert body.get("requestId"), body
    # a name given twice: parsers disagree on which amount is meant (first or last wins)
    for n, (path, raw) in enumerate(
        [
            (capture, b'{"amount": "1.00", "amount": "100.00"}'),
            (refunds, b'{"amount": "1.00", "amount": "2.00"}'),
            (refunds, b'{"amount": "1.00", "reason": "duplicate", "reason": "fraudulent"}'),
        ]
    ):
        async with cluster.http.post(
            cluster.url(n % 2, path), data=raw, headers=headers(f"dup-{n}")
        ) as answer:
            refused = await answer.json()
            assert answer.status == 400, refused
            assert "duplicate key" in refused["message"][0], refused
    # the session was never captured by any of them
    view = await cluster.read(session_id)
    assert (view["status"], view["amountCaptured"]) == ("AUTHORIZED", "0.00"), seen
    # "1e2" is 100.00: a partial capture of exactly that
    status, captured = await cluster.call(0, capture, {"amount": "1e2"}, key="ok")
    assert (status, captured["amountCaptured"]) == (200, "100.00"), captured
    status, replay = await cluster.call(1, capture, {"amount": "100.0"}, key="ok")
    assert (status, replay) == (200, captured)
    status, refund = await cluster.call(1, refunds, {"amount": "1E+2"}, key="r-ok")
    assert (status, refund["amount"]) == (201, "100.00"), refund
    status, over = await cluster.call(0, refunds, {"amount": "0.01"}, key="r-over")
    assert (status, over["code"]) == (422, "REFUND_AMOUNT_EXCEEDED"), over


@pytest.mark.redis
@pytest.mark.timeout(40)
@pytest.mark.parametrize("provider", ["stripe", "adyen", "paypal"])
async def test_a_next_payment_whose_process_died_mid_charge_is_not_charged_again_by_another_key(
    make_cluster: ClusterFactory, provider: str
) -> None:
    cluster = await make_cluster(provider=provider)
    mandate = await cluster.paid("k-m3", manual=False, sessionType="first_in_series")
    book = ledger(sandbox_state(cluster.sandbox))
    before = set(book.intents)
    body = series_body(mandate, "ORD-DIED", **PROVIDERS[provider])
    await cluster.faults(provider=provider, processingMs=1500)
    first = asyncio.create_task(cluster.call(0, "/api/v1/sessions", body, key="next-died"))
    await until(lambda: _sent(cluster), timeout=5)
    cluster.procs[0].kill()
    with pytest.raises(aiohttp.ClientError):
        await first
    await until(lambda: _settled(cluster), timeout=5)  # the provider charged the order
    await cluster.faults(provider=provider)
    charged = set(book.intents) - before
    # past every lease of the dead process, another key for the same order: the provider
    # refuses its key (the dead create's) with another body, and charges nothing
    await asyncio.sleep(5.5)
    status, answer = await cluster.call(1, "/api/v1/sessions", body, key="next-other")
    assert set(book.intents) - before == charged, "the order was charged twice"
    assert (status, answer.get("code")) == (409, "PROVIDER_KEY_CONFLICT"), answer
    # the dead request's own retry finds its charge at the provider (replayed, not repeated)
    status, answer = await cluster.call(1, "/api/v1/sessions", body, key="next-died")
    assert (status, answer["status"]) == (201, "COMPLETED"), answer
    assert set(book.intents) - before == charged
    # and the order is paid: any other key answers 409 with the paid session
    status, answer = await cluster.call(1, "/api/v1/sessions", body, key="next-third")
    assert status == 409, answer


async def _settled(cluster: Cluster) -> bool:
    records = sandbox_state(cluster.sandbox).idempotency.get(cluster.provider, {})
    return bool(records) and not any(record.in_flight for record in records.values())


@pytest.mark.redis
@pytest.mark.timeout(40)
async def test_scopes_and_merchants_guard_capture_void_and_refunds(cluster: Cluster) -> None:
    session_id = await cluster.paid("k-scopes", manual=True)
    base = f"/api/v1/sessions/{session_id}"
    calls = [
        ("POST", "capture", None, ["refunds:write", "sessions:read"]),
        ("POST", "cancel", {"cancellationReason": "abandoned"}, ["refunds:write", "sessions:read"]),
        ("POST", "refunds", {"amount": "1.00"}, ["sessions:write", "sessions:read"]),
        ("GET", "refunds", None, ["sessions:write", "refunds:write"]),
    ]
    for n, (method, path, body, scopes) in enumerate(calls):
        data = b"" if body is None else json.dumps(body).encode()
        async with cluster.http.request(
            method,
            cluster.url(n % 2, f"{base}/{path}"),
            data=data,
            headers=headers(f"s-{n}", scopes=scopes),
        ) as answer:
            assert answer.status == 403, (path, await answer.text())
        # another merchant with every scope: the session does not exist for it
        async with cluster.http.request(
            method,
            cluster.url(n % 2, f"{base}/{path}"),
            data=data,
            headers=headers(f"m-{n}", merchant="merchant-2"),
        ) as answer:
            assert answer.status == 404, (path, await answer.text())
    view = await cluster.read(session_id)
    assert (view["status"], view["amountCaptured"]) == ("AUTHORIZED", "0.00")
    assert ledger(sandbox_state(cluster.sandbox)).refunds == {}


@pytest.mark.redis
@pytest.mark.timeout(60)
async def test_racing_refunds_through_provider_errors_never_refund_more_than_captured(
    cluster: Cluster,
) -> None:
    session_id = await cluster.paid("k-flaky", manual=False)
    refunds = f"/api/v1/sessions/{session_id}/refunds"
    await cluster.faults(provider="stripe", errorRate=0.3)
    keys = [f"flaky-{n}" for n in range(24)]
    final: dict[str, int] = {}

    async def settle(n: int, key: str) -> None:
        for attempt in range(40):
            status, body = await cluster.call(
                (n + attempt) % 2, refunds, {"amount": "10.00"}, key=key
            )
            assert status in (201, 409, 422, 502, 503, 504), body
            if status in (201, 422):
                final[key] = status
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{key} never settled")

    await asyncio.gather(*(settle(n, key) for n, key in enumerate(keys)))
    made = stripe_refunds(cluster)
    granted = [key for key, status in final.items() if status == 201]
    assert len(granted) == 14, final  # 14 x 10.00 <= 140.76 < 15 x 10.00
    assert sum(int(r["amount"]) for r in made) == 14 * 1000, made
    status, listed = await cluster.call(1, refunds, key=None, method="GET")
    assert status == 200
    held = [r for r in listed["data"] if r["status"] != "FAILED"]
    assert len(held) == 14, listed
    view = await cluster.read(session_id)
    assert view["amountRefunded"] == "140.00"


@pytest.mark.redis
@pytest.mark.timeout(40)
async def test_a_capture_whose_process_died_in_the_provider_call_is_made_once(
    cluster: Cluster,
) -> None:
    session_id = await cluster.paid("k-kill-cap", manual=True)
    path = f"/api/v1/sessions/{session_id}"
    await cluster.faults(provider="stripe", processingMs=1500)
    first = asyncio.create_task(cluster.call(0, f"{path}/capture", {"amount": "100.00"}, key="c"))
    await until(lambda: _sent(cluster), timeout=5)
    cluster.procs[0].kill()
    with pytest.raises(aiohttp.ClientError):
        await first
    await cluster.faults(provider="stripe")
    # meanwhile neither another capture nor a void may reach the provider
    status, body = await cluster.call(1, f"{path}/capture", key="c-other")
    assert status == 409, body
    status, body = await cluster.call(
        1, f"{path}/cancel", {"cancellationReason": "abandoned"}, key="v"
    )
    assert status == 409, body
    seen = []
    for _ in range(60):  # the dead holder's lease lapses; the retry re-sends the same call
        status, body = await cluster.call(1, f"{path}/capture", {"amount": "100.00"}, key="c")
        seen.append(status)
        assert status in (200, 409), body
        if status == 200:
            break
        await asyncio.sleep(0.25)
    assert seen[-1] == 200, seen
    assert (body["status"], body["amountCaptured"]) == ("COMPLETED", "100.00")
    intent = ledger(sandbox_state(cluster.sandbox)).intents[body["paymentId"]]
    assert (intent["status"], intent["amount_received"]) == ("succeeded", 10000)
