"""``sessionType: setup`` end to end: a hosted session that saves a payment method and charges
nothing, completed by the provider's webhook, then used as the mandate of a next payment."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import headers, seed
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_loop import PROVIDERS, read_when
from tests.lifecycle.test_next_in_series import charge
from tests.providers.hosted_inputs import press


async def create_setup(env: Env, key: str, **changes: Any) -> tuple[int, dict[str, Any]]:
    body = seed(
        sessionType="setup",
        amount={"total": 0},
        orderReference=f"SETUP-{key}",
        customerReference="cust-42",
        redirectUrls={
            "success": f"{env.receiver.url}/checkout/success",
            "failure": f"{env.receiver.url}/checkout/failure",
        },
        **changes,
    )
    del body["orderItems"]
    response = await env.client.post("/api/v1/sessions", json=body, headers=headers(key))
    return response.status, await response.json()


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_setup_session_saves_a_method_and_serves_as_a_mandate(
    lifecycle_env: EnvFactory, provider: str
) -> None:
    env = await lifecycle_env(provider)
    # the routing rules set stripe's minimum at 0.50: a setup session is not bound by it
    status, created = await create_setup(env, "setup-1", **PROVIDERS[provider])
    assert status == 201, created
    assert created["status"] == "PENDING"
    assert created["checkoutUrl"]
    assert created["routing"]["selectedProvider"] == provider
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    view = await read_when(env, created["sessionId"], "COMPLETED")
    assert view["sessionType"] == "setup"
    assert view["savePaymentMethod"] is True
    assert view["customerId"]
    assert view["paymentMethodId"]
    assert (view["amount"]["total"], view["amountCaptured"]) == ("0.00", "0.00")
    # the saved method pays the next payment, at the same provider
    status, body, _ = await charge(env, created["sessionId"], "setup-1-next", **PROVIDERS[provider])
    assert status == 201, body
    assert body["checkoutUrl"] is None
    charged = await read_when(env, body["sessionId"], "COMPLETED")
    assert charged["paymentMethodId"] == view["paymentMethodId"]
    assert charged["mandateSessionId"] == created["sessionId"]


async def test_a_setup_session_is_replayed_for_its_key(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    first_status, first = await create_setup(env, "setup-2")
    again_status, again = await create_setup(env, "setup-2")
    assert (first_status, again_status) == (201, 201), (first, again)
    assert again == first
