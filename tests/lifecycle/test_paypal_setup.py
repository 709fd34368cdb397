"""A PayPal setup session through the gateway: the payer saves the wallet on the pay page
(Vault v3 setup token), PayPal's VAULT.SETUP-TOKEN.APPROVED webhook makes the gateway create the
payment token (completion intent ``vault``), and the session reads COMPLETED with the vault
customer and the payment token, having charged nothing."""

from __future__ import annotations

import orjson

from providers.paypal.transformers import setup_customer_id
from providers.sandbox.paypal_api import paypal_sandbox
from tests.lifecycle.conftest import EnvFactory
from tests.lifecycle.test_loop import read_when, wait_for
from tests.lifecycle.test_webhook_signatures import deliver
from tests.providers.hosted_inputs import press


async def test_setup_session_saves_the_wallet(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("paypal", sink=True)
    created = await env.create(
        paymentMethod="paypal", sessionType="setup", amount={"total": 0}, orderItems=None
    )
    session_id = created["sessionId"]
    assert (await press(created["checkoutUrl"], "pay"))[0] == 303
    sink = env.sink
    assert sink is not None
    await wait_for(lambda: sink.calls)
    [approved] = sink.calls
    assert orjson.loads(approved.body)["event_type"] == "VAULT.SETUP-TOKEN.APPROVED"
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    view = await read_when(env, session_id, "COMPLETED")
    assert view["transitions"][-1]["source"] == "gateway:vault"
    pp = paypal_sandbox(env.sandbox_state)
    assert view["paymentMethodId"] in pp.vault
    assert view["customerId"] == setup_customer_id(session_id)
    assert pp.charges == []
    assert not pp.payments
    # a duplicate approval changes nothing
    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    assert (await env.read(session_id))["version"] == view["version"]
