"""A payment on an orphan provider session (left at a provider without a cancel call by a
failover) is never taken for the gateway session's payment: it is logged and counted."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.metrics import ORPHAN_SESSIONS
from tests.api.conftest import ROOT
from tests.lifecycle.conftest import EnvFactory
from tests.lifecycle.test_loop import wait_for
from tests.providers.hosted_inputs import press


async def test_a_payment_on_an_adyen_orphan_is_not_the_sessions_payment(
    lifecycle_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await lifecycle_env(
        "adyen",
        rules_path=ROOT / "routing_rules.yaml",  # adyen first for the seed, then stripe
        provider_timeout_seconds=0.5,
    )
    async with aiohttp.ClientSession() as http:
        await http.post(
            str(env.sandbox.make_url("/sandbox/admin/faults")),
            json={"provider": "adyen", "processingMs": 1200},
        )
    paid_before = ORPHAN_SESSIONS.labels("adyen", "paid")._value.get()
    open_before = ORPHAN_SESSIONS.labels("adyen", "left_open")._value.get()
    created = await env.create("orphan-adyen")
    assert [(a["provider"], a["outcome"]) for a in created["routing"]["attempts"]] == [
        ("adyen", "timeout"),
        ("stripe", "created"),
    ]
    session_id = created["sessionId"]
    view = await env.read(session_id)
    assert view["orphans"] == [
        {"provider": "adyen", "providerSessionId": None, "outcome": "timeout", "status": "open"}
    ]
    assert ORPHAN_SESSIONS.labels("adyen", "left_open")._value.get() == open_before + 1
    state = env.sandbox_state

    def adyen_orphan() -> Any:
        held = [s for s in state.sessions.get("adyen", {}).values()]
        return held[0] if held and held[0].gateway_session_id == session_id else None

    orphan = await wait_for(adyen_orphan)
    # the customer pays the orphan at Adyen; Adyen notifies the gateway
    status, _ = await press(str(env.sandbox.make_url(f"/sandbox/pay/adyen/{orphan.id}")), "pay")
    assert status == 303
    await wait_for(lambda: ORPHAN_SESSIONS.labels("adyen", "paid")._value.get() > paid_before)
    assert "orphan provider session" in caplog.text
    view = await env.read(session_id)
    assert (view["provider"], view["status"]) == ("stripe", "PENDING")
    assert view["paymentId"] is None
