"""The events merchants receive (seed 002), as outbox items.

Body of every event (``Content-Type: application/json``)::

    {
      "id": "evt_…",                      # unique; the same on every delivery attempt
      "object": "event",
      "type": "payment_session.created" | "payment_session.updated"
              | "payment_session.authorization_expiring" | "refund.created" | "refund.updated",
      "createdAt": "2026-11-21T11:00:00.000Z",
      "data": {"payment_session": {…}}    # see session_payload()
    }

``refund.*`` events also carry ``data.refund`` (:meth:`gateway.domain.session.Refund.public`):
``refund.created`` when a refund is recorded (before the provider is asked), ``refund.updated``
when its status moves (PENDING -> SUCCEEDED | FAILED). ``payment_session.authorization_expiring``
is sent once for an AUTHORIZED session whose authorization lapses at the provider within a day
(``authorizationExpiresAt``). Every event is enqueued in the same write as the change it
reports.

Deliveries are at least once and may arrive out of order: de-duplicate on ``id`` and order by
``data.payment_session.version`` (it grows with every change of the session).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import orjson

from gateway.domain.money import format_amount
from gateway.domain.session import Refund, SessionRecord, SessionStatus, isoformat
from gateway.notifications.merchants import MerchantDirectory
from gateway.store.base import OutboxItem

__all__ = [
    "AUTHORIZATION_EXPIRING",
    "CREATED",
    "REFUND_CREATED",
    "REFUND_UPDATED",
    "UPDATED",
    "Notifier",
    "session_payload",
]

CREATED = "payment_session.created"
UPDATED = "payment_session.updated"
AUTHORIZATION_EXPIRING = "payment_session.authorization_expiring"
REFUND_CREATED = "refund.created"
REFUND_UPDATED = "refund.updated"


def session_payload(record: SessionRecord, previous: SessionStatus | None = None) -> dict[str, Any]:
    """The ``payment_session`` object of an event.

    ``customerId`` and ``paymentMethodId`` (the saved method or mandate reference) are set when
    the provider reported them; with ``provider`` they are what a later customer-absent
    (``next_in_series``) payment needs. ``paymentId`` is the provider's payment reference.
    ``amountMismatch`` is set when a provider verdict was not applied because its amount or
    currency differed (the event then reports no status change: ``status`` equals
    ``previousStatus``); ``payableUntil`` when a session cancelled at the gateway can still be
    paid at its provider until then. ``amountCaptured`` is the money taken (a manual capture
    may take less than ``amount.total``), ``amountRefunded`` every refund that has not FAILED,
    ``authorizationExpiresAt`` when an AUTHORIZED session's authorization lapses.
    """
    return {
        "sessionId": record.sessionId,
        "orderReference": record.orderReference,
        "status": record.status.value,
        "previousStatus": previous.value if previous is not None else None,
        "version": record.version,
        "provider": record.provider,
        "providerSessionId": record.providerSessionId,
        "paymentId": record.paymentId,
        "sessionType": record.sessionType,
        "savePaymentMethod": record.savePaymentMethod,
        "customerReference": record.customerReference,
        "customerId": record.customerId,
        "paymentMethodId": record.paymentMethodId,
        "currency": record.currency,
        "amount": record.amount.rendered(record.currency),
        "amountCaptured": format_amount(record.amountCaptured, record.currency),
        "amountRefunded": format_amount(record.amount_refunded, record.currency),
        "authorizationExpiresAt": (
            isoformat(record.authorizationExpiresAt) if record.authorizationExpiresAt else None
        ),
        "paymentMethod": record.paymentMethod,
        "captureMethod": record.captureMethod,
        "failureReason": record.failureReason,
        "cancellationReason": record.cancellationReason,
        "payableUntil": isoformat(record.payableUntil) if record.payableUntil else None,
        "amountMismatch": record.amountMismatch.public() if record.amountMismatch else None,
        "createdAt": isoformat(record.createdAt),
        "updatedAt": isoformat(record.updatedAt),
        "expiresAt": isoformat(record.expiresAt),
    }


class Notifier:
    """Turns session changes into outbox items for the merchants that subscribed to them."""

    def __init__(self, directory: MerchantDirectory) -> None:
        self.directory = directory

    def items(
        self,
        record: SessionRecord,
        event_type: str,
        *,
        at: datetime,
        previous: SessionStatus | None = None,
    ) -> list[OutboxItem]:
        """The outbox items for one event (none when the merchant did not subscribe)."""
        return self._items(
            record, event_type, at, {"payment_session": session_payload(record, previous)}
        )

    def refund_items(
        self, record: SessionRecord, refund: Refund, event_type: str, *, at: datetime
    ) -> list[OutboxItem]:
        """The outbox items of a ``refund.*`` event about ``refund`` of ``record``."""
        data = {
            "refund": refund.public(record.sessionId),
            "payment_session": session_payload(record),
        }
        return self._items(record, event_type, at, data)

    def _items(
        self, record: SessionRecord, event_type: str, at: datetime, data: dict[str, Any]
    ) -> list[OutboxItem]:
        if self.directory.webhook_for(record.merchantId, event_type) is None:
            return []
        event_id = f"evt_{uuid.uuid4().hex}"
        body = {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "createdAt": isoformat(at),
            "data": data,
        }
        return [
            OutboxItem(
                id=event_id,
                merchant_id=record.merchantId,
                event_type=event_type,
                body=orjson.dumps(body),
                created_at=time.time(),
            )
        ]
