"""The next payment in a series (``sessionType: next_in_series``): a customer-absent charge of
the payment method a merchant's earlier session saved (its *mandate*).

The create path (:mod:`gateway.sessions`) keeps its shape, claim -> reserve the order ->
provider -> commit, with three differences:

* before routing, :func:`find_mandate` reads the mandate session: unknown or another
  merchant's answers 404 (as GET does); one that cannot serve as a mandate answers 422
  ``MANDATE_NOT_USABLE`` saying why;
* the request is routed to the mandate's provider only (``held_by``: every other provider is
  excluded with "mandate is held by <provider>"), and :class:`SeriesCharges` calls it once,
  never failing over: the saved method exists nowhere else;
* the provider answers the payment's outcome at once, so the stored session is already
  COMPLETED, AUTHORIZED (``captureMethod`` manual), PROCESSING (its webhook decides) or FAILED
  (a decline: still a 201), with no hosted page (:func:`settled`).

A provider error is answered through :func:`gateway.provider_answers.api_error`. After one
whose outcome is unknown (timeout, 5xx, an unreadable answer, a refused key) the provider is
recorded as holding the key, so the claim keeps its pin and the merchant's retry re-sends the
same provider request under the same derived key; after a definite refusal the key is given
up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gateway.adapter_boundary import AdapterBoundary
from gateway.attempts import Attempts, no_candidate_error
from gateway.authorizations import expires_at
from gateway.circuit import CircuitBreakers
from gateway.domain.errors import NotFound, ServiceUnavailable, Unprocessable
from gateway.domain.lifecycle import apply
from gateway.domain.models import CheckoutRequest
from gateway.domain.session import AmountMismatch, Attempt, SessionRecord, SessionStatus
from gateway.metrics import AMOUNT_MISMATCHES
from gateway.provider_answers import api_error
from gateway.routing.decision import Candidate, RoutingDecision
from gateway.store.base import SessionStore
from providers.base import (
    AdapterFault,
    ChargeInput,
    FlowNotSupported,
    PaymentOperations,
    PaymentOutcome,
    ProviderAdapter,
    ProviderError,
    ProviderKeyConflict,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = [
    "MANDATE_NOT_USABLE",
    "MANDATE_TYPES",
    "Charged",
    "Mandate",
    "SeriesCharges",
    "charge_mismatch",
    "find_mandate",
    "report_mismatch",
    "settled",
]

log = logging.getLogger("gateway.sessions")

MANDATE_NOT_USABLE = "MANDATE_NOT_USABLE"
#: the session types whose COMPLETED sessions hold a mandate
MANDATE_TYPES = frozenset({"first_in_series", "setup"})
#: what a charge may answer (PENDING or REQUIRES_ACTION would need a customer: refused)
_OUTCOMES = frozenset(
    {
        SessionStatus.COMPLETED,
        SessionStatus.AUTHORIZED,
        SessionStatus.PROCESSING,
        SessionStatus.FAILED,
    }
)


@dataclass(frozen=True, slots=True)
class Mandate:
    """What a next payment needs of its mandate session."""

    session_id: str
    provider: str
    customer_id: str | None
    payment_method_id: str
    #: the mandate session's own payment at the provider (Adyen's first pspReference)
    payment_id: str | None


def _not_usable(session_id: str, why: str) -> Unprocessable:
    return Unprocessable(
        f"Session {session_id} cannot serve as a mandate: {why}",
        code=MANDATE_NOT_USABLE,
        details={"mandateSessionId": session_id},
    )


async def find_mandate(store: SessionStore, merchant_id: str, request: CheckoutRequest) -> Mandate:
    """The mandate ``request.mandateSessionId`` names: 404 when it is unknown or another
    merchant's, 422 ``MANDATE_NOT_USABLE`` when it is not a COMPLETED first_in_series or
    setup session with a saved payment method of the request's ``paymentMethod``."""
    session_id = request.mandateSessionId
    if session_id is None:  # validation requires it; a caller's bug otherwise
        raise ValueError("a next_in_series request names its mandateSessionId")
    record = await store.get_session(session_id)
    if record is None or record.merchantId != merchant_id:
        raise NotFound("Session not found")
    if record.sessionType not in MANDATE_TYPES:
        raise _not_usable(
            session_id,
            f"it is a {record.sessionType} session; only a first_in_series or setup session "
            "saves a payment method for later charges",
        )
    if record.status is not SessionStatus.COMPLETED:
        raise _not_usable(
            session_id,
            f"it is {record.status.value}; its payment method is saved once it is COMPLETED",
        )
    if record.paymentMethodId is None:
        raise _not_usable(session_id, f"{record.provider} reported no saved payment method")
    if record.paymentMethod != request.paymentMethod:
        raise _not_usable(
            session_id,
            f"it saved a {record.paymentMethod} payment method, not {request.paymentMethod}",
        )
    return Mandate(
        session_id=session_id,
        provider=record.provider,
        customer_id=record.customerId,
        payment_method_id=record.paymentMethodId,
        payment_id=record.paymentId,
    )


@dataclass(frozen=True, slots=True)
class Charged:
    """The one charge of a next payment: who took it and what they answered."""

    candidate: Candidate
    outcome: PaymentOutcome


def _may_have_charged(exc: ProviderError) -> bool:
    """Could the provider have taken the charge before this failure? Then the retry must
    re-send the same request (the claim keeps its pin)."""
    if isinstance(exc, ProviderUnavailable):
        return exc.status is not None
    return isinstance(exc, ProviderTimeout | ProviderKeyConflict | AdapterFault)


class SeriesCharges:
    """Charges saved methods at the one provider that holds them."""

    def __init__(
        self,
        adapters: Mapping[str, ProviderAdapter],
        circuits: CircuitBreakers,
        boundary: AdapterBoundary,
        *,
        provider_timeout_s: float,
    ) -> None:
        self.adapters = adapters
        self.circuits = circuits
        self.boundary = boundary
        self.provider_timeout_s = provider_timeout_s

    async def charge(
        self,
        decision: RoutingDecision,
        unavailable: Mapping[str, str],
        inputs: Callable[[str], ChargeInput],
        deadline: float,
        tries: Attempts,
    ) -> Charged:
        """Charge at the decision's only candidate (the mandate's provider). Raises the API
        answer when there is none (422/503), its circuit is open (503), or the call fails."""
        if not decision.ranked:
            raise no_candidate_error(decision, unavailable, self.circuits)
        candidate = decision.ranked[0]
        provider = candidate.provider
        details = {"decisionId": decision.decision_id, "provider": provider}
        if not await self.circuits.admit(provider):
            tries.made.append(Attempt(provider=provider, outcome="circuit_open", durationMs=0.0))
            raise ServiceUnavailable.providers_down(
                details, self.circuits.retry_after_s([provider])
            )
        adapter = self.adapters[provider]
        timeout = max(0.001, min(self.provider_timeout_s, deadline - time.monotonic()))
        data = inputs(provider)
        began = time.perf_counter()
        try:
            outcome = await self.boundary.call(
                provider, "charge_saved", lambda: _charge(adapter, data, timeout)
            )
            if outcome.status not in _OUTCOMES:
                raise AdapterFault(provider, f"charge answered {outcome.status.value}")
            if outcome.payment_id is None and outcome.status is not SessionStatus.FAILED:
                # its webhooks could never be matched to the session
                raise AdapterFault(provider, "charge answered no payment id")
        except ProviderError as exc:
            elapsed = time.perf_counter() - began
            tries.waited_s += elapsed
            tries.made.append(
                Attempt(
                    provider=provider,
                    outcome=exc.outcome,
                    durationMs=round(elapsed * 1000, 2),
                    error=exc.reason[:200],
                )
            )
            if _may_have_charged(exc) and provider not in tries.held:
                tries.held.append(provider)
            raise api_error(exc, session_id=data.session_id) from None
        elapsed = time.perf_counter() - began
        tries.waited_s += elapsed
        declined = outcome.status is SessionStatus.FAILED
        tries.made.append(
            Attempt(
                provider=provider,
                outcome="declined" if declined else "charged",
                durationMs=round(elapsed * 1000, 2),
            )
        )
        if provider not in tries.held:
            tries.held.append(provider)
        tries.chosen = candidate
        return Charged(candidate, outcome)


async def _charge(adapter: ProviderAdapter, data: ChargeInput, timeout: float) -> PaymentOutcome:
    if not isinstance(adapter, PaymentOperations):
        raise FlowNotSupported(adapter.name, "this provider cannot charge a saved method")
    return await adapter.charge_saved(data, timeout=timeout)


#: outcomes that say money was taken or is held: reconciled against the session's amount
_MONEY_OUTCOMES = frozenset({SessionStatus.COMPLETED, SessionStatus.AUTHORIZED})


def charge_mismatch(
    pending: SessionRecord, outcome: PaymentOutcome, at: datetime
) -> AmountMismatch | None:
    """The charge's report of money that is not the session's (another amount or currency), or
    None when it agrees or reports no amount (:mod:`gateway.reconciliation` for webhooks)."""
    if outcome.status not in _MONEY_OUTCOMES or outcome.amount is None:
        return None
    currency = outcome.currency.upper() if outcome.currency else pending.currency
    if currency == pending.currency and outcome.amount == pending.amount.total:
        return None
    return AmountMismatch(
        provider=outcome.provider,
        source="charge",
        eventId=None,
        eventType="charge_saved",
        reportedStatus=outcome.status,
        amount=outcome.amount,
        currency=currency,
        at=at,
    )


def settled(
    pending: SessionRecord, outcome: PaymentOutcome, at: datetime, *, authorization_days: int
) -> SessionRecord:
    """``pending`` (the new session, PENDING) moved to the charge's outcome, with the payment's
    references: the record the create stores. The session's provider reference is what the
    provider's webhooks about the payment name (``outcome.reference``: PayPal's order), else
    the payment id. An AUTHORIZED charge records when its authorization lapses
    (``authorization_days`` after ``at``). A report of money that is not
    the session's is recorded as ``amountMismatch`` and not applied: the session reads
    PROCESSING (money moved, of an amount nobody agreed to) and holds its order until a person
    decides."""
    changes: dict[str, object] = {
        "paymentId": outcome.payment_id,
        "captureId": outcome.capture_id,
        "providerSessionId": outcome.reference or outcome.payment_id or "",
    }
    status = outcome.status
    if status is SessionStatus.AUTHORIZED:
        changes["authorizationExpiresAt"] = expires_at(at, authorization_days)
    found = charge_mismatch(pending, outcome, at)
    if found is not None:
        changes["amountMismatch"] = found
        status = SessionStatus.PROCESSING
    if status is SessionStatus.FAILED:
        changes["failureReason"] = outcome.failure_reason or "declined by the provider"
    moved = apply(pending, status, at, f"api:{outcome.provider}", changes=changes)
    if moved is None:  # PENDING moves to every outcome the charge may answer
        raise AssertionError(f"PENDING cannot move to {status.value}")
    return moved


def report_mismatch(record: SessionRecord) -> None:
    """Count and log the charge's amount mismatch recorded on the stored ``record``, if any."""
    found = record.amountMismatch
    if found is None:
        return
    AMOUNT_MISMATCHES.labels(found.provider, found.source).inc()
    log.error(
        "provider charged %s %s for a next payment of %s %s; recorded, not applied: reconcile "
        "at the provider",
        found.amount,
        found.currency,
        record.amount.total,
        record.currency,
        extra={"session_id": record.sessionId, "provider": found.provider},
    )
