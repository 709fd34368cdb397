"""Helpers shared by the Redis store modules: the one error mapping and reply conversions."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError

from gateway.store.base import StoreUnavailable

__all__ = ["LEASED_QUEUE_CLAIM", "_leased", "_mapped", "_ms", "_text"]

#: Claims up to ARGV[3] due items of a leased queue (the outbox, the orphan queue): each is
#: pushed back to ARGV[2] (its lease) and given a token. KEYS due (sorted set), items (hash),
#: leases (hash); ARGV now, lease_until, limit, token prefix. Returns id, json, token triples;
#: an id without an item is dropped.
LEASED_QUEUE_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for i, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    local token = ARGV[4] .. i
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', KEYS[3], id, token)
    table.insert(out, id)
    table.insert(out, body)
    table.insert(out, token)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


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


def _leased(reply: Any) -> list[tuple[bytes, str]]:
    """The (json, lease token) pairs of a :data:`LEASED_QUEUE_CLAIM` reply."""
    return [(bytes(reply[i + 1]), _text(reply[i + 2])) for i in range(0, len(reply), 3)]
