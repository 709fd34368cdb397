"""Rate limits: token buckets shared by every gateway process.

A bucket holds up to ``burst`` tokens and refills at ``per_second``; each request takes one, and
a request that finds less than one token is refused with 429 and ``Retry-After`` (the whole
seconds until a token is back). :class:`RedisTokenBuckets` keeps one hash per bucket (one key,
so one Redis Cluster slot) and does refill-and-take in one Lua script timed by the Redis
server's clock, so every process and machine draws from the same bucket; the script is never
re-sent (a take is not idempotent) and waits for no replica (a bucket is advisory).
:class:`MemoryTokenBuckets` is the same arithmetic for the one-process memory store.

Limits in use (see the README, "Rate limits"):

- ``merchant``: every session API call of an authenticated merchant, one bucket per merchant,
  with the limit of ``merchants.yaml`` (``rate_limit`` of the merchant, else
  ``defaults.rate_limit``, else none);
- ``return_page``: the unauthenticated return page, one bucket for the whole gateway.

A store that cannot be reached lets the request through (logged): a limit never turns a store
blip into refusals the store itself would not cause.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

from gateway.domain.errors import TooManyRequests
from gateway.metrics import RATE_LIMITED, merchant_label
from gateway.store.base import StoreUnavailable
from gateway.store.keys import RedisKeys
from gateway.store.redis_conn import LuaScript, RedisConn
from gateway.store.redis_support import _mapped

__all__ = [
    "MemoryTokenBuckets",
    "RateLimit",
    "RedisTokenBuckets",
    "TokenBuckets",
    "enforce",
]

log = logging.getLogger("gateway.ratelimit")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``per_second`` sustained, up to ``burst`` at once."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_second > 0 or self.burst < 1:
            raise ValueError("a rate limit needs per_second > 0 and burst >= 1")


class TokenBuckets(Protocol):
    """Takes one token from a bucket; what a limiter needs of its storage."""

    async def take(self, limit_name: str, subject: str, limit: RateLimit) -> float | None:
        """None when the request may go; else the seconds until a token is back."""
        ...


def _refill_and_take(
    tokens: float, last: float, now: float, limit: RateLimit
) -> tuple[float, float | None]:
    """The bucket's tokens after the refill since ``last`` and this take; the wait if refused."""
    tokens = min(float(limit.burst), tokens + max(0.0, now - last) * limit.per_second)
    if tokens >= 1.0:
        return tokens - 1.0, None
    return tokens, (1.0 - tokens) / limit.per_second


class MemoryTokenBuckets:
    """Buckets in this process (the memory store's counterpart)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    async def take(self, limit_name: str, subject: str, limit: RateLimit) -> float | None:
        now = time.monotonic()
        tokens, last = self._buckets.get((limit_name, subject), (float(limit.burst), now))
        tokens, wait = _refill_and_take(tokens, last, now, limit)
        self._buckets[(limit_name, subject)] = (tokens, now)
        return wait


# KEYS[1] bucket hash {tok, ts}; ARGV per_second, burst. Returns the wait in microseconds (0: go).
_TAKE = LuaScript("""
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tok', 'ts')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
if now > last then tokens = math.min(burst, tokens + (now - last) * rate) else now = last end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000000) end
local fmt = '%.17g'
redis.call('HSET', KEYS[1], 'tok', string.format(fmt, tokens), 'ts', string.format(fmt, now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
""")


class RedisTokenBuckets:
    """Buckets in Redis, one hash per (limit, subject), shared by every process."""

    def __init__(self, conn: RedisConn, keys: RedisKeys) -> None:
        self._conn = conn
        self._keys = keys

    async def take(self, limit_name: str, subject: str, limit: RateLimit) -> float | None:
        """None when the request may go; else the seconds until a token is back. Raises
        :class:`StoreUnavailable` when Redis fails."""
        key = self._keys.rate_limit(limit_name, subject)
        with _mapped("rate_limit"):
            wait_us = await self._conn.script(_TAKE, [key], [repr(limit.per_second), limit.burst])
        return None if int(wait_us) == 0 else int(wait_us) / 1_000_000


async def enforce(
    buckets: TokenBuckets, limit_name: str, subject: str, limit: RateLimit | None
) -> None:
    """Raise :class:`TooManyRequests` (429, ``Retry-After``) when ``subject`` is over ``limit``;
    counted in ``gateway_rate_limited_total``. No limit, or an unreachable store: go."""
    if limit is None:
        return
    try:
        wait = await buckets.take(limit_name, subject, limit)
    except (StoreUnavailable, RedisError, OSError) as exc:
        log.warning("rate limit %s not checked: %s: %s", limit_name, type(exc).__name__, exc)
        return
    if wait is None:
        return
    label = merchant_label(subject) if limit_name == "merchant" else "none"
    RATE_LIMITED.labels(limit_name, label).inc()
    raise TooManyRequests(headers={"Retry-After": str(max(1, math.ceil(wait)))})
