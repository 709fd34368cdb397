"""The check every adapter makes of a provider's answer to a charge, capture, void or refund
before the gateway may act on it: the answer must be about what was asked.

An answer that reports another payment, another currency or another amount than the call asked
for (or an amount that cannot be read, or money taken without the payment's id) proves nothing
about the call: it is a fault or a lie on the provider's side. Its outcome becomes
``PROCESSING`` (the provider's webhooks decide, or a retry under the same idempotency key
replays the real answer), never ``COMPLETED``, ``AUTHORIZED``, ``FAILED`` or ``CANCELLED`` on
the strength of the wrong payment (:func:`vouched`). A refund answer of that kind stays
``PENDING`` (:func:`vouched_refund`).
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from gateway.domain.session import RefundStatus, SessionStatus
from providers.base import PaymentOutcome, RefundOutcome

__all__ = ["vouched", "vouched_refund"]

#: the statuses that say the provider took or holds the money
_HELD = frozenset({SessionStatus.COMPLETED, SessionStatus.AUTHORIZED})


def _mismatch(
    outcome: PaymentOutcome,
    *,
    payment_id: str | None,
    currency: str | None,
    amount: Decimal | None,
    unreadable: bool,
) -> bool:
    if unreadable:
        return True
    if outcome.status in _HELD and outcome.payment_id is None:
        return True  # money taken or held that nobody can name cannot be captured or refunded
    if payment_id is not None and outcome.payment_id not in (None, payment_id):
        return True
    if currency is not None and outcome.currency is not None and outcome.currency != currency:
        return True
    if outcome.amount is not None and (outcome.amount < 0 or not outcome.amount.is_finite()):
        return True
    return amount is not None and outcome.amount is not None and outcome.amount != amount


def vouched(
    outcome: PaymentOutcome,
    *,
    payment_id: str | None = None,
    currency: str | None = None,
    amount: Decimal | None = None,
    unreadable: bool = False,
) -> PaymentOutcome:
    """``outcome`` when the answer it came from is about the payment asked (``payment_id``), in
    ``currency`` and for ``amount`` (each checked when given and answered), and ``unreadable``
    is False (the answer had an amount the adapter could not read); otherwise the same outcome
    as ``PROCESSING``, naming the payment asked and none of the answer's amount or reason."""
    if not _mismatch(
        outcome, payment_id=payment_id, currency=currency, amount=amount, unreadable=unreadable
    ):
        return outcome
    return replace(
        outcome,
        status=SessionStatus.PROCESSING,
        payment_id=payment_id if payment_id is not None else outcome.payment_id,
        capture_id=None,
        amount=None,
        currency=None,
        failure_reason=None,
    )


def vouched_refund(
    outcome: RefundOutcome,
    *,
    answered: tuple[Decimal, str] | None,
    amount: Decimal,
    currency: str,
    unreadable: bool = False,
    other_payment: bool = False,
) -> RefundOutcome:
    """``outcome`` when the refund answer it came from refunds ``amount`` in ``currency`` (its
    ``answered`` amount and currency, when it had one) of the payment asked (``other_payment``
    False) and had no amount the adapter could not read; otherwise the same refund as
    ``PENDING``, without the answer's failure reason: its webhook decides."""
    wrong = unreadable or other_payment
    if answered is not None:
        wrong = wrong or answered[1] != currency or answered[0] != amount
    if not wrong:
        return outcome
    return replace(outcome, status=RefundStatus.PENDING, failure_reason=None)
