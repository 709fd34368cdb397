"""A bug in an adapter's cancel or completion call is typed at the adapter boundary.

The real Stripe and PayPal adapters, talking to the sandbox over real sockets, with one bug
injected into the call under test: it raises a ``KeyError``/``TypeError`` whose message quotes
personal data, as a transformer reading a field the provider did not send would. The merchant's
cancel answers a defined 502 (never a 500) and can be retried, the expiry sweeper and the
completion of an approved payment retry later, nothing logs a traceback or the message, and the
fault is counted per provider and operation and against the provider's circuit.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.appkeys import ADAPTERS
from providers.base import ProviderEvent
from providers.paypal.adapter import PayPalAdapter
from providers.stripe.adapter import StripeAdapter
from tests.api.conftest import headers, seed
from tests.conftest import StoreFactory
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_cancel_expiry import backdate, cancel, pay_page_status
from tests.lifecycle.test_loop import read_when
from tests.lifecycle.test_paypal_capture import approval, pp_of
from tests.lifecycle.test_webhook_signatures import deliver

PERSONAL = "jane.doe@example.com"


class StripeWithACancelBug(StripeAdapter):
    """Stripe whose cancel fails ``bugs`` times before calling Stripe."""

    bugs = 1

    async def cancel_session(self, reference: str, *, timeout: float) -> None:
        if self.bugs > 0:
            self.bugs -= 1
            raise KeyError(PERSONAL)
        await super().cancel_session(reference, timeout=timeout)


class PayPalWithACaptureBug(PayPalAdapter):
    """PayPal whose capture fails ``bugs`` times before calling PayPal."""

    bugs = 2

    async def complete_approved(
        self, reference: str, *, intent: str, idempotency_key: str, timeout: float
    ) -> ProviderEvent | None:
        if self.bugs > 0:
            self.bugs -= 1
            raise TypeError(f"cannot read capture of {PERSONAL}")
        return await super().complete_approved(
            reference, intent=intent, idempotency_key=idempotency_key, timeout=timeout
        )


def faults(provider: str, operation: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_adapter_faults_total", {"provider": provider, "operation": operation}
    )
    return value or 0.0


def inject(env: Env, provider: str, cls: type[Any]) -> Any:
    """Replace ``provider``'s adapter by ``cls`` built on the same config and connection pool."""
    adapters = env.client.app[ADAPTERS]
    real = adapters[provider]
    buggy = cls(real.config, real._http.session)
    adapters[provider] = buggy
    return buggy


def assert_typed_only(caplog: pytest.LogCaptureFixture, operation: str, kind: str) -> None:
    """The fault was logged as an error by its type, and nothing logged a traceback or the
    exception's message."""
    typed = [r for r in caplog.records if getattr(r, "exception_type", None)]
    assert typed, "the fault was not logged"
    assert {(r.levelname, r.exception_type, r.getMessage()) for r in typed} == {  # type: ignore[attr-defined]
        ("ERROR", kind, f"adapter raised an unexpected exception in {operation}")
    }
    assert not [r.getMessage() for r in caplog.records if r.exc_info]
    assert PERSONAL not in caplog.text


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_cancel_bug_is_a_502_the_merchant_can_retry(
    lifecycle_env: EnvFactory,
    store_factory: StoreFactory,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = await lifecycle_env(
        "stripe",
        store=await store_factory(kind),
        circuit_failure_threshold=1,
        circuit_open_seconds=60,
    )
    created = await env.create()
    session_id = created["sessionId"]
    inject(env, "stripe", StripeWithACancelBug)
    before = faults("stripe", "cancel_session")

    response = await cancel(env, session_id)
    assert response.status == 502, await response.text()
    body = await response.json()
    assert (body["error"], body["code"]) == ("Error", 502)
    assert body["details"] == {"provider": "stripe", "outcome": "adapter_error"}
    assert faults("stripe", "cancel_session") == before + 1
    assert_typed_only(caplog, "cancel_session", "KeyError")
    view = await env.read(session_id)
    assert (view["status"], view["cancellationReason"], len(view["transitions"])) == (
        "PENDING",
        None,
        1,
    )
    # counted against Stripe's circuit (threshold 1): routing now skips Stripe
    simulated = await env.client.post(
        "/api/v1/routing/simulate",
        json=seed(orderReference="ORD-ADAPTER-FAULT-SIM"),
        headers=headers(None),
    )
    excluded = {e["provider"]: e["reason"] for e in (await simulated.json())["excluded"]}
    assert "circuit open" in excluded["stripe"]

    # the claim was released: the merchant's retry cancels at Stripe and locally
    retried = await cancel(env, session_id)
    assert retried.status == 200, await retried.text()
    assert (await retried.json())["status"] == "CANCELLED"
    assert await pay_page_status(env, created["checkoutUrl"]) == 410


async def test_a_cancel_bug_in_the_sweeper_is_retried_later(
    lifecycle_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await lifecycle_env("stripe", expiry_sweep_interval_seconds=3600)  # sweeper idle
    first = await env.create("k1")
    second = await env.create("k2", orderReference="ORD-ADAPTER-FAULT-2")
    for created in (first, second):
        await backdate(env, created["sessionId"])
    inject(env, "stripe", StripeWithACancelBug)
    before = faults("stripe", "cancel_session")

    # one sweep takes both: the bug hits one, the other is still expired at Stripe
    assert await env.lifecycle.sweep_once() == 2
    assert faults("stripe", "cancel_session") == before + 1
    assert_typed_only(caplog, "cancel_session", "KeyError")
    pages = sorted([await pay_page_status(env, c["checkoutUrl"]) for c in (first, second)])
    assert pages == [200, 410]
    for created in (first, second):
        assert (await env.read(created["sessionId"]))["status"] == "EXPIRED"
    # the one the bug hit stays in the sweeper's index, due again later
    due = await env.store.claim_expiries(now=4e9, lease_s=1.0, limit=10)
    assert len(due) == 1


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_capture_bug_is_retried_until_the_payment_is_captured(
    lifecycle_env: EnvFactory,
    store_factory: StoreFactory,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = await lifecycle_env("paypal", sink=True, store=await store_factory(kind))
    session_id, order_id, approved = await approval(env)
    buggy = inject(env, "paypal", PayPalWithACaptureBug)
    before = faults("paypal", "complete_approved")

    assert (await deliver(env, "paypal", approved.body, approved.headers))[0] == 200
    # tried at once, then by the sweeper after 1 s and again after that: captured once
    view = await read_when(env, session_id, "COMPLETED", timeout=4.5)
    assert buggy.bugs == 0
    assert view["transitions"][-1]["source"] == "gateway:capture"
    [made] = pp_of(env).completions
    assert made.request_id == f"capture-{order_id}"
    assert faults("paypal", "complete_approved") == before + 2
    assert_typed_only(caplog, "complete_approved", "TypeError")
