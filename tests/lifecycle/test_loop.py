"""The loop without a browser: create, press a button on the sandbox pay page, and check the
session, the merchant's notifications and the routing statistics, for every provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.lifecycle.conftest import Env, EnvFactory
from tests.providers.hosted_inputs import press

#: (provider, request changes) so that routing lands on the provider
PROVIDERS = {
    "stripe": {},
    "adyen": {},
    "paypal": {"paymentMethod": "paypal"},
}
#: who settles a paid session: the provider's webhook, or (PayPal) the gateway's own capture of
#: the approved order, after the approval webhook moved it to PROCESSING
SETTLED_BY = {
    "stripe": [("COMPLETED", "webhook:stripe")],
    "adyen": [("COMPLETED", "webhook:adyen")],
    "paypal": [("PROCESSING", "webhook:paypal"), ("COMPLETED", "gateway:capture")],
}


async def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def read_when(env: Env, session_id: str, status: str, timeout: float = 5.0) -> dict[str, Any]:
    """The session once it reads ``status`` (PayPal's capture runs after the webhook's answer)."""
    deadline = time.monotonic() + timeout
    while True:
        view = await env.read(session_id)
        if view["status"] == status or time.monotonic() > deadline:
            assert view["status"] == status, view["transitions"]
            return view
        await asyncio.sleep(0.05)


async def settled(env: Env, session_id: str, count: int) -> list[dict[str, Any]]:
    """The session's notifications once ``count`` have arrived."""
    return list(
        await wait_for(
            lambda: (
                len(env.receiver.of_session(session_id)) >= count
                and env.receiver.of_session(session_id)
            )
        )
    )


async def payment_counts(env: Env, provider: str) -> tuple[float, float]:
    await env.router.flush()
    snapshot = await env.router.refresh_stats()
    counters = snapshot.segments.get((provider, "country", "AU"))
    return (counters.payment_ok, counters.payment_fail) if counters else (0.0, 0.0)


async def landed(env: Env, location: str) -> str:
    """Where the browser ends up: through the gateway's return page when the provider sent the
    customer there (Adyen), else where the provider sent them."""
    if not location.startswith(f"{env.base_url}/api/v1/sessions/"):
        return location
    async with (
        aiohttp.ClientSession() as http,
        http.get(location, allow_redirects=False) as answer,
    ):
        assert answer.status == 303
        return answer.headers["Location"]


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_pay_completes_notifies_and_counts(lifecycle_env: EnvFactory, provider: str) -> None:
    env = await lifecycle_env(provider)
    created = await env.create(**PROVIDERS[provider])
    session_id = created["sessionId"]
    view = await env.read(session_id)
    assert view["provider"] == provider
    status, location = await press(created["checkoutUrl"], "pay")
    assert status == 303
    assert (await landed(env, location)).startswith(f"{env.receiver.url}/checkout/success")
    view = await read_when(env, session_id, "COMPLETED")
    sources = [(t["status"], t["source"]) for t in view["transitions"]]
    assert sources[0] == ("PENDING", "gateway")
    assert sources[1:] == SETTLED_BY[provider]
    assert all(t["eventId"] for t in view["transitions"][1:])
    assert view["paymentId"]
    events = await settled(env, session_id, 1 + len(view["transitions"]) - 1)
    types = [e["type"] for e in events]
    assert types[0] == "payment_session.created"
    assert set(types[1:]) == {"payment_session.updated"}
    last = max(events, key=lambda e: e["data"]["payment_session"]["version"])
    assert last["data"]["payment_session"]["status"] == "COMPLETED"
    assert last["data"]["payment_session"]["provider"] == provider
    ok, fail = await payment_counts(env, provider)
    assert (ok, fail) == pytest.approx((1.0, 0.0), abs=1e-3)
    if provider == "paypal":
        # PayPal's own webhook about the capture the gateway made follows it: no effect
        await wait_for(lambda: env.sandbox_state.webhooks_sent["paypal"] == 2)
        assert (await env.read(session_id))["version"] == view["version"]
        ok, fail = await payment_counts(env, provider)
        assert (ok, fail) == pytest.approx((1.0, 0.0), abs=1e-3)


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_decline_fails_and_counts_a_failure(lifecycle_env: EnvFactory, provider: str) -> None:
    env = await lifecycle_env(provider)
    created = await env.create(**PROVIDERS[provider])
    status, location = await press(created["checkoutUrl"], "decline")
    assert status == 303
    assert (await landed(env, location)).startswith(f"{env.receiver.url}/checkout/failure")
    view = await read_when(env, created["sessionId"], "FAILED")
    assert view["failureReason"]
    ok, fail = await payment_counts(env, provider)
    assert (ok, fail) == pytest.approx((0.0, 1.0), abs=1e-3)


@pytest.mark.parametrize(
    ("provider", "final"),
    [("stripe", "EXPIRED"), ("adyen", "EXPIRED"), ("paypal", "CANCELLED")],
)
async def test_customer_cancel_on_the_pay_page(
    lifecycle_env: EnvFactory, provider: str, final: str
) -> None:
    """A shopper who leaves: Stripe and Adyen end the session as expired (Adyen's
    CANCELLATION is a merchant's cancel); PayPal's buyer cancels the order."""
    env = await lifecycle_env(provider)
    created = await env.create(**PROVIDERS[provider])
    status, location = await press(created["checkoutUrl"], "cancel")
    assert status == 303
    assert (await landed(env, location)).startswith(f"{env.receiver.url}/checkout/failure")
    view = await env.read(created["sessionId"])
    assert view["status"] == final
    assert await payment_counts(env, provider) == (0.0, 0.0)  # not the provider's fault


async def test_a_final_session_ignores_later_events(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create()
    await press(created["checkoutUrl"], "pay")
    before = await env.read(created["sessionId"])
    # the sandbox expiring the (paid) session afterwards sends checkout.session.expired
    async with env.client.session.post(
        str(
            env.sandbox.make_url(
                f"/sandbox/admin/sessions/stripe/{before['providerSessionId']}/expire"
            )
        )
    ) as response:
        assert response.status == 200
    after = await env.read(created["sessionId"])
    assert after["status"] == "COMPLETED"
    assert after["version"] == before["version"]
