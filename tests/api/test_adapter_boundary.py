"""The adapter boundary: whatever an adapter raises becomes a typed provider error there.

A bug in an adapter while it reads a provider's answer (here a Stripe adapter whose reading of
the answer raises ``ValueError``, as the real one once did for an ``expires_at`` in the year
10000) is recorded as the attempt, counted against Stripe's circuit and failed over; the
merchant never sees a 500.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.appkeys import ADAPTERS
from gateway.idempotency import session_id_for
from gateway.settings import SANDBOX_SECRETS
from providers.base import (
    AdapterFault,
    CreateSessionInput,
    ProviderEvent,
    ProviderSession,
    ProviderTimeout,
    adapter_fault,
)
from providers.stripe.adapter import StripeAdapter
from providers.stripe.webhooks import sign_payload
from tests.api.conftest import GatewayFactory, headers, seed
from tests.api.test_failover import admin, fault
from tests.api.test_retry_after_timeout import until
from tests.lifecycle.test_adapter_faults import StripeWithACancelBug, assert_typed_only, faults


class StripeWithAReadingBug(StripeAdapter):
    """Stripe whose reading of an answer or a webhook fails ``bugs`` times, after the call."""

    bugs = 1

    async def create_session(self, data: CreateSessionInput, *, timeout: float) -> ProviderSession:
        created = await super().create_session(data, timeout=timeout)
        if self.bugs > 0:
            self.bugs -= 1
            raise ValueError(f"year 10000 is out of range ({created.reference})")
        return created

    async def parse_webhook(
        self, headers: Mapping[str, str], raw_body: bytes
    ) -> list[ProviderEvent]:
        events = await super().parse_webhook(headers, raw_body)
        if self.bugs > 0:
            self.bugs -= 1
            raise ValueError("year 10000 is out of range")
        return events


def card_order(ref: str) -> dict[str, Any]:
    body = seed(orderReference=ref, currency="EUR")
    body["customer"]["billingAddress"]["country"] = "DE"
    body["customer"]["shippingAddress"]["country"] = "DE"
    return body


async def lying_stripe(aiohttp_server: Any) -> Any:
    """A Stripe that creates sessions whose expiry is in the year 10000."""

    async def create(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "id": "cs_test_liar",
                "object": "checkout.session",
                "url": "https://checkout.stripe.test/pay/cs_test_liar",
                "expires_at": 253_402_300_800,  # 10000-01-01: no datetime holds it
                "status": "open",
            }
        )

    app = web.Application()
    app.router.add_post("/v1/checkout/sessions", create)
    return await aiohttp_server(app)


async def test_an_adapter_exception_fails_over_and_opens_the_circuit(
    gateway: GatewayFactory, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    liar = await lying_stripe(aiohttp_server)
    client = await gateway(
        provider_stripe_base_url=str(liar.make_url("")).rstrip("/"),
        circuit_failure_threshold=1,
        circuit_open_seconds=60,
    )
    adapters = client.app[ADAPTERS]
    real = adapters["stripe"]
    adapters["stripe"] = StripeWithAReadingBug(real.config, real._http.session)
    body = card_order("ORD-BOUNDARY-1")
    simulated = await client.post("/api/v1/routing/simulate", json=body, headers=headers(None))
    assert (await simulated.json())["selectedProvider"] == "stripe"

    response = await client.post("/api/v1/sessions", json=body, headers=headers("boundary-1"))
    assert response.status == 201, await response.text()
    routing = (await response.json())["routing"]
    assert routing["selectedProvider"] == "adyen"
    attempts = [(a["provider"], a["outcome"], a.get("error")) for a in routing["attempts"]]
    assert attempts == [
        ("stripe", "adapter_error", "adapter failed (ValueError)"),
        ("adyen", "created", None),
    ]
    faults = [r for r in caplog.records if getattr(r, "exception_type", None)]
    assert [(r.levelname, r.exception_type, r.getMessage()) for r in faults] == [  # type: ignore[attr-defined]
        ("ERROR", "ValueError", "adapter raised an unexpected exception in create_session")
    ]
    assert not any(r.exc_info for r in faults)  # no traceback: it may quote request data
    # counted against Stripe's circuit: with a threshold of 1 it is open now
    again = await client.post(
        "/api/v1/routing/simulate", json=card_order("ORD-BOUNDARY-2"), headers=headers(None)
    )
    excluded = {e["provider"]: e["reason"] for e in (await again.json())["excluded"]}
    assert "circuit open" in excluded["stripe"]


def test_adapter_fault_keeps_provider_errors_and_types_the_rest() -> None:
    timeout = ProviderTimeout("stripe", "slow")
    assert adapter_fault("stripe", timeout) is timeout
    fault = adapter_fault("adyen", KeyError("jane@example.com"))
    assert isinstance(fault, AdapterFault)
    assert (fault.provider, fault.outcome, fault.retryable) == ("adyen", "adapter_error", True)
    assert fault.reason == "adapter failed (KeyError)"
    assert "jane" not in str(fault)


def _signed_stripe_event(created: int) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {
            "id": f"evt_boundary_{created}",
            "object": "event",
            "type": "checkout.session.expired",
            "created": created,
            "livemode": False,
            "data": {
                "object": {
                    "id": "cs_test_boundary",
                    "object": "checkout.session",
                    "metadata": {"gateway_session_id": "00000000-0000-4000-8000-000000000000"},
                }
            },
        }
    )
    now = int(time.time())
    signature = sign_payload(SANDBOX_SECRETS["stripe"]["webhook_secret"], now, body)
    return body, {"Content-Type": "application/json", "Stripe-Signature": f"t={now},v1={signature}"}


async def test_an_exception_out_of_a_webhook_parser_is_a_503_the_provider_retries(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await gateway()
    adapters = client.app[ADAPTERS]
    real = adapters["stripe"]
    adapters["stripe"] = StripeWithAReadingBug(real.config, real._http.session)
    # a genuine, signed event the parser fails to read
    body, hdrs = _signed_stripe_event(253_402_300_800)
    response = await client.post("/api/v1/webhooks/stripe", data=body, headers=hdrs)
    assert response.status == 503, await response.text()
    assert (await response.json())["error"] == "Service Unavailable"
    faults = [r for r in caplog.records if getattr(r, "exception_type", None)]
    assert [r.exception_type for r in faults] == ["ValueError"]  # type: ignore[attr-defined]
    # read without the bug, the event is acknowledged (unknown session)
    body, hdrs = _signed_stripe_event(int(time.time()))
    response = await client.post("/api/v1/webhooks/stripe", data=body, headers=hdrs)
    assert response.status == 200, await response.text()


async def test_an_adapter_fault_expiring_an_orphan_leaves_it_open_logged_by_type(
    gateway: GatewayFactory, sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Stripe times out, Adyen creates the session; expiring Stripe's orphan hits a bug in the
    cancel: the orphan stays open (visible for reconciliation, its job retried later with
    backoff), the fault is typed and counted, nothing logs a traceback."""
    client = await gateway(provider_timeout_seconds=0.5, request_deadline_seconds=5)
    adapters = client.app[ADAPTERS]
    real = adapters["stripe"]
    adapters["stripe"] = StripeWithACancelBug(real.config, real._http.session)
    await fault(sandbox, "stripe", processingMs=1500)
    before = faults("stripe", "cancel_session")
    created = await client.post(
        "/api/v1/sessions", json=card_order("ORD-ORPHAN-BUG"), headers=headers("orphan-bug")
    )
    assert created.status == 201, await created.text()
    attempts = (await created.json())["routing"]["attempts"]
    assert [(a["provider"], a["outcome"]) for a in attempts] == [
        ("stripe", "timeout"),
        ("adyen", "created"),
    ]

    async def cancel_failed() -> bool:
        return faults("stripe", "cancel_session") >= before + 1

    await until(cancel_failed)
    view = await client.get(
        f"/api/v1/sessions/{session_id_for('merchant-1', 'orphan-bug')}", headers=headers(None)
    )
    [orphan] = (await view.json())["orphans"]
    assert (orphan["provider"], orphan["status"]) == ("stripe", "open")
    assert_typed_only(caplog, "cancel_session", "KeyError")
    await admin(sandbox, "DELETE", "faults")
