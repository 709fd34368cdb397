"""A session's lifecycle raced through two real `gateway serve` processes on PostgreSQL.

A provider's payment webhook (delivered to both processes, as a provider's retries may land),
two merchant cancels and the expiry sweepers of both processes all hit one session at once.
The promise: one final state (money overrides a cancel or an expiry, so it ends COMPLETED),
every transition recorded once under the version compare-and-set, and one notification per
transition."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from gateway.domain.session import utcnow
from gateway.store.postgres import PostgresStore
from providers.sandbox.app import create_sandbox_root
from providers.sandbox.paypal_api import paypal_sandbox
from providers.sandbox.state import SANDBOX_STATE, SandboxConfig
from tests.api.conftest import headers, seed
from tests.api.test_postgres_attacks import serve, through, two_gateways
from tests.fault_proxy import FaultProxy
from tests.lifecycle.conftest import merchants_file, pinned_rules
from tests.postgres_support import outbox_drained, wait_for
from tests.providers.hosted_inputs import Received, press, start_sink

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

SESSIONS = 4


async def notification_receiver(aiohttp_server: Any) -> tuple[list[dict[str, Any]], Any]:
    """A merchant webhook endpoint at ``/hooks``: the sessions it was notified of, and it."""
    notified: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        notified.append(json.loads(await request.read())["data"]["payment_session"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    return notified, await aiohttp_server(app)


async def sandbox_behind(aiohttp_server: Any, sink: Any) -> Any:
    """The sandbox providers, their webhooks caught by ``sink`` (the test delivers them)."""
    return await aiohttp_server(
        create_sandbox_root(
            SandboxConfig(gateway_base_url=sink.base_url, expiry_sweep_seconds=0, random_seed=7)
        )
    )


async def backdate(store: PostgresStore, session_id: str) -> None:
    """Move the session's expiry into the past, so both sweepers find it due."""
    record = await store.get_session(session_id)
    assert record is not None
    past = utcnow() - timedelta(seconds=1)
    moved = record.model_copy(update={"expiresAt": past, "version": record.version + 1})
    if await store.update_session(moved, expected_version=record.version):
        await store.schedule_expiry(session_id, past.timestamp())


async def deliver(http: aiohttp.ClientSession, sessions: str, call: Received) -> int:
    """Deliver the provider's webhook ``call`` to the gateway at ``sessions`` and resend it on
    503, as a provider does; the final status."""
    webhook = sessions.replace("/sessions", f"/webhooks/{call.provider}")
    hop = {"host", "content-length", "transfer-encoding", "connection"}
    clean = {k: v for k, v in call.headers.items() if k.lower() not in hop}
    for _ in range(200):
        async with http.post(webhook, data=call.body, headers=clean) as answer:
            if answer.status != 503:
                return answer.status
        await asyncio.sleep(0.05)
    raise AssertionError("the webhook was answered 503 for 10 s")


@pytest.mark.parametrize("provider", ["adyen", "stripe"])
async def test_payment_cancels_and_two_sweepers_on_one_session_end_in_one_paid_state(
    aiohttp_server: Any,
    postgres_database: str,
    processes: list[Any],
    tmp_path: Path,
    provider: str,
) -> None:
    notified, receiver = await notification_receiver(aiohttp_server)
    sink = await start_sink(aiohttp_server)
    sandbox = await sandbox_behind(aiohttp_server, sink)
    gateways = await two_gateways(
        sandbox,
        postgres_database,
        processes,
        GATEWAY_MERCHANTS_PATH=str(merchants_file(tmp_path, str(receiver.make_url("")))),
        GATEWAY_RULES_PATH=str(pinned_rules(tmp_path, provider)),
        GATEWAY_EXPIRY_SWEEP_INTERVAL_SECONDS="0.02",
        GATEWAY_NOTIFICATION_POLL_INTERVAL_SECONDS="0.02",
    )
    store = PostgresStore(postgres_database)
    views: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as http:
        paid: list[tuple[str, Received]] = []
        for i in range(SESSIONS):
            body = seed(orderReference=f"race-{i}")
            async with http.post(gateways[0], json=body, headers=headers(f"race-{i}")) as made:
                assert made.status == 201, await made.text()
                created = await made.json()
            assert (await press(created["checkoutUrl"], "pay"))[0] == 303
            paid.append((created["sessionId"], sink.calls[-1]))

        async def cancel(to: str, session_id: str) -> int:
            async with http.post(
                f"{to}/{session_id}/cancel",
                json={"cancellationReason": "abandoned"},
                headers=headers(None),
            ) as answer:
                assert answer.status in (200, 409), await answer.text()
                return answer.status

        cancelled: dict[str, int] = {}

        async def race(session_id: str, call: Received) -> None:
            answers = await asyncio.gather(
                backdate(store, session_id),
                deliver(http, gateways[0], call),
                cancel(gateways[1], session_id),
                deliver(http, gateways[1], call),
                cancel(gateways[0], session_id),
            )
            assert answers[1] == answers[3] == 200
            cancelled[session_id] = [answers[2], answers[4]].count(200)

        try:
            await asyncio.gather(*(race(session_id, call) for session_id, call in paid))
            for session_id, _ in paid:

                async def completed(session_id: str = session_id) -> dict[str, Any] | None:
                    url = f"{gateways[1]}/{session_id}"
                    async with http.get(url, headers=headers(None)) as read:
                        view: dict[str, Any] = await read.json()
                    return view if view["status"] == "COMPLETED" else None

                view = views[session_id] = await wait_for(completed)
                statuses = [t["status"] for t in view["transitions"]]
                # money overrides a cancel or an expiry: at most one of them, then the payment
                assert statuses[0] == "PENDING", statuses
                assert statuses[-1] == "COMPLETED", statuses
                assert len(statuses) <= 3, statuses
                assert set(statuses[1:-1]) <= {"CANCELLED", "EXPIRED"}, statuses
                assert cancelled[session_id] == statuses.count("CANCELLED"), statuses
        finally:
            await store.close()
    await outbox_drained(postgres_database)
    for session_id, _ in paid:
        sent = [n for n in notified if n["sessionId"] == session_id]
        versions = [n["version"] for n in sent]
        assert len(versions) == len(set(versions)), sent  # one notification per transition
        transitions = [t["status"] for t in views[session_id]["transitions"]]
        assert sorted(n["status"] for n in sent) == sorted(transitions), (transitions, sent)
        assert max(sent, key=lambda n: n["version"])["status"] == "COMPLETED", sent


@pytest.fixture
async def proxy(postgres_database: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(postgres_database)
    faults = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await faults.start()
    yield faults
    await faults.close()


@pytest.mark.parametrize("lost", ["claim", "update"])
async def test_a_webhook_whose_claim_or_update_reply_is_lost_applies_once_on_the_provider_s_resend(
    lost: str,
    aiohttp_server: Any,
    postgres_database: str,
    proxy: FaultProxy,
    processes: list[Any],
    tmp_path: Path,
) -> None:
    """A lost claim reply leaves the event leased (twice the request deadline): the provider's
    resends are answered 503 until it lapses, then applied; a lost update reply is answered 503
    and the resend finds the payment recorded. Either way: once, one notification."""
    notified, receiver = await notification_receiver(aiohttp_server)
    sink = await start_sink(aiohttp_server)
    sandbox = await sandbox_behind(aiohttp_server, sink)
    sessions = await serve(
        sandbox,
        through(proxy, postgres_database),
        processes,
        GATEWAY_MERCHANTS_PATH=str(merchants_file(tmp_path, str(receiver.make_url("")))),
        GATEWAY_NOTIFICATION_POLL_INTERVAL_SECONDS="0.02",
        GATEWAY_RULES_PATH=str(pinned_rules(tmp_path, "stripe")),
        GATEWAY_PROVIDER_TIMEOUT_SECONDS="2",
        GATEWAY_REQUEST_DEADLINE_SECONDS="3",  # an event's processing lease: twice that
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(sessions, json=seed(), headers=headers("lost-update")) as made:
            assert made.status == 201, await made.text()
            created = await made.json()
        session_id = created["sessionId"]
        assert (await press(created["checkoutUrl"], "pay"))[0] == 303
        assert sink.calls
        # the compare-and-set that records the payment runs, and its reply is lost
        first = json.loads(sink.calls[0].body)["id"].encode()
        proxy.cut_after = first if lost == "claim" else b'"status":"COMPLETED"'
        answers: list[int] = []
        for call in list(sink.calls):
            webhook = sessions.replace("/sessions", f"/webhooks/{call.provider}")
            hop = {"host", "content-length", "transfer-encoding", "connection"}
            clean = {k: v for k, v in call.headers.items() if k.lower() not in hop}
            for _ in range(300):  # the provider resends until it is answered 200
                async with http.post(webhook, data=call.body, headers=clean) as answer:
                    answers.append(answer.status)
                    if answer.status == 200:
                        break
                    assert answer.status == 503, await answer.text()
                await asyncio.sleep(0.05)
        assert proxy.cuts == 1
        assert 503 in answers
        async with http.get(f"{sessions}/{session_id}", headers=headers(None)) as read:
            view = await read.json()
    assert [t["status"] for t in view["transitions"]] == ["PENDING", "COMPLETED"]
    await outbox_drained(postgres_database)
    assert [n["status"] for n in notified] == ["PENDING", "COMPLETED"], notified


async def test_a_cancel_whose_claim_reply_is_lost_answers_503_and_never_swallows_the_payment(
    aiohttp_server: Any,
    postgres_database: str,
    proxy: FaultProxy,
    processes: list[Any],
    tmp_path: Path,
) -> None:
    sink = await start_sink(aiohttp_server)
    sandbox = await sandbox_behind(aiohttp_server, sink)
    sessions = await serve(
        sandbox,
        through(proxy, postgres_database),
        processes,
        GATEWAY_RULES_PATH=str(pinned_rules(tmp_path, "stripe")),
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(sessions, json=seed(), headers=headers("lost-cancel")) as made:
            assert made.status == 201, await made.text()
            created = await made.json()
        session_id = created["sessionId"]
        proxy.cut_after = b'"cancelClaim":{"token"'
        cancel = f"{sessions}/{session_id}/cancel"
        body = {"cancellationReason": "abandoned"}
        async with http.post(cancel, json=body, headers=headers(None)) as answer:
            assert answer.status == 503, await answer.text()
        assert proxy.cuts == 1
        assert (await press(created["checkoutUrl"], "pay"))[0] == 303
        for call in list(sink.calls):
            webhook = sessions.replace("/sessions", f"/webhooks/{call.provider}")
            hop = {"host", "content-length", "transfer-encoding", "connection"}
            clean = {k: v for k, v in call.headers.items() if k.lower() not in hop}
            async with http.post(webhook, data=call.body, headers=clean) as delivered:
                assert delivered.status == 200, await delivered.text()

        async def paid() -> dict[str, Any] | None:
            async with http.get(f"{sessions}/{session_id}", headers=headers(None)) as read:
                view: dict[str, Any] = await read.json()
            return view if view["status"] == "COMPLETED" else None

        view = await wait_for(paid)
        assert [t["status"] for t in view["transitions"]] == ["PENDING", "COMPLETED"]
        async with http.post(cancel, json=body, headers=headers(None)) as again:
            assert again.status == 409, await again.text()


async def test_a_paypal_approval_racing_cancels_and_sweepers_is_captured_only_if_it_wins(
    aiohttp_server: Any, postgres_database: str, processes: list[Any], tmp_path: Path
) -> None:
    """PayPal moves money only when the gateway captures an approval: an approval that loses to
    a cancel or an expiry is never captured, one that wins is captured once and ends paid."""
    sink = await start_sink(aiohttp_server)
    root = create_sandbox_root(
        SandboxConfig(gateway_base_url=sink.base_url, expiry_sweep_seconds=0, random_seed=7)
    )
    sandbox = await aiohttp_server(root)
    gateways = await two_gateways(
        sandbox, postgres_database, processes, GATEWAY_EXPIRY_SWEEP_INTERVAL_SECONDS="0.02"
    )
    pp = paypal_sandbox(next(a for a in root._subapps if SANDBOX_STATE in a)[SANDBOX_STATE])
    store = PostgresStore(postgres_database)
    async with aiohttp.ClientSession() as http:
        approved: list[tuple[str, Received]] = []
        for i in range(SESSIONS):
            body = seed(orderReference=f"pp-race-{i}", paymentMethod="paypal")
            async with http.post(gateways[0], json=body, headers=headers(f"pp-{i}")) as made:
                assert made.status == 201, await made.text()
                created = await made.json()
            assert (await press(created["checkoutUrl"], "pay"))[0] == 303
            approved.append((created["sessionId"], sink.calls[-1]))

        async def cancel(to: str, session_id: str) -> None:
            url = f"{to}/{session_id}/cancel"
            body = {"cancellationReason": "abandoned"}
            async with http.post(url, json=body, headers=headers(None)) as answer:
                assert answer.status in (200, 409), await answer.text()

        async def race(session_id: str, call: Received) -> None:
            answers = await asyncio.gather(
                backdate(store, session_id),
                deliver(http, gateways[0], call),
                cancel(gateways[1], session_id),
                deliver(http, gateways[1], call),
                cancel(gateways[0], session_id),
            )
            assert answers[1] == answers[3] == 200

        try:
            await asyncio.gather(*(race(session_id, call) for session_id, call in approved))
            for session_id, call in approved:
                order_id = json.loads(call.body)["resource"]["id"]

                async def settled(session_id: str = session_id) -> dict[str, Any] | None:
                    async with http.get(
                        f"{gateways[1]}/{session_id}", headers=headers(None)
                    ) as read:
                        view: dict[str, Any] = await read.json()
                    return view if view["status"] != "PENDING" else None

                view = await wait_for(settled)
                await asyncio.sleep(0.5)  # a capture still on its way would land by now
                async with http.get(f"{gateways[1]}/{session_id}", headers=headers(None)) as read:
                    view = await read.json()
                captured = [c for c in pp.completions if c.order_id == order_id]
                statuses = [t["status"] for t in view["transitions"]]
                if view["status"] == "COMPLETED":
                    assert len(captured) == 1, (statuses, captured)
                else:
                    assert captured == [], (statuses, captured)
                    assert view["status"] in ("CANCELLED", "EXPIRED"), statuses
        finally:
            await store.close()
