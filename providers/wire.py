"""Small helpers for providers' wire-format limits, shared by the Adyen and PayPal adapters.

Providers cap the length of idempotency keys and of free-text fields. Identifiers must never be
truncated (a truncated key is a *different* key that can collide with another), so long keys are
replaced by a stable digest; free text is clipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from gateway.domain.money import scale_of, to_minor
from providers.base import FlowNotSupported, ProviderUnavailable

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest
    from providers.http import HttpResult

__all__ = [
    "amount_places",
    "amount_refusal",
    "bounded_key",
    "clip",
    "from_unix",
    "header",
    "json_object",
    "parse_datetime",
    "path_segment",
]


def bounded_key(key: str, limit: int) -> str:
    """``key`` itself when it fits in ``limit`` characters, otherwise its SHA-256 hex digest.

    The digest is stable (the same key always maps to the same value, so retries stay
    idempotent) and 64 characters long; ``limit`` must therefore be at least 64.
    """
    if limit < 64:
        raise ValueError("limit must be at least 64 characters to hold a SHA-256 digest")
    if len(key) <= limit and key.isascii():
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def path_segment(value: str, provider: str) -> str:
    """A provider's id quoted as one URL path segment (``/``, ``?``, ``%`` escaped).

    An empty id, ``.`` or ``..`` would be resolved away by the client's URL normalisation and
    send the call to another resource (``/payments/../captures`` is ``/captures``): refused with
    :class:`~providers.base.FlowNotSupported` before anything is sent. The id itself is never
    put in the message.
    """
    if value in ("", ".", ".."):
        raise FlowNotSupported(provider, "the provider's id cannot name a URL path segment")
    return quote(value, safe="")


def clip(text: str, limit: int) -> str:
    """Free text shortened to at most ``limit`` characters (never used for identifiers)."""
    return text if len(text) <= limit else text[:limit]


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header value looked up case-insensitively in any mapping (dict or CIMultiDict)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 timestamp from a provider's JSON, or None when absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def from_unix(value: Any) -> datetime | None:
    """A Unix time (integer seconds) from a provider's JSON as an aware UTC datetime; None when
    absent, not an integer, or outside the years a datetime can hold."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def json_object(result: HttpResult, provider: str) -> dict[str, Any]:
    """A 2xx answer's JSON object; anything else is the provider's fault (unavailable)."""
    try:
        payload = result.json()
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise ProviderUnavailable(provider, "answer is not a JSON object", result.status)
    return payload


def amount_places(request: CheckoutRequest) -> int:
    """The most decimal places any amount of ``request`` has (totals and unit prices)."""
    amounts = [request.amount.total, request.amount.shipping, request.amount.tax]
    amounts += [item.unitPrice for item in request.lines]
    return max(scale_of(value) for value in amounts)


def amount_refusal(amount: Decimal, places: int, *, max_minor: int) -> str | None:
    """Why a provider cannot be sent ``amount`` for a capture or refund, with ``places``
    decimals and at most ``max_minor`` minor units: not a finite number above zero, more
    decimals than the currency has there (never rounded), or too large. None when it can."""
    if not amount.is_finite() or amount <= 0:
        return "the amount must be a number greater than zero"
    if scale_of(amount) > places:
        return f"the currency takes at most {places} decimal places here"
    if to_minor(amount, places) > max_minor:
        return "the amount is larger than the provider accepts"
    return None
