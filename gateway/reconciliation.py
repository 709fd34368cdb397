"""Provider verdicts reconciled against the session they are about.

A signed webhook or the answer of the gateway's own capture proves who sent it, not that it is
about the money the session asked for. Before a verdict that money was taken, is held or is
moving (``COMPLETED``, ``AUTHORIZED`` or ``PROCESSING``, an approval included) moves a session,
its amount and currency must equal the session's exactly (``Decimal`` equality, so ``140.76``
and ``140.760`` agree): ``amount.total``, except for the capture of an AUTHORIZED session (a
manual capture may take less), which must equal the capture the merchant asked
(``captureRequested``; the total when none was asked through the gateway), and a COMPLETED
session's repeated verdict, which must equal what it captured (``amountCaptured``). A verdict
that carries no amount, or one the adapter could not read, cannot be reconciled and is treated
the same as a different one.

A mismatch never completes the session (nor starts a capture of a PayPal approval); the
lifecycle records it on the session as ``amountMismatch`` (visible on ``GET``), notifies the
merchant with ``payment_session.updated``, counts it in ``gateway_amount_mismatches_total`` and
logs an error. From then on the session holds its order for good: money of an amount nobody
agreed to may have moved, and a person decides (refund or settle at the provider).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from gateway.domain.session import AmountMismatch, SessionRecord, SessionStatus
from providers.base import ProviderEvent

__all__ = ["MONEY_STATUSES", "expected_amount", "mismatch", "reports_money"]

#: verdicts that say the payer's money was taken, is held for a capture, or is moving
MONEY_STATUSES = frozenset(
    {SessionStatus.PROCESSING, SessionStatus.AUTHORIZED, SessionStatus.COMPLETED}
)


def reports_money(event: ProviderEvent) -> bool:
    """True when ``event`` reports money taken or moving at the provider (an approval that
    still awaits the gateway's capture moves none)."""
    return event.status in MONEY_STATUSES and not event.awaits_completion


def mismatch(
    record: SessionRecord, event: ProviderEvent, *, source: str, at: datetime
) -> AmountMismatch | None:
    """The mismatch between ``event`` and ``record``, or None when they agree (or the event
    moves no money and so needs no reconciling)."""
    if record.sessionType == "setup":  # it saves a method and moves no money
        return None
    if event.status not in MONEY_STATUSES:
        return None
    currency = event.currency.upper() if event.currency else None
    agreed = currency == record.currency and event.amount == expected_amount(record, event)
    if event.amount is not None and agreed:
        return None
    assert event.status is not None
    return AmountMismatch(
        provider=event.provider,
        source=source,
        eventId=event.event_id or None,
        eventType=event.event_type,
        reportedStatus=event.status,
        amount=event.amount,
        currency=currency,
        at=at,
    )


def expected_amount(record: SessionRecord, event: ProviderEvent) -> Decimal:
    """The amount ``event`` must report to agree with ``record`` (see the module docstring)."""
    if event.status is SessionStatus.COMPLETED:
        if record.status is SessionStatus.AUTHORIZED:
            requested = record.captureRequested
            return requested if requested is not None else record.amount.total
        if record.status is SessionStatus.COMPLETED:
            return record.amountCaptured
    return record.amount.total
