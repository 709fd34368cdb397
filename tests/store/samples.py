"""Sample records shared by the store tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from gateway.domain.session import (
    Attempt,
    RoutingSummary,
    SessionAmount,
    SessionRecord,
    SessionStatus,
    Transition,
)


def make_session(
    session_id: str = "s_1", status: SessionStatus = SessionStatus.PENDING
) -> SessionRecord:
    created = datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=UTC)
    return SessionRecord(
        sessionId=session_id,
        merchantId="merchant-1",
        orderReference="ORD-2024-001",
        status=status,
        provider="stripe",
        providerSessionId="cs_test_123",
        checkoutUrl="https://checkout.example/pay/cs_test_123",
        currency="AUD",
        amount=SessionAmount(
            total=Decimal("140.76"), shipping=Decimal("9.95"), tax=Decimal("11.10")
        ),
        paymentMethod="card",
        captureMethod="automatic",
        routing=RoutingSummary(
            selectedProvider="stripe",
            score=0.8125,
            rulesVersion="v7",
            decisionId="d_1",
            attempts=[
                Attempt(provider="adyen", outcome="timeout", durationMs=2000.5, error="timeout"),
                Attempt(provider="stripe", outcome="created", durationMs=312.25),
            ],
            matchedRules=["aud-prefers-stripe"],
        ),
        createdAt=created,
        updatedAt=created.astimezone(timezone(timedelta(hours=10))),
        expiresAt=created + timedelta(hours=1),
        transitions=[Transition(status=status, at=created, source="api")],
        metadata={"cart": {"items": 2, "price": "0.10"}, "tags": ["a", "b"]},
    )
