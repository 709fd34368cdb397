"""The stored checkout session and its lifecycle states."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.domain.money import format_amount
from gateway.domain.titles import field_title

__all__ = [
    "FINAL_STATUSES",
    "AmountMismatch",
    "Attempt",
    "CancelClaim",
    "Operation",
    "OrphanSession",
    "Refund",
    "RefundStatus",
    "RoutingSummary",
    "SessionAmount",
    "SessionRecord",
    "SessionStatus",
    "Transition",
    "isoformat",
    "utcnow",
]


class SessionStatus(StrEnum):
    """Where a checkout session is in its lifecycle."""

    PENDING = "PENDING"
    REQUIRES_ACTION = "REQUIRES_ACTION"
    PROCESSING = "PROCESSING"
    #: the payment is authorized and waits for the merchant's capture (``captureMethod``
    #: manual); a capture completes it, a void (cancel) cancels it
    AUTHORIZED = "AUTHORIZED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


FINAL_STATUSES = frozenset(
    {SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.EXPIRED, SessionStatus.CANCELLED}
)


class RefundStatus(StrEnum):
    """Where a refund is: asked of the provider (PENDING), done, or refused by it."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """ISO 8601 UTC with a ``Z`` suffix and millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, field_title_generator=field_title)


class Attempt(_Record):
    """One try at creating the session at a provider."""

    provider: str
    outcome: str
    durationMs: float
    error: str | None = None


class OrphanSession(_Record):
    """A session a provider may hold for this gateway session's key that the customer must
    never pay: a try there failed ambiguously (timeout, 5xx, a refused key) and the session
    was created elsewhere. status: open (held or possibly held, not cancellable, or not
    cancelled yet), expired (expired at the provider: it can no longer be paid), not_expirable
    (the provider refused to expire it: no longer open), absent (the provider holds none and
    never will), lapsed (not expired within a day; it can no longer be paid)."""

    provider: str
    providerSessionId: str | None = None
    outcome: str
    status: str = "open"


class RoutingSummary(_Record):
    """What the client sees of the routing decision."""

    selectedProvider: str
    score: float = Field(description="The selected provider's routing score, 0 to 100")
    rulesVersion: str = Field(description="The routing rules that decided: version@content-hash")
    decisionId: str
    attempts: list[Attempt]
    matchedRules: list[str] = Field(default_factory=list)


class SessionAmount(_Record):
    """The order's amounts in major units, exact."""

    total: Decimal
    shipping: Decimal
    tax: Decimal

    def rendered(self, currency: str) -> dict[str, str]:
        """The amounts as every answer and notification shows them: plain decimal strings
        with the currency's ISO 4217 exponent ("100.00" USD, never "1E+2")."""
        return {
            "total": format_amount(self.total, currency),
            "shipping": format_amount(self.shipping, currency),
            "tax": format_amount(self.tax, currency),
        }


class Transition(_Record):
    """A status change, kept on the session for audit."""

    status: SessionStatus
    at: datetime
    source: str
    eventId: str | None = None
    #: who confirmed a move someone else asked for: a merchant's cancel (``source:
    #: merchant``) confirmed by the provider's cancel call (``api:stripe``) or event
    #: (``webhook:stripe``)
    confirmedBy: str | None = None


class CancelClaim(_Record):
    """Internal: the merchant cancel in progress (one at a time; see
    :meth:`gateway.lifecycle.LifecycleService.cancel`)."""

    token: str
    reason: str
    at: datetime


class AmountMismatch(_Record):
    """A provider's payment verdict whose amount or currency is not the session's: it did not
    complete the session (:mod:`gateway.reconciliation`)."""

    provider: str
    #: ``webhook`` or the gateway's own call (``capture`` | ``authorize``)
    source: str
    eventId: str | None
    eventType: str
    #: the status the provider's verdict asked for
    reportedStatus: SessionStatus
    #: what the provider reports; None when it reported no (understandable) amount
    amount: Decimal | None
    currency: str | None
    at: datetime

    def public(self) -> dict[str, Any]:
        """The JSON form shown on the session and in its notifications."""
        return {
            "provider": self.provider,
            "source": self.source,
            "eventId": self.eventId,
            "eventType": self.eventType,
            "reportedStatus": self.reportedStatus.value,
            "amount": str(self.amount) if self.amount is not None else None,
            "currency": self.currency,
            "at": isoformat(self.at),
        }


class Refund(_Record):
    """One refund of the session's captured money. ``amount`` counts against the refundable
    amount from the moment it is recorded (before the provider is asked) until it FAILED."""

    refundId: str
    amount: Decimal
    currency: str
    reason: str | None = None
    status: RefundStatus = RefundStatus.PENDING
    createdAt: datetime
    updatedAt: datetime
    #: the provider's id of the refund, once it answered
    providerRefundId: str | None = None
    failureReason: str | None = None
    #: internal: False until the provider acknowledged the call (a retry of the same
    #: Idempotency-Key re-sends it with the same provider key)
    submitted: bool = False

    def public(self, session_id: str) -> dict[str, Any]:
        """The JSON form answered by the refund calls and sent in ``refund.*`` notifications."""
        return {
            "refundId": self.refundId,
            "sessionId": session_id,
            "amount": format_amount(self.amount, self.currency),
            "currency": self.currency,
            "reason": self.reason,
            "status": self.status.value,
            "providerRefundId": self.providerRefundId,
            "failureReason": self.failureReason,
            "createdAt": isoformat(self.createdAt),
            "updatedAt": isoformat(self.updatedAt),
        }


class Operation(_Record):
    """Internal: one merchant POST on the session under an ``Idempotency-Key`` (capture,
    cancel, refund), kept on the session so that a retry replays its answer (or learns it is
    still in flight) on every store without a separate key space."""

    #: the merchant's Idempotency-Key, and what it was sent with
    key: str
    kind: str
    fingerprint: str
    #: set while the call runs; a holder that died frees it when ``leaseUntil`` passes
    token: str | None = None
    leaseUntil: datetime | None = None
    #: the answer, once there is one (replayed byte for byte)
    status: int | None = None
    body: str | None = None
    at: datetime


class SessionRecord(_Record):
    """A checkout session as the gateway stores it."""

    sessionId: str
    merchantId: str
    orderReference: str
    status: SessionStatus
    provider: str
    providerSessionId: str
    #: the hosted page; None for a customer-absent charge (``next_in_series``)
    checkoutUrl: str | None
    currency: str
    amount: SessionAmount
    paymentMethod: str
    captureMethod: str
    routing: RoutingSummary
    createdAt: datetime
    updatedAt: datetime
    expiresAt: datetime
    transitions: list[Transition] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: compare-and-set token: bumped by every lifecycle move (records written before it was
    #: introduced read as 0)
    version: int = 0
    billingCountry: str | None = None
    sessionType: str = "one_time"
    savePaymentMethod: bool = False
    customerReference: str | None = None
    #: the merchant's redirect URLs, for providers that send the customer back to one URL
    successUrl: str | None = None
    failureUrl: str | None = None
    #: what the provider reported: its customer, the saved payment method (or mandate) and
    #: the payment itself
    customerId: str | None = None
    paymentMethodId: str | None = None
    paymentId: str | None = None
    failureReason: str | None = None
    cancellationReason: str | None = None
    #: internal, never shown: the call (``capture`` | ``authorize``) the gateway still owes the
    #: provider to move the money of an approved payment (:mod:`gateway.completion`)
    pendingCompletion: str | None = None
    #: internal: the merchant cancel in progress; kept on the CANCELLED session it produced,
    #: cleared by every other final move
    cancelClaim: CancelClaim | None = None
    #: the provider's hosted page can still take the payer's money until then, although the
    #: session is CANCELLED (providers without a cancel call): the order stays held
    payableUntil: datetime | None = None
    #: the last provider verdict whose amount or currency differed from the session's
    amountMismatch: AmountMismatch | None = None
    #: sessions other providers may hold for this key (see :class:`OrphanSession`)
    orphans: list[OrphanSession] = Field(default_factory=list)
    #: ``next_in_series``: the session whose saved method (mandate) this one charged
    mandateSessionId: str | None = None
    #: the provider's id of the capture, where captures have their own (PayPal, Adyen)
    captureId: str | None = None
    #: money taken so far (set when the session completes: the total, or a manual capture's
    #: amount) and refunds of it
    amountCaptured: Decimal = Decimal(0)
    refunds: list[Refund] = Field(default_factory=list)
    #: when the authorization of a manual-capture session lapses at the provider
    authorizationExpiresAt: datetime | None = None
    #: internal: the amount of a merchant's capture asked of the provider and not confirmed
    #: yet (an AUTHORIZED session whose capture the provider's webhook completes); a capture
    #: event is reconciled against it
    captureRequested: Decimal | None = None
    #: internal: ``payment_session.authorization_expiring`` was sent (it is sent once)
    authorizationExpiryNotified: bool = False
    #: internal: the merchant calls made on this session (:class:`Operation`)
    operations: list[Operation] = Field(default_factory=list)

    @property
    def amount_refunded(self) -> Decimal:
        """Refunded or being refunded: every refund that has not FAILED."""
        return sum(
            (r.amount for r in self.refunds if r.status is not RefundStatus.FAILED), Decimal(0)
        )

    @property
    def refundable(self) -> Decimal:
        """What may still be refunded: captured minus every refund that has not FAILED."""
        return self.amountCaptured - self.amount_refunded

    def public(self) -> dict[str, Any]:
        """The representation answered by ``GET /api/v1/sessions/{id}``."""
        return {
            "sessionId": self.sessionId,
            "orderReference": self.orderReference,
            "status": self.status.value,
            "checkoutUrl": self.checkoutUrl,
            "provider": self.provider,
            "providerSessionId": self.providerSessionId,
            "currency": self.currency,
            "amount": self.amount.rendered(self.currency),
            "paymentMethod": self.paymentMethod,
            "captureMethod": self.captureMethod,
            "routing": self.routing.model_dump(mode="json"),
            "createdAt": isoformat(self.createdAt),
            "updatedAt": isoformat(self.updatedAt),
            "expiresAt": isoformat(self.expiresAt),
            "sessionType": self.sessionType,
            "savePaymentMethod": self.savePaymentMethod,
            "customerReference": self.customerReference,
            "customerId": self.customerId,
            "paymentMethodId": self.paymentMethodId,
            "paymentId": self.paymentId,
            "mandateSessionId": self.mandateSessionId,
            "amountCaptured": format_amount(self.amountCaptured, self.currency),
            "amountRefunded": format_amount(self.amount_refunded, self.currency),
            "authorizationExpiresAt": (
                isoformat(self.authorizationExpiresAt) if self.authorizationExpiresAt else None
            ),
            "failureReason": self.failureReason,
            "cancellationReason": self.cancellationReason,
            "payableUntil": isoformat(self.payableUntil) if self.payableUntil else None,
            "amountMismatch": self.amountMismatch.public() if self.amountMismatch else None,
            "version": self.version,
            "orphans": [o.model_dump(mode="json") for o in self.orphans],
            "transitions": [
                {
                    "status": t.status.value,
                    "at": isoformat(t.at),
                    "source": t.source,
                    **({"eventId": t.eventId} if t.eventId else {}),
                    **({"confirmedBy": t.confirmedBy} if t.confirmedBy else {}),
                }
                for t in self.transitions
            ],
        }
