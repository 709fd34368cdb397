"""Signing merchant notifications, and the verification recipe merchants copy.

Every notification POST carries::

    Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

:func:`verify_signature` is self-contained on purpose (standard library only): a merchant can
copy it as it is. Verify over the *raw* request body, before parsing it, and refuse a
timestamp more than five minutes away from your clock (replay protection). During a secret
rotation several ``v1`` values may be present; any one matching is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "TOLERANCE_SECONDS", "sign", "signature_header", "verify_signature"]

SIGNATURE_HEADER = "Gateway-Signature"
TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex ``v1`` signature of ``body`` sent at ``timestamp``."""
    return hmac.new(
        secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256
    ).hexdigest()


def signature_header(secrets: list[str], timestamp: int, body: bytes) -> str:
    """The ``Gateway-Signature`` value: one ``v1`` per active secret."""
    return ",".join([f"t={timestamp}", *(f"v1={sign(s, timestamp, body)}" for s in secrets)])


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when ``header`` (``Gateway-Signature``) signs the raw ``body`` with ``secret`` and
    its timestamp is within ``tolerance`` seconds of ``now`` (default: this machine's clock)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)
