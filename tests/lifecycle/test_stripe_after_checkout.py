"""Stripe's events after the checkout through the real gateway: a hosted manual-capture session
reads AUTHORIZED once Stripe reports the authorization, and a setup session COMPLETED with the
customer and the saved method (looked up from its SetupIntent)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.lifecycle.conftest import EnvFactory, pinned_rules
from tests.lifecycle.test_loop import read_when
from tests.providers.hosted_inputs import press


async def test_hosted_manual_capture_reads_authorized(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create(captureMethod="manual")
    status, _ = await press(created["checkoutUrl"], "pay")
    assert status == 303
    view = await read_when(env, created["sessionId"], "AUTHORIZED")
    assert view["captureMethod"] == "manual"
    assert view["amountCaptured"] is None or view["amountCaptured"] in ("0", "0.00")


def _rules_without_amount_bounds(tmp_path: Path) -> Path:
    """Stripe pinned, without the default rules' charge minimum (0.50): a setup session of
    amount 0 charges nothing, and this test is about Stripe, not the router's bounds."""
    rules = yaml.safe_load(pinned_rules(tmp_path, "stripe").read_text())
    rules["providers"]["stripe"].pop("amount", None)
    path = tmp_path / "rules-stripe-setup.yaml"  # the factory rewrites rules-stripe.yaml
    path.write_text(yaml.safe_dump(rules))
    return path


async def test_setup_session_completes_with_customer_and_method(
    lifecycle_env: EnvFactory, tmp_path: Path
) -> None:
    env = await lifecycle_env("stripe", rules_path=_rules_without_amount_bounds(tmp_path))
    created = await env.create(
        key="setup-1",
        sessionType="setup",
        amount={"total": 0, "shipping": 0, "tax": 0},
        orderItems=None,
        shipping=None,
    )
    status, _ = await press(created["checkoutUrl"], "pay")
    assert status == 303
    view = await read_when(env, created["sessionId"], "COMPLETED")
    assert view["sessionType"] == "setup"
    assert view["customerId"].startswith("cus_")
    assert view["paymentMethodId"].startswith("pm_")
