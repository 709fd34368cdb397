"""Sample records shared by the store tests, and the writes production makes, through the
protocol only (so they run unchanged against every record store)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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
from gateway.store.base import (
    ClaimKind,
    Completion,
    CreationStore,
    OrphanJob,
    OutboxItem,
    StoredResponse,
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


async def store_session(
    store: CreationStore,
    record: SessionRecord,
    *,
    ttl_s: int,
    expires_at: float | None = None,
    outbox: Sequence[OutboxItem] = (),
    orphans: Sequence[OrphanJob] = (),
) -> None:
    """Store ``record`` the way a create does (claim a fresh key, then commit)."""
    key, token = f"sample-{uuid.uuid4().hex}", uuid.uuid4().hex
    begun = await store.begin_create(
        "samples", key, "fp", token=token, lease_ms=5_000, order_ref=None
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    done = Completion("samples", key, token, StoredResponse(201, b"{}"), ttl_s=ttl_s)
    assert await store.commit_create(
        record, done, ttl_s=ttl_s, expires_at=expires_at, outbox=outbox, orphans=orphans
    )


async def order_holder(store: CreationStore, scope: str, order_ref: str) -> str | None:
    """Who holds the reservation of ``order_ref`` (a session id, ``claim:<token>``, or None),
    as a create sees it; the probe leaves nothing behind."""
    key, token = f"probe-{uuid.uuid4().hex}", uuid.uuid4().hex
    begun = await store.begin_create(
        scope, key, "probe", token=token, lease_ms=5_000, order_ref=order_ref
    )
    assert begun.claim.kind is ClaimKind.CLAIMED
    await store.release(scope, key, token)
    if begun.order_holder is None:
        await store.release_order(scope, order_ref, token)
    return begun.order_holder
