"""What the calls after the checkout (capture, void, refund) share: the answer they give, the
provider's handles on the payment, the provider key of a merchant's call and the adapter that
can make it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import orjson

from gateway.domain.errors import ApiError
from gateway.domain.session import SessionRecord
from gateway.idempotency import derived_provider_key
from gateway.provider_answers import api_error
from providers.base import FlowNotSupported, PaymentOperations, PaymentReference, ProviderAdapter

__all__ = ["Answer", "error_answer", "operations_of", "payment_reference", "provider_key"]


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer of a merchant call (``replayed``: the stored answer of its key)."""

    status: int
    body: bytes
    replayed: bool = False

    @classmethod
    def of(cls, status: int, body: object) -> Answer:
        """``body`` serialised as the API serialises every answer."""
        return cls(status, orjson.dumps(body))


def error_answer(error: ApiError, request_id: str) -> Answer:
    """``error`` as the envelope the API answers (stored so that a retry replays it)."""
    return Answer(error.status, orjson.dumps(error.body(request_id)))


def payment_reference(record: SessionRecord, amount: Decimal) -> PaymentReference:
    """The provider's handles on the session's payment, holding ``amount``."""
    return PaymentReference(
        session_reference=record.providerSessionId,
        payment_id=record.paymentId,
        capture_id=record.captureId,
        currency=record.currency,
        amount=amount,
        session_id=record.sessionId,
    )


def provider_key(record: SessionRecord, call: str, key: str) -> str:
    """The idempotency key sent to the provider for the merchant's ``call`` under ``key``
    on ``record``: the same on every retry of the key, in any process."""
    scoped = f"{record.sessionId}\x00{call}\x00{key}"
    return derived_provider_key(record.merchantId, scoped, record.provider)


def operations_of(
    adapters: Mapping[str, ProviderAdapter], record: SessionRecord
) -> PaymentOperations:
    """The adapter of ``record``'s provider, able to capture, void and refund; 422
    ``FLOW_NOT_SUPPORTED`` (:mod:`gateway.provider_answers`) when it cannot."""
    adapter = adapters.get(record.provider)
    if not isinstance(adapter, PaymentOperations):
        raise api_error(
            FlowNotSupported(record.provider, "no capture, void or refund calls"),
            session_id=record.sessionId,
        )
    return adapter
