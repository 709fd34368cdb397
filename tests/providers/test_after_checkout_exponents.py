"""Zero- and three-decimal currencies through the calls after the checkout, against the strict
sandbox (issue 13): JPY has no minor unit and KWD three, which Stripe takes in multiples of
0.010. What is sent is exact, what comes back reads the same amount, and what Stripe cannot be
sent exactly is refused before anything is sent."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from gateway.domain.session import RefundStatus, SessionStatus
from providers.base import FlowNotSupported, PaymentReference, RefundInput
from providers.stripe.adapter import StripeAdapter
from tests.contracts.strict_sandbox import StrictSandbox
from tests.providers.hosted_inputs import WebhookSink
from tests.providers.test_stripe_payments import PI_CAPTURE, REFUND, charge, form_of, mandate


@pytest.fixture
def adapter(sandbox: StrictSandbox, http: aiohttp.ClientSession) -> StripeAdapter:
    return StripeAdapter(sandbox.provider_config("stripe"), http)


@pytest.fixture
def sink(env: tuple[StrictSandbox, Any]) -> WebhookSink:
    sink: WebhookSink = env[1]
    return sink


def _in(currency: str, total: str) -> dict[str, Any]:
    return {
        "currency": currency,
        "amount": {"total": total, "shipping": "0", "tax": "0"},
        "orderItems": [{"name": "Tea", "quantity": 1, "unitPrice": total}],
        "shipping": None,
        "captureMethod": "manual",
    }


@pytest.mark.parametrize(
    ("currency", "total", "capture", "minor", "back", "refund_minor", "inexact"),
    [
        ("JPY", "1000", "600", 600, "250", 250, "0.5"),
        ("KWD", "1.250", "1.000", 1000, "0.500", 500, "0.005"),
    ],
)
async def test_manual_charge_capture_and_refund_are_exact(
    sandbox: StrictSandbox,
    adapter: StripeAdapter,
    sink: WebhookSink,
    currency: str,
    total: str,
    capture: str,
    minor: int,
    back: str,
    refund_minor: int,
    inexact: str,
) -> None:
    customer, method = await mandate(adapter, sink)
    held = await adapter.charge_saved(charge(customer, method, **_in(currency, total)), timeout=5)
    assert (held.status, held.amount, held.currency) == (
        SessionStatus.AUTHORIZED,
        Decimal(total),
        currency,
    )
    assert held.payment_id is not None
    payment = PaymentReference(
        session_reference=held.payment_id,
        payment_id=held.payment_id,
        capture_id=None,
        currency=currency,
        amount=Decimal(total),
    )
    with pytest.raises(FlowNotSupported):
        await adapter.capture_payment(
            payment, Decimal(inexact), idempotency_key="cap-inexact", timeout=5
        )
    captured = await adapter.capture_payment(
        payment, Decimal(capture), idempotency_key="cap", timeout=5
    )
    assert form_of(sandbox, PI_CAPTURE) == {"amount_to_capture": minor}
    assert (captured.status, captured.amount, captured.currency) == (
        SessionStatus.COMPLETED,
        Decimal(capture),
        currency,
    )
    asked = RefundInput(
        payment=payment,
        refund_id="ref_x",
        session_id="ses_x",
        amount=Decimal(back),
        currency=currency,
        reason=None,
        idempotency_key="refund",
    )
    outcome = await adapter.refund_payment(asked, timeout=5)
    assert outcome.status in (RefundStatus.PENDING, RefundStatus.SUCCEEDED)
    assert form_of(sandbox, REFUND)["amount"] == refund_minor
    assert sandbox.violations == []
