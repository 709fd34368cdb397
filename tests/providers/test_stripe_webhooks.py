"""Stripe event mapping (:mod:`providers.stripe.webhooks`) for the events after the checkout, and
the answers of :mod:`providers.stripe.payments`, exactly: statuses, amounts, decline codes,
refund updates, and the sandbox's ``declineOffSession`` setting."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from gateway.domain.session import RefundStatus, SessionStatus
from providers.base import ProviderRejected
from providers.sandbox.state import FaultSettings
from providers.stripe.adapter import StripeAdapter
from providers.stripe.payments import decline_outcome, intent_outcome, refund_outcome
from providers.stripe.webhooks import event_from_payload, events_from_payload
from tests.contracts.strict_sandbox import StrictSandbox
from tests.providers.stripe_support import signed_event


def _event(event_type: str, obj: dict[str, Any], event_id: str = "evt_1") -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": 1_700_000_000,
        "data": {"object": obj},
    }


def _intent(**changes: Any) -> dict[str, Any]:
    intent: dict[str, Any] = {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 14076,
        "amount_capturable": 0,
        "amount_received": 0,
        "currency": "aud",
        "customer": "cus_1",
        "payment_method": "pm_1",
        "status": "succeeded",
        "metadata": {"gateway_session_id": "ses_9", "order_reference": "ORD-1"},
    }
    intent.update(changes)
    return intent


@pytest.mark.parametrize(
    ("event_type", "changes", "status", "amount"),
    [
        (
            "payment_intent.amount_capturable_updated",
            {"status": "requires_capture", "amount_capturable": 14076},
            SessionStatus.AUTHORIZED,
            Decimal("140.76"),
        ),
        (
            "payment_intent.succeeded",
            {"amount_received": 10000},
            SessionStatus.COMPLETED,
            Decimal("100.00"),  # a partial capture: what was received
        ),
        (
            "payment_intent.canceled",
            {"status": "canceled"},
            SessionStatus.CANCELLED,
            Decimal("140.76"),
        ),
    ],
)
def test_payment_intent_events(
    event_type: str, changes: dict[str, Any], status: SessionStatus, amount: Decimal
) -> None:
    event = event_from_payload(_event(event_type, _intent(**changes)))
    assert event.status is status
    assert (event.amount, event.currency) == (amount, "AUD")
    assert (event.session_id, event.payment_id) == ("ses_9", "pi_1")
    assert (event.customer_id, event.payment_method_id) == ("cus_1", "pm_1")
    assert event.reference is None
    assert event.refund is None
    assert event.occurred_at is not None


def test_payment_failed_carries_the_decline_code() -> None:
    error = {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"}
    obj = _intent(status="requires_payment_method", last_payment_error=error)
    event = event_from_payload(_event("payment_intent.payment_failed", obj))
    assert event.status is SessionStatus.FAILED
    assert event.failure_reason == "insufficient_funds"
    without = _intent(status="requires_payment_method", last_payment_error={"code": "expired_card"})
    assert event_from_payload(_event("payment_intent.payment_failed", without)).failure_reason == (
        "expired_card"
    )


def test_other_payment_intent_events_move_nothing() -> None:
    event = event_from_payload(_event("payment_intent.created", _intent(status="processing")))
    assert event.status is None


def _refund(**changes: Any) -> dict[str, Any]:
    refund: dict[str, Any] = {
        "id": "re_1",
        "object": "refund",
        "amount": 4000,
        "currency": "aud",
        "payment_intent": "pi_1",
        "status": "succeeded",
        "metadata": {"gateway_refund_id": "ref_1", "gateway_session_id": "ses_9"},
    }
    refund.update(changes)
    return refund


@pytest.mark.parametrize(
    ("stripe_status", "status", "failure"),
    [
        ("pending", RefundStatus.PENDING, None),
        ("requires_action", RefundStatus.PENDING, None),
        ("succeeded", RefundStatus.SUCCEEDED, None),
        ("failed", RefundStatus.FAILED, "lost_or_stolen_card"),
        ("canceled", RefundStatus.FAILED, "canceled"),
    ],
)
def test_refund_updated(stripe_status: str, status: RefundStatus, failure: str | None) -> None:
    reason = "lost_or_stolen_card" if stripe_status == "failed" else None
    obj = _refund(status=stripe_status, failure_reason=reason)
    event = event_from_payload(_event("refund.updated", obj))
    assert event.status is None
    assert event.session_id == "ses_9"
    assert event.refund is not None
    assert event.refund.status is status
    assert (event.refund.refund_id, event.refund.provider_refund_id) == ("ref_1", "re_1")
    assert (event.refund.amount, event.refund.currency) == (Decimal("40.00"), "AUD")
    assert event.refund.failure_reason == failure


def test_unknown_refund_status_is_no_update() -> None:
    event = event_from_payload(_event("refund.updated", _refund(status="mystery")))
    assert event.refund is None
    assert event.status is None


def test_charge_refunded_gives_one_event_per_refund() -> None:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "amount": 14076,
        "currency": "aud",
        "metadata": {"gateway_session_id": "ses_9"},
        "refunds": {
            "object": "list",
            "data": [_refund(), _refund(id="re_2", amount=76, metadata={})],
            "has_more": False,
        },
    }
    events = events_from_payload(_event("charge.refunded", charge, "evt_7"))
    assert [e.event_id for e in events] == ["evt_7/re_1", "evt_7/re_2"]
    # a refund without our metadata still names the charge's session
    assert [e.session_id for e in events] == ["ses_9", "ses_9"]
    assert events[1].refund is not None
    assert events[1].refund.refund_id is None
    assert events[1].refund.amount == Decimal("0.76")

    bare = events_from_payload(_event("charge.refunded", {**charge, "refunds": None}))
    assert len(bare) == 1
    assert bare[0].refund is None


def test_setup_session_completion_with_an_expanded_setup_intent() -> None:
    session = {
        "id": "cs_1",
        "object": "checkout.session",
        "mode": "setup",
        "status": "complete",
        "payment_status": "no_payment_required",
        "amount_total": None,
        "currency": "aud",
        "customer": "cus_5",
        "payment_intent": None,
        "setup_intent": {"id": "seti_1", "object": "setup_intent", "payment_method": "pm_5"},
        "metadata": {"gateway_session_id": "ses_5", "gateway_saved_method": "off_session"},
    }
    event = event_from_payload(_event("checkout.session.completed", session))
    assert event.status is SessionStatus.COMPLETED
    assert (event.customer_id, event.payment_method_id) == ("cus_5", "pm_5")
    assert event.extra["setup_intent"] == "seti_1"
    assert (event.amount, event.currency) == (Decimal(0), "AUD")


async def test_setup_lookup_failure_is_retryable(
    sandbox: StrictSandbox, http: aiohttp.ClientSession
) -> None:
    """The SetupIntent lookup of an unknown intent fails: the webhook is answered with an
    error and Stripe sends it again (no event without the method)."""
    adapter = StripeAdapter(sandbox.provider_config("stripe"), http)
    secret = sandbox.provider_config("stripe").webhook_secret
    assert secret is not None
    headers, body = signed_event(
        secret,
        obj={
            "mode": "setup",
            "payment_status": "no_payment_required",
            "payment_intent": None,
            "setup_intent": "seti_missing",
            "customer": "cus_1",
            "metadata": {"gateway_session_id": "ses_1", "gateway_saved_method": "off_session"},
        },
    )
    with pytest.raises(ProviderRejected):
        await adapter.parse_webhook(headers, body)


def test_intent_answers() -> None:
    held = intent_outcome(_intent(status="requires_capture", amount_capturable=14076))
    assert (held.status, held.amount) == (SessionStatus.AUTHORIZED, Decimal("140.76"))
    assert intent_outcome(_intent(status="processing")).status is SessionStatus.PROCESSING
    assert intent_outcome(_intent(status="requires_confirmation")).status is (
        SessionStatus.PROCESSING
    )
    action = intent_outcome(_intent(status="requires_action"))
    assert (action.status, action.failure_reason) == (
        SessionStatus.FAILED,
        "authentication_required",
    )
    assert decline_outcome({"type": "invalid_request_error", "code": "x"}) is None
    declined = decline_outcome({"type": "card_error", "code": "card_declined"})
    assert declined is not None
    assert (declined.status, declined.failure_reason) == (SessionStatus.FAILED, "card_declined")
    assert refund_outcome({"id": "re_1", "status": "succeeded"}).status is RefundStatus.SUCCEEDED
    failed = refund_outcome({"id": "re_1", "status": "failed", "failure_reason": "expired"})
    assert (failed.status, failed.failure_reason) == (RefundStatus.FAILED, "expired")


def test_decline_off_session_setting() -> None:
    settings = FaultSettings.from_json({"provider": "stripe", "declineOffSession": True})
    assert settings.decline_off_session is True
    assert settings.to_json()["declineOffSession"] is True
    assert settings.copy().decline_off_session is True
    with pytest.raises(ValueError, match="declineOffSession"):
        FaultSettings.from_json({"declineOffSession": "yes"})
