"""``POST /api/v1/sessions/{id}/cancel`` and expiry (on read and by the sweeper)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from gateway.domain.session import utcnow
from tests.api.conftest import headers
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import wait_for
from tests.providers.hosted_inputs import press


async def cancel(env: Env, session_id: str, body: Any = None, **kw: Any) -> aiohttp.ClientResponse:
    payload = {"cancellationReason": "requested_by_customer"} if body is None else body
    return await env.client.post(
        f"/api/v1/sessions/{session_id}/cancel", json=payload, headers=headers(None, **kw)
    )


async def pay_page_status(env: Env, checkout_url: str) -> int:
    async with aiohttp.ClientSession() as client, client.get(checkout_url) as response:
        return response.status


async def backdate(env: Env, session_id: str) -> None:
    """Make the stored session past its expiresAt (sessions live at least 300 s)."""
    record = await env.store.get_session(session_id)
    assert record is not None
    past = utcnow() - timedelta(seconds=1)
    await env.rewrite(record, expiresAt=past, expires_at=past.timestamp())


async def test_cancel_at_stripe_then_locally(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create()
    response = await cancel(env, created["sessionId"], {"cancellationReason": "duplicate"})
    assert response.status == 200, await response.text()
    view = await response.json()
    assert view["status"] == "CANCELLED"
    assert view["cancellationReason"] == "duplicate"
    # the merchant asked; Stripe's checkout.session.expired (sent while the sandbox answers
    # the /expire call our cancel made) confirmed it, and the audit trail says both
    assert view["transitions"][-1]["source"] == "merchant"
    assert view["transitions"][-1]["confirmedBy"] == "webhook:stripe"
    assert view["transitions"][-1]["eventId"].startswith("evt_")
    assert [t["status"] for t in view["transitions"]] == ["PENDING", "CANCELLED"]
    assert await pay_page_status(env, created["checkoutUrl"]) == 410  # expired at Stripe
    events = await wait_for(
        lambda: (
            len(env.receiver.of_session(created["sessionId"])) >= 2
            and env.receiver.of_session(created["sessionId"])
        )
    )
    assert events[-1]["data"]["payment_session"]["status"] == "CANCELLED"
    assert events[-1]["data"]["payment_session"]["cancellationReason"] == "duplicate"

    again = await cancel(env, created["sessionId"])
    assert again.status == 409
    body = await again.json()
    assert body["error"] == "Conflict"
    assert body["code"] == body["statusCode"] == 409
    assert body["message"] == "The request conflicts with the current state of the resource"
    assert body["status"] == "CANCELLED"
    assert body["sessionId"] == created["sessionId"]


async def test_a_cancel_confirmed_by_stripes_answer_reads_merchant_confirmed_by_the_api(
    lifecycle_env: EnvFactory,
) -> None:
    """Stripe's event does not reach the gateway (it goes to a sink): the answer of the
    ``/expire`` call is the provider's confirmation."""
    env = await lifecycle_env("stripe", sink=True)
    created = await env.create()
    response = await cancel(env, created["sessionId"], {"cancellationReason": "abandoned"})
    assert response.status == 200, await response.text()
    last = (await response.json())["transitions"][-1]
    assert last == {
        "status": "CANCELLED",
        "at": last["at"],
        "source": "merchant",
        "confirmedBy": "api:stripe",
    }
    assert env.sink is not None
    assert [call.provider for call in env.sink.calls] == ["stripe"]  # the event Stripe sent


async def test_cancel_where_the_provider_has_no_cancel_is_local(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("adyen")
    created = await env.create()
    response = await cancel(env, created["sessionId"], {"cancellationReason": "fraudulent"})
    assert response.status == 200
    view = await response.json()
    assert view["status"] == "CANCELLED"
    # Adyen has no cancel call: nobody confirmed it
    assert view["transitions"][-1] == {
        "status": "CANCELLED",
        "at": view["transitions"][-1]["at"],
        "source": "merchant",
    }


async def test_cancel_of_a_completed_session_is_409(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create()
    await press(created["checkoutUrl"], "pay")
    response = await cancel(env, created["sessionId"])
    assert response.status == 409
    assert (await response.json())["status"] == "COMPLETED"


async def test_cancel_when_the_provider_is_down_is_502_and_changes_nothing(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create()
    async with aiohttp.ClientSession() as client:
        url = str(env.sandbox.make_url("/sandbox/admin/faults"))
        async with client.post(url, json={"provider": "stripe", "down": True}) as response:
            assert response.status == 200
    response = await cancel(env, created["sessionId"])
    assert response.status == 502
    body = await response.json()
    assert body["details"] == {"provider": "stripe", "outcome": "unavailable"}
    view = await env.read(created["sessionId"])
    assert (view["status"], view["cancellationReason"]) == ("PENDING", None)
    assert len(view["transitions"]) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"cancellationReason": "bored"}, 400),
        ({}, 400),
        ({"cancellationReason": "abandoned", "extra": 1}, 400),
    ],
)
async def test_cancel_body_is_validated(
    lifecycle_env: EnvFactory, body: dict[str, Any], status: int
) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create()
    response = await cancel(env, created["sessionId"], body)
    assert response.status == status
    assert (await env.read(created["sessionId"]))["status"] == "PENDING"


async def test_cancel_auth_and_unknown_sessions(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create()
    assert (await cancel(env, str(uuid.uuid4()))).status == 404
    assert (await cancel(env, "not-a-uuid")).status == 404
    assert (await cancel(env, created["sessionId"], merchant="merchant-2")).status == 404
    assert (await cancel(env, created["sessionId"], scopes=["sessions:read"])).status == 403
    raw = await env.client.post(
        f"/api/v1/sessions/{created['sessionId']}/cancel",
        data=b"cancellationReason=duplicate",
        headers={**headers(None), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert raw.status == 415
    assert (await env.read(created["sessionId"]))["status"] == "PENDING"


async def test_expire_on_read_then_the_sweeper_expires_it_at_stripe(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe", expiry_sweep_interval_seconds=3600)  # sweeper idle
    created = await env.create()
    await backdate(env, created["sessionId"])
    view = await env.read(created["sessionId"])
    assert view["status"] == "EXPIRED"
    assert view["transitions"][-1]["source"] == "expiry"
    assert await pay_page_status(env, created["checkoutUrl"]) == 200  # still open at Stripe
    assert await env.lifecycle.sweep_once() == 1
    assert await pay_page_status(env, created["checkoutUrl"]) == 410
    assert await env.lifecycle.sweep_once() == 0  # done: out of the index
    # the expiry at Stripe did not move the session again
    assert (await env.read(created["sessionId"]))["version"] == view["version"]
    response = await cancel(env, created["sessionId"])
    assert response.status == 409
    assert (await response.json())["status"] == "EXPIRED"


async def test_the_sweeper_expires_sessions_nobody_reads(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")  # sweeps every 0.1 s
    created = await env.create()
    other = await env.create("k2", orderReference="ORD-2")
    await backdate(env, created["sessionId"])

    async def expired() -> bool:
        record = await env.store.get_session(created["sessionId"])
        return record is not None and record.status.value == "EXPIRED"

    for _ in range(100):
        if await expired():
            break
        await asyncio.sleep(0.05)
    assert await expired()
    await wait_for(
        lambda: any(
            e["data"]["payment_session"]["status"] == "EXPIRED"
            for e in env.receiver.of_session(created["sessionId"])
        )
    )
    assert (await env.read(other["sessionId"]))["status"] == "PENDING"
