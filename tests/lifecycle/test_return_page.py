"""Adyen sends the shopper back to one URL whatever happened: the gateway's return page, which
sends them on to the merchant's success or failure URL by the session's outcome."""

from __future__ import annotations

import aiohttp

from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import read_when
from tests.providers.hosted_inputs import press


async def follow(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, allow_redirects=False) as answer,
    ):
        return answer.status, answer.headers.get("Location", "")


async def back_from_adyen(env: Env, key: str, action: str) -> tuple[dict[str, object], str]:
    created = await env.create(key, paymentMethod="card", orderReference=f"ORD-{key}")
    status, location = await press(str(created["checkoutUrl"]), action)
    assert status == 303
    assert location.startswith(f"{env.base_url}/api/v1/sessions/{created['sessionId']}/return?")
    return created, location


async def test_paid_goes_to_success_and_declined_to_failure(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("adyen")
    paid, location = await back_from_adyen(env, "ret-1", "pay")
    assert await follow(location) == (303, f"{env.receiver.url}/checkout/success")
    await read_when(env, str(paid["sessionId"]), "COMPLETED")

    declined, location = await back_from_adyen(env, "ret-2", "decline")
    assert await follow(location) == (303, f"{env.receiver.url}/checkout/failure")
    await read_when(env, str(declined["sessionId"]), "FAILED")


async def test_unknown_or_mismatched_sessions_are_404(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("adyen")
    _created, location = await back_from_adyen(env, "ret-3", "pay")
    wrong = location.replace("sessionId=CS", "sessionId=XX")
    assert (await follow(wrong))[0] == 404
    other = (
        f"{env.base_url}/api/v1/sessions/6f1c4a52-9c51-4c55-9a8e-0a1f0d6d7c11/return?sessionId=CS1"
    )
    assert (await follow(other))[0] == 404
    assert (await follow(f"{env.base_url}/api/v1/sessions/nope/return"))[0] == 404


async def test_no_outcome_yet_goes_to_success_after_the_wait(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("adyen", return_wait_seconds=0.3)
    created = await env.create("ret-4", paymentMethod="card")
    view = await env.read(str(created["sessionId"]))
    query = {"sessionId": view["providerSessionId"], "sessionResult": "opaque"}
    url = f"{env.base_url}/api/v1/sessions/{created['sessionId']}/return"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, params=query, allow_redirects=False) as answer,
    ):
        assert answer.status == 303
        assert answer.headers["Location"] == f"{env.receiver.url}/checkout/success"
    assert (await env.read(str(created["sessionId"])))["status"] == "PENDING"
