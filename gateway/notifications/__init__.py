"""Merchant notifications: ``payment_session.*`` events, signed, delivered from the outbox."""

from gateway.notifications.signing import SIGNATURE_HEADER, verify_signature

__all__ = ["SIGNATURE_HEADER", "verify_signature"]
