"""The order-reference guard over a session's whole life: one order is paid at most once, and
an order whose payment failed, expired or was cancelled may be tried again."""

from __future__ import annotations

from tests.api.conftest import headers, seed
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import read_when
from tests.providers.hosted_inputs import press


async def another_attempt(env: Env, key: str) -> tuple[int, dict[str, object]]:
    body = seed(
        redirectUrls={
            "success": f"{env.receiver.url}/checkout/success",
            "failure": f"{env.receiver.url}/checkout/failure",
        }
    )
    response = await env.client.post("/api/v1/sessions", json=body, headers=headers(key))
    return response.status, await response.json()


async def test_a_paid_order_gets_no_second_session(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    first = await env.create("guard-1")
    assert (await press(first["checkoutUrl"], "pay"))[0] == 303
    await read_when(env, first["sessionId"], "COMPLETED")
    status, body = await another_attempt(env, "guard-2")
    assert status == 409
    assert body["details"] == "Resource already exists"
    assert body["sessionId"] == first["sessionId"]


async def test_a_failed_order_may_be_tried_again(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    first = await env.create("guard-3")
    assert (await press(first["checkoutUrl"], "decline"))[0] == 303
    await read_when(env, first["sessionId"], "FAILED")
    status, body = await another_attempt(env, "guard-4")
    assert status == 201, body
    assert body["sessionId"] != first["sessionId"]
    # and now the new, pending session holds the order
    status, body = await another_attempt(env, "guard-5")
    assert status == 409
    assert body["sessionId"] != first["sessionId"]
