"""The emulated PayPal's payments: capturing or authorizing an order the payer approved.

PayPal moves no money when the payer presses Pay: the order becomes ``APPROVED`` and the
merchant's server must call ``POST /v2/checkout/orders/{id}/capture`` (intent CAPTURE) or
``/authorize`` (intent AUTHORIZE). :func:`complete_order` is that call's business logic, pure of
HTTP: it checks the order's state, remembers the payer's choice on the pay page (Decline makes
the capture DECLINED, or the authorization fail with INSTRUMENT_DECLINED) and returns the
order as answered plus the webhook events PayPal sends afterwards.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from providers.sandbox.paypal_rules import PayPalError
from providers.sandbox.state import SandboxSession

__all__ = [
    "ACTIONS",
    "Completed",
    "PaymentRecord",
    "complete_order",
    "now_iso",
    "payment_resource",
    "paypal_id",
]

_ID_CHARS = string.ascii_uppercase + string.digits

#: URL action -> (the order intent it needs, the 422 issue once it was done already)
ACTIONS = {
    "capture": ("CAPTURE", "ORDER_ALREADY_CAPTURED"),
    "authorize": ("AUTHORIZE", "ORDER_ALREADY_AUTHORIZED"),
}


def paypal_id(length: int = 17) -> str:
    """A PayPal-style upper-case alphanumeric id."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(length))


def now_iso() -> str:
    """The current UTC time as PayPal writes it (``2024-05-01T10:00:00Z``)."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _vault(session: SandboxSession) -> dict[str, Any] | None:
    """The vault PayPal created for a successful payment when the order asked for one."""
    source = (session.raw_request or {}).get("payment_source") or {}
    asked = ((source.get("paypal") or {}).get("attributes") or {}).get("vault")
    if not asked:
        return None
    token = session.extra.setdefault("vault_id", paypal_id(7).lower())
    customer = session.extra.setdefault("vault_customer", paypal_id(10))
    return {"id": token, "status": "VAULTED", "customer": {"id": customer}}


def payment_resource(session: SandboxSession, kind: str, status: str) -> dict[str, Any]:
    """A capture (``kind`` "capture") or authorization of the session's order, as PayPal
    shows it in the order's ``payments`` and in its webhook events."""
    order = session.extra["order"]
    unit = order["purchase_units"][0]
    resource: dict[str, Any] = {
        "id": paypal_id(),
        "status": status,
        "amount": {"currency_code": session.currency, "value": session.amount},
        "supplementary_data": {"related_ids": {"order_id": order["id"]}},
        "create_time": now_iso(),
        "update_time": now_iso(),
    }
    for name in ("custom_id", "invoice_id"):
        if unit.get(name):
            resource[name] = unit[name]
    if kind == "capture":
        resource["final_capture"] = True
    vault = _vault(session) if status in ("COMPLETED", "CREATED") else None
    if vault is not None:  # ON_SUCCESS: the wallet is vaulted with the successful payment
        resource["payment_source"] = {"paypal": {"attributes": {"vault": vault}}}
    return resource


@dataclass(slots=True)
class PaymentRecord:
    """One authorization or capture the emulated PayPal holds (for the payments API calls):
    its resource as last shown, the order session it belongs to, and what was taken from it
    since (captured from an authorization, refunded from a capture)."""

    kind: str
    resource: dict[str, Any]
    session: SandboxSession
    amount: Decimal
    taken: Decimal = Decimal(0)

    @property
    def remaining(self) -> Decimal:
        """What may still be captured (an authorization) or refunded (a capture)."""
        return self.amount - self.taken


@dataclass(frozen=True, slots=True)
class Completed:
    """The final answer of a capture or authorization and what follows it.

    ``refusal`` is None when the payment was made (answer 201 with ``order``); otherwise the
    call is refused with it (a decline: final, replayed on a retry with the same request id).
    ``events`` are the ``(event_type, resource_type, resource)`` webhooks PayPal sends after.
    """

    order: dict[str, Any]
    events: list[tuple[str, str, dict[str, Any]]]
    status: str
    refusal: PayPalError | None = None


def complete_order(session: SandboxSession, action: str) -> Completed:
    """Capture or authorize the approved order of ``session``; raises :class:`PayPalError`.

    422 ACTION_DOES_NOT_MATCH_INTENT for the other intent's action, ORDER_ALREADY_CAPTURED /
    ORDER_ALREADY_AUTHORIZED once done, ORDER_NOT_APPROVED before the payer approved (or after
    the order was voided). A payer who pressed Decline gets a DECLINED capture (201, then
    PAYMENT.CAPTURE.DECLINED), or for an authorization 422 INSTRUMENT_DECLINED (then
    CHECKOUT.PAYMENT-APPROVAL.REVERSED): a :class:`Completed` with its ``refusal``.
    """
    intent, already = ACTIONS[action]
    order = session.extra["order"]
    where = f"/v2/checkout/orders/{order['id']}/{action}"
    if order["intent"] != intent:
        raise PayPalError(
            422,
            "ACTION_DOES_NOT_MATCH_INTENT",
            where,
            f"Order was created with an intent to '{order['intent']}'.",
        )
    if order["status"] == "COMPLETED":
        raise PayPalError(422, already, where, "The order was completed already.")
    if order["status"] != "APPROVED":
        raise PayPalError(422, "ORDER_NOT_APPROVED", where, "The payer has not approved it.")
    declined = session.status == "declined"
    if action == "authorize" and declined:
        return Completed(
            order=order,
            events=[("CHECKOUT.PAYMENT-APPROVAL.REVERSED", "checkout-order", dict(order))],
            status="DENIED",
            refusal=PayPalError(
                422, "INSTRUMENT_DECLINED", where, "The instrument presented was declined."
            ),
        )
    kind = "capture" if action == "capture" else "authorization"
    status = ("DECLINED" if declined else "COMPLETED") if kind == "capture" else "CREATED"
    payment = payment_resource(session, kind, status)
    order["status"] = "COMPLETED"
    order["update_time"] = now_iso()
    order["purchase_units"][0]["payments"] = {f"{kind}s": [payment]}
    vault = payment.get("payment_source")
    if vault is not None:
        order["payment_source"] = vault
    event_type = {
        "COMPLETED": "PAYMENT.CAPTURE.COMPLETED",
        "DECLINED": "PAYMENT.CAPTURE.DECLINED",
        "CREATED": "PAYMENT.AUTHORIZATION.CREATED",
    }[status]
    return Completed(order=order, events=[(event_type, kind, dict(payment))], status=status)
