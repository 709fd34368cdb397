"""Helpers shared by the Redis store modules: the one error mapping and reply conversions."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError

from gateway.store.base import StoreUnavailable

__all__ = ["_mapped", "_ms", "_text"]


@contextmanager
def _mapped(operation: str) -> Iterator[None]:
    """Map every lower-layer failure of ``operation`` to :class:`StoreUnavailable`, once."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"redis {operation} failed: {type(exc).__name__}: {exc}") from exc


def _ms(seconds: float) -> int:
    """A positive whole number of milliseconds covering ``seconds``."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
