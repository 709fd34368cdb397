"""What each adapter reports of the money in a provider's verdict: the exact amount in major
units (with the provider's own minor-unit table) and the currency; and PayPal's one table of
payment statuses, the same for its webhooks and for the answers of the gateway's own calls."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest

from gateway.domain.session import SessionStatus
from providers.adyen.webhooks import event_from_item
from providers.base import AUTHORIZE, CAPTURE
from providers.paypal.payments import completion_event
from providers.paypal.transformers import PAYMENT_STATUS
from providers.paypal.webhooks import event_from_paypal
from providers.stripe.webhooks import event_from_payload

S = SessionStatus


def _stripe(amount_total: Any, currency: Any) -> dict[str, Any]:
    return {
        "id": "evt_1",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": "cs_1",
                "object": "checkout.session",
                "payment_status": "paid",
                "amount_total": amount_total,
                "currency": currency,
                "metadata": {"gateway_session_id": "s1"},
            }
        },
    }


@pytest.mark.parametrize(
    ("amount_total", "currency", "expected"),
    [
        (14076, "aud", (Decimal("140.76"), "AUD")),
        (500, "jpy", (Decimal(500), "JPY")),
        (10000, "isk", (Decimal(100), "ISK")),  # Stripe: ISK two-decimal in the API
        (1230, "kwd", (Decimal("1.230"), "KWD")),
        (
            99999999999999999999999999999999,
            "usd",
            (Decimal("999999999999999999999999999999.99"), "USD"),
        ),
        (None, "aud", (None, None)),
        (True, "aud", (None, None)),
        (14076, "xts", (None, None)),
    ],
)
def test_stripe_reports_amount_total_exactly(
    amount_total: Any, currency: Any, expected: tuple[Decimal | None, str | None]
) -> None:
    event = event_from_payload(_stripe(amount_total, currency))
    assert (event.amount, event.currency) == expected


def _adyen(value: Any, currency: str) -> dict[str, Any]:
    return {
        "eventCode": "AUTHORISATION",
        "success": "true",
        "pspReference": "PSP1",
        "amount": {"value": value, "currency": currency},
        "additionalData": {"checkoutSessionId": "CS1", "metadata.gatewaySessionId": "s1"},
    }


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        (14076, "AUD", (Decimal("140.76"), "AUD")),
        (100000, "CLP", (Decimal(1000), "CLP")),  # Adyen: CLP two-decimal
        (1000, "CVE", (Decimal(1000), "CVE")),  # Adyen: CVE zero-decimal
        (1234, "BHD", (Decimal("1.234"), "BHD")),
        ("14076", "AUD", (None, None)),
        (14076, "XXX", (None, "XXX")),
    ],
)
def test_adyen_reports_the_notification_amount_exactly(
    value: Any, currency: str, expected: tuple[Decimal | None, str | None]
) -> None:
    event = event_from_item(_adyen(value, currency))
    assert (event.amount, event.currency) == expected


def _capture_event(value: Any, currency: str = "AUD") -> dict[str, Any]:
    return {
        "id": "WH-1",
        "event_type": "PAYMENT.CAPTURE.COMPLETED",
        "resource": {
            "id": "CAP1",
            "status": "COMPLETED",
            "amount": {"currency_code": currency, "value": value},
            "custom_id": "s1",
            "supplementary_data": {"related_ids": {"order_id": "ORDER1"}},
        },
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("140.76", Decimal("140.76")),
        ("1000", Decimal(1000)),
        ("1e3", None),
        (140.76, None),
        # digits of other scripts are no PayPal value (its pattern is ASCII), even when Python's
        # Decimal would read them as the session's amount
        ("\u0661\u0664\u0660.\u0667\u0666", None),
        ("\uff11\uff14\uff10.\uff17\uff16", None),
    ],
)
def test_paypal_reports_the_payment_amount_exactly(value: Any, expected: Decimal | None) -> None:
    event = event_from_paypal(_capture_event(value))
    assert event.amount == expected
    assert event.currency == ("AUD" if expected is not None else None)


def _order(kind: str | None, state: str | None, units: int = 1) -> dict[str, Any]:
    unit: dict[str, Any] = {"custom_id": "s1", "amount": {"currency_code": "AUD", "value": "70.38"}}
    if kind is not None:
        payment = {"id": "PAY1", "amount": {"currency_code": "AUD", "value": "70.38"}}
        if state is not None:
            payment["status"] = state
        unit["payments"] = {kind: [payment]}
    return {"id": "ORDER1", "status": "COMPLETED", "purchase_units": [unit] * units}


def test_paypal_order_events_report_the_order_total() -> None:
    event = event_from_paypal(
        {"id": "WH-2", "event_type": "CHECKOUT.ORDER.APPROVED", "resource": _order(None, None, 2)}
    )
    assert (event.amount, event.currency) == (Decimal("140.76"), "AUD")


def _units(*values: str) -> dict[str, Any]:
    units = [{"custom_id": "s1", "amount": {"currency_code": "AUD", "value": v}} for v in values]
    return {
        "id": "WH-3",
        "event_type": "CHECKOUT.ORDER.APPROVED",
        "resource": {"purchase_units": units},
    }


def test_paypal_order_totals_are_summed_exactly_or_not_at_all() -> None:
    """PayPal values have up to 32 digits before the point and 6 after: a sum in Python's
    default 28-digit context would round it; in the money context it is exact, and a sum too
    long even for that is no understandable amount (never a rounded one)."""
    big = "9" * 32 + ".999999"
    event = event_from_paypal(_units(big, big))
    assert event.amount == Decimal("1" + "9" * 32 + ".999998")
    twenty = Decimal(f"{int(big.replace('.', '')) * 20}E-6")  # 40 digits, exactly
    assert event_from_paypal(_units(*[big] * 20)).amount == twenty
    assert event_from_paypal(_units(*["9" * 32 + ".999999"] * 2000)).amount is None


#: Every status PayPal documents for captures and authorizations, and a few it does not.
_STATES = [
    "COMPLETED", "DECLINED", "PARTIALLY_REFUNDED", "PENDING", "REFUNDED", "FAILED", "CREATED",
    "CAPTURED", "DENIED", "PARTIALLY_CAPTURED", "VOIDED", "EXPIRED", "SOMETHING_NEW", None,
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "state"), list(itertools.product(["captures", "authorizations"], _STATES))
)
def test_paypal_maps_a_payment_status_the_same_everywhere(kind: str, state: str | None) -> None:
    """The order webhook, the capture/authorization webhook and the answer of the gateway's
    own call all judge one payment by the one table."""
    expected = PAYMENT_STATUS.get((kind, state or ""), S.PROCESSING)
    order = _order(kind, state)
    order_event = event_from_paypal(
        {"id": "WH-3", "event_type": "CHECKOUT.ORDER.COMPLETED", "resource": order}
    )
    answer = completion_event(
        order, intent=CAPTURE if kind == "captures" else AUTHORIZE, request_id="r"
    )
    assert answer is not None
    assert order_event.status is expected
    assert answer.status is expected
    if kind == "captures" and state is not None:
        hook = _capture_event("70.38")
        hook["resource"]["status"] = state
        assert event_from_paypal(hook).status is expected


def test_paypal_success_only_when_money_is_secured() -> None:
    successes = {key for key, status in PAYMENT_STATUS.items() if status is S.COMPLETED}
    assert successes == {
        ("captures", "COMPLETED"),
        ("authorizations", "CAPTURED"),
        ("authorizations", "PARTIALLY_CAPTURED"),
    }
    # money held, not taken: AUTHORIZED (the merchant captures or voids it)
    held = {key for key, status in PAYMENT_STATUS.items() if status is S.AUTHORIZED}
    assert held == {("authorizations", "CREATED")}
    # an order whose authorization has been captured since is paid (both paths agree)
    order = _order("authorizations", "CAPTURED")
    hook = {"id": "WH-4", "event_type": "CHECKOUT.ORDER.COMPLETED", "resource": order}
    assert event_from_paypal(hook).status is S.COMPLETED
