"""Orphan clean-up survives the process that answered (issue 10, part 1).

A failover leaves a Stripe session behind (Stripe timed out, Adyen created the session). The
orphan is committed with the gateway session as a job in the store's durable orphan queue;
the process that answered is SIGKILLed before it could expire it (Stripe is still working on
the first request, so its replay can only come later). A fresh process's worker leases the
job, gets Stripe's session back under the derived key, expires it and records it: the hosted
page refuses payment.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.idempotency import session_id_for
from gateway.store.keys import RedisKeys, bucket
from tests.api.conftest import headers
from tests.api.test_failover import card_order, sandbox_state
from tests.api.test_retry_after_timeout import held_by, until
from tests.gateway_processes import base_env, free_port, start_gateway, wait_ready
from tests.redis_stores import redis_store


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_an_orphan_left_by_a_killed_process_is_expired_by_the_next_one(
    sandbox: Any, redis_url: str, redis_prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    env = {
        **base_env(sandbox),
        "GATEWAY_STORE": "redis",
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_PROVIDER_TIMEOUT_SECONDS": "0.5",
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "4",
        "GATEWAY_EXPIRY_SWEEP_INTERVAL_SECONDS": "0.2",
    }
    state = sandbox_state(sandbox)
    session_id = session_id_for("merchant-1", "orphan-killed")
    first_port = free_port()
    first = start_gateway(first_port, env)
    processes.append(first)
    await wait_ready(first_port, first)
    async with aiohttp.ClientSession() as http:
        admin = str(sandbox.make_url("/sandbox/admin/faults"))
        # Stripe creates the session 4 s after the request: the gateway's try times out at
        # 0.5 s, Adyen creates the session, and until Stripe is done any re-send of the
        # pinned create is answered 409 (in flight): the first process cannot expire it
        await http.post(admin, json={"provider": "stripe", "processingMs": 4000})
        url = f"http://127.0.0.1:{first_port}/api/v1/sessions"
        body = orjson.dumps(card_order("ORD-ORPHAN-KILLED"))
        async with http.post(url, data=body, headers=headers("orphan-killed")) as answer:
            assert answer.status == 201, await answer.text()
            created = await answer.json()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert [(a["provider"], a["outcome"]) for a in created["routing"]["attempts"]] == [
            ("stripe", "timeout"),
            ("adyen", "created"),
        ]

        # what the dead process left: the orphan open on the record, its job queued
        store = redis_store(redis_url, redis_prefix)
        try:
            record = await store.get_session(session_id)
            assert record is not None
            assert [(o.provider, o.status) for o in record.orphans] == [("stripe", "open")]
            keys = RedisKeys(redis_prefix)
            assert await store.client.hkeys(keys.orphans_items(bucket(session_id))) == [
                f"{session_id}:stripe".encode()
            ]
        finally:
            await store.close()

        async def stripe_created_it() -> bool:  # Stripe finishes on its own clock
            return len(held_by(sandbox, "stripe", session_id)) == 1

        await until(stripe_created_it)
        (orphan,) = held_by(sandbox, "stripe", session_id)
        assert orphan.status == "open"

        second_port = free_port()
        second = start_gateway(second_port, env)
        processes.append(second)
        await wait_ready(second_port, second)
        view_url = f"http://127.0.0.1:{second_port}/api/v1/sessions/{session_id}"

        async def orphan_expired() -> bool:
            async with http.get(view_url, headers=headers(None)) as got:
                view = await got.json()
            return view["orphans"][0]["status"] == "expired"

        await until(orphan_expired, within=20)
        async with http.get(view_url, headers=headers(None)) as got:
            view = await got.json()
        assert view["orphans"] == [
            {
                "provider": "stripe",
                "providerSessionId": orphan.id,
                "outcome": "timeout",
                "status": "expired",
            }
        ]
        assert (view["provider"], view["status"]) == ("adyen", "PENDING")
        assert orphan.status == "expired"
        # the customer can never pay it
        pay_url = str(sandbox.make_url(f"/sandbox/pay/stripe/{orphan.id}/pay"))
        async with http.post(pay_url, allow_redirects=False) as page:
            assert page.status == 410
        assert state.sessions_created["stripe"] == 1
        # the job is done: nothing left in the queue
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await client.zcard(RedisKeys(redis_prefix).orphans_due(bucket(session_id))) == 0
        finally:
            await client.aclose()
