"""Small helpers for providers' wire-format limits, shared by the Adyen and PayPal adapters.

Providers cap the length of idempotency keys and of free-text fields. Identifiers must never be
truncated (a truncated key is a *different* key that can collide with another), so long keys are
replaced by a stable digest; free text is clipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from gateway.domain.money import scale_of
from providers.base import ProviderUnavailable

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest
    from providers.http import HttpResult

__all__ = ["amount_places", "bounded_key", "clip", "header", "json_object", "parse_datetime"]


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
