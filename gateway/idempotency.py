"""Idempotency: the request fingerprint, the header rules and the keys derived from them.

The store does the atomic part (:meth:`gateway.store.base.CreationStore.begin_create`); this module
decides *what* is compared: a hash of the canonical request, so key order, whitespace and
``140.760`` vs ``140.76`` do not make two equal orders look different.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections import deque
from decimal import Decimal
from typing import Any

import orjson

from gateway.domain.errors import BadRequest
from gateway.domain.models import CheckoutRequest
from gateway.domain.money import MONEY_CONTEXT

__all__ = [
    "RecentDurations",
    "derived_provider_key",
    "fingerprint",
    "in_flight_retry_after",
    "session_id_for",
    "validate_idempotency_key",
]

_SESSION_NAMESPACE = uuid.UUID("5f0c1c4e-5a2e-4f4b-9a57-7c8c1f0a9b11")
MISSING_KEY = "Missing required header: Idempotency-Key"


def validate_idempotency_key(value: str | None) -> str:
    """The header value, or a 400 in the seed's words when missing or malformed."""
    if value is None or value == "":
        raise BadRequest(MISSING_KEY)
    if len(value) > 255 or not all(" " <= ch <= "~" for ch in value):
        raise BadRequest("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return value


def _decimal(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(MONEY_CONTEXT), "f")
    raise TypeError(f"not canonical JSON: {type(value).__name__}")


def fingerprint(request: CheckoutRequest) -> str:
    """SHA-256 of the canonical request: sorted keys, normalised decimals, nulls dropped."""
    canonical = request.model_dump(mode="python", exclude_none=True)
    raw = orjson.dumps(canonical, default=_decimal, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


def session_id_for(merchant_id: str, idempotency_key: str) -> str:
    """The gateway session id of (merchant, key): stable, so a retry after a crash reuses it
    and matches the metadata a provider already holds."""
    return str(uuid.uuid5(_SESSION_NAMESPACE, f"{merchant_id}\x00{idempotency_key}"))


def derived_provider_key(merchant_id: str, idempotency_key: str, provider: str) -> str:
    """The idempotency key sent to ``provider``: 64 hex characters (fits Adyen's limit)."""
    raw = f"{merchant_id}\x00{idempotency_key}\x00{provider}".encode()
    return hashlib.sha256(raw).hexdigest()


class RecentDurations:
    """The last ``size`` create durations of this process, for a typical-duration estimate."""

    def __init__(self, size: int = 200, minimum: int = 10) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._minimum = minimum

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def p95(self) -> float | None:
        """The 95th percentile, or None before ``minimum`` samples."""
        if len(self._samples) < self._minimum:
            return None
        ordered = sorted(self._samples)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]


def in_flight_retry_after(
    remaining_lease_ms: int, *, lease_s: float, deadline_s: float, typical_s: float | None
) -> int:
    """``Retry-After`` seconds for a key another request is still processing.

    That request has held the claim for ``lease - remaining``. It usually ends within
    ``typical_s`` (the p95 of recent creates) and always within the request deadline, when it
    completes or releases the key. The hint is the time left until the typical end, or until
    the deadline once the typical time has passed (at least 1 s). A claim held past the
    deadline belongs to a process that died: it frees when the lease runs out.
    """
    held = max(0.0, lease_s - remaining_lease_ms / 1000)
    until_lease_ends = max(1, math.ceil(remaining_lease_ms / 1000))
    if held >= deadline_s:
        return until_lease_ends
    expected = typical_s if typical_s is not None and typical_s > held else deadline_s
    return min(until_lease_ends, max(1, math.ceil(expected - held)))
