"""Saved payment methods (seed 002 session types): what each adapter asks its provider for
(valid per the official specs), routing by session type, and the customer and payment method
ids coming back on the session and in ``payment_session.updated``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.routing.service import Router
from providers.adyen.adapter import AdyenAdapter
from providers.base import Capabilities, ProviderAdapter
from providers.http import new_client_session
from providers.paypal.adapter import PayPalAdapter
from providers.sandbox.stripe_wire import decode_form
from providers.stripe.adapter import StripeAdapter
from tests.api.conftest import ROOT
from tests.contracts.spec_validator import validate_request
from tests.contracts.strict_sandbox import ServerFactory
from tests.lifecycle.conftest import EnvFactory
from tests.lifecycle.test_loop import PROVIDERS, read_when, settled
from tests.providers.hosted_inputs import (
    checkout_input,
    press,
    request_from,
    seed_data,
    start_sandbox_with_sink,
)

ADAPTERS = {"stripe": StripeAdapter, "adyen": AdyenAdapter, "paypal": PayPalAdapter}


async def _sent(
    aiohttp_server: ServerFactory, provider: str, **changes: Any
) -> tuple[dict[str, str], Any]:
    sandbox, _sink = await start_sandbox_with_sink(aiohttp_server)
    data = seed_data()
    data.update(PROVIDERS[provider])
    data.update(changes)
    http = new_client_session()
    try:
        adapter: ProviderAdapter = ADAPTERS[provider](sandbox.provider_config(provider), http)
        await adapter.create_session(checkout_input(request_from(data)), timeout=5)
    finally:
        await http.close()
    recorded = sandbox.requests[-1]
    assert validate_request(provider, recorded.headers, recorded.body) == []
    body = (
        decode_form(recorded.body.decode()) if provider == "stripe" else json.loads(recorded.body)
    )
    return recorded.headers, body


@pytest.mark.parametrize(
    ("changes", "usage"),
    [
        ({"sessionType": "first_in_series"}, "off_session"),
        ({"savePaymentMethod": True}, "on_session"),
    ],
)
async def test_stripe_asks_to_save_the_method(
    aiohttp_server: ServerFactory, changes: dict[str, Any], usage: str
) -> None:
    _, body = await _sent(aiohttp_server, "stripe", **changes)
    assert body["payment_intent_data"]["setup_future_usage"] == usage
    assert body["customer_creation"] == "always"


async def test_stripe_one_time_saves_nothing(aiohttp_server: ServerFactory) -> None:
    _, body = await _sent(aiohttp_server, "stripe")
    assert "setup_future_usage" not in body["payment_intent_data"]
    assert "customer_creation" not in body


@pytest.mark.parametrize(
    ("changes", "model", "mode", "reference"),
    [
        (
            {"sessionType": "first_in_series", "customerReference": "cust-42"},
            "Subscription",
            "enabled",
            "cust-42",
        ),
        ({"savePaymentMethod": True}, "CardOnFile", "askForConsent", "gw-ses_01HTESTSESSION0001"),
    ],
)
async def test_adyen_asks_for_a_token_under_the_shopper(
    aiohttp_server: ServerFactory, changes: dict[str, Any], model: str, mode: str, reference: str
) -> None:
    _, body = await _sent(aiohttp_server, "adyen", **changes)
    assert body["recurringProcessingModel"] == model
    assert body["storePaymentMethodMode"] == mode
    assert body["shopperInteraction"] == "Ecommerce"
    assert body["shopperReference"] == reference


async def test_paypal_vaults_the_wallet(aiohttp_server: ServerFactory) -> None:
    _, body = await _sent(aiohttp_server, "paypal", sessionType="first_in_series")
    vault = body["payment_source"]["paypal"]["attributes"]["vault"]
    assert vault["store_in_vault"] == "ON_SUCCESS"
    assert vault["usage_pattern"] == "RECURRING_POSTPAID"
    _, plain = await _sent(aiohttp_server, "paypal")
    assert "attributes" not in plain["payment_source"]["paypal"]


def test_routing_leaves_out_providers_without_the_session_type() -> None:
    caps = {
        "stripe": Capabilities(payment_methods=frozenset({"card"})),  # one_time only
        "adyen": Capabilities(
            payment_methods=frozenset({"card"}),
            session_types=frozenset({"one_time", "first_in_series"}),
        ),
    }
    router = Router(ROOT / "routing_rules.yaml", caps)
    data = seed_data()
    one_time = router.decide(request_from(data), "merchant-1")
    assert {c.provider for c in one_time.ranked} == {"stripe", "adyen"}
    data["sessionType"] = "first_in_series"
    series = router.decide(request_from(data), "merchant-1")
    assert [c.provider for c in series.ranked] == ["adyen"]
    reasons = {e.provider: e.reason for e in series.excluded}
    assert reasons["stripe"] == "adapter does not support session type first_in_series"


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_the_saved_method_comes_back_with_its_provider(
    lifecycle_env: EnvFactory, provider: str
) -> None:
    env = await lifecycle_env(provider)
    created = await env.create(
        sessionType="first_in_series", customerReference="cust-42", **PROVIDERS[provider]
    )
    status, _ = await press(created["checkoutUrl"], "pay")
    assert status == 303
    view = await read_when(env, created["sessionId"], "COMPLETED")
    assert view["sessionType"] == "first_in_series"
    assert view["savePaymentMethod"] is True
    assert view["customerId"]
    assert view["paymentMethodId"]
    if provider == "adyen":
        assert view["customerId"] == "cust-42"
    events = await settled(env, created["sessionId"], len(view["transitions"]))
    final = max(events, key=lambda e: e["data"]["payment_session"]["version"])
    payload = final["data"]["payment_session"]
    assert (payload["provider"], payload["customerId"], payload["paymentMethodId"]) == (
        provider,
        view["customerId"],
        view["paymentMethodId"],
    )
