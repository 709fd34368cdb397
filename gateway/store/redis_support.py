"""Helpers shared by the Redis store modules: the one error mapping, reply conversions and the
leased-queue claim over the queue buckets (:data:`gateway.store.keys.QUEUE_BUCKETS`), in due
order across them."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from gateway.store.base import StoreUnavailable
from gateway.store.keys import QUEUE_BUCKETS
from gateway.store.redis_conn import LuaScript, RedisConn

T = TypeVar("T")
log = logging.getLogger("gateway.store.redis")

__all__ = [
    "LEASED_QUEUE_CLAIM",
    "_mapped",
    "_ms",
    "_readable",
    "_text",
    "claim_in_due_order",
    "lease_bucket",
    "lease_prefix",
]

#: Claims up to ARGV[3] due items of one bucket of a leased queue (the outbox, the orphan
#: queue): each is pushed back to ARGV[2] (its lease) and given a token. KEYS due (sorted set),
#: items (hash), leases (hash), all of one bucket; ARGV now, lease_until, limit, token prefix
#: (:func:`lease_prefix`: it names the bucket). Returns id, json, token triples; an id without
#: an item is dropped.
LEASED_QUEUE_CLAIM = LuaScript("""
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
""")


@contextmanager
def _mapped(operation: str) -> Iterator[None]:
    """Map every lower-layer failure of ``operation`` to :class:`StoreUnavailable`, once:
    connection errors and timeouts, error replies (``READONLY`` from a demoted primary,
    ``NOREPLICAS``, ``CLUSTERDOWN``, ``CROSSSLOT``, ``MOVED`` after the topology refresh) and
    redis-py's cluster errors, which are not ``RedisError`` (``RedisClusterException``: a
    slot not covered, keys in several slots). The message names the cause for the log;
    redis-py's messages hold addresses, never passwords."""
    try:
        yield
    except StoreUnavailable:
        raise
    except (RedisError, RedisClusterException, OSError) as exc:
        raise StoreUnavailable(f"redis {operation} failed: {type(exc).__name__}: {exc}") from exc
    except AttributeError as exc:
        if not _raised_in_redis_py(exc):
            raise  # ours: a bug, not an outage
        # redis-py's asyncio connection loses its writer when another task disconnects it
        # mid-command (a killed connection): the command may or may not have run
        raise StoreUnavailable(f"redis {operation} failed: connection lost ({exc})") from exc


def _raised_in_redis_py(exc: BaseException) -> bool:
    """Was ``exc`` raised by redis-py's own code (its innermost frame is in ``redis.*``)?"""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("redis.")


def _ms(seconds: float) -> int:
    """A positive whole number of milliseconds covering ``seconds``."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _readable(reply: Any, parse: Callable[..., T], what: str) -> list[T]:
    """The items of a :data:`LEASED_QUEUE_CLAIM` reply that parse (``parse(json, lease=)``).
    One that does not (a corrupted record) is logged by id and left leased, so it never holds
    back the items claimed with it; it comes back when its lease ends."""
    found: list[T] = []
    for i in range(0, len(reply), 3):
        try:
            found.append(parse(bytes(reply[i + 1]), lease=_text(reply[i + 2])))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable %s %r skipped: %s", what, _text(reply[i]), type(exc).__name__)
    return found


def lease_prefix(n: int) -> str:
    """A fresh lease-token prefix for claims from bucket ``n``: ``"<n>:<hex>"`` (the claim
    script appends the item's position)."""
    return f"{n}:{uuid.uuid4().hex}"


def lease_bucket(token: str) -> int | None:
    """The bucket a lease token was handed out from; None for a token no claim made."""
    head, _, _ = token.partition(":")
    if not (head.isascii() and head.isdigit()) or int(head) >= QUEUE_BUCKETS:
        return None
    return int(head)


async def claim_in_due_order(
    conn: RedisConn,
    due_keys: Sequence[str],
    *,
    now: float,
    limit: int,
    claim: Callable[[int, int], Awaitable[list[T]]],
    ident: Callable[[T], str],
) -> list[T]:
    """Claim up to ``limit`` due members of a bucketed queue, earliest due first across the
    buckets (ties by id), like one queue would: one pipelined peek at every bucket's earliest
    due members (``due_keys[n]``: bucket ``n``'s sorted set; an idempotent read), then
    ``claim(n, count)`` (a one-slot script) for each bucket holding some of the earliest
    ``limit``, concurrently. A member claimed meanwhile by another worker is simply not
    returned; the answer is in due order."""

    async def peek() -> list[Any]:
        async with conn.client.pipeline(transaction=False) as pipe:
            for key in due_keys:
                pipe.zrangebyscore(key, "-inf", repr(now), start=0, num=limit, withscores=True)
            result: list[Any] = await pipe.execute()
            return result

    per_bucket = await conn.read(peek)
    earliest = sorted(
        (float(score), _text(member), n)
        for n, rows in enumerate(per_bucket)
        for member, score in rows
    )[:limit]
    counts: dict[int, int] = {}
    for _, _, n in earliest:
        counts[n] = counts.get(n, 0) + 1
    rank = {member: i for i, (_, member, _) in enumerate(earliest)}
    batches = await asyncio.gather(*(claim(n, count) for n, count in counts.items()))
    claimed = [one for batch in batches for one in batch]
    return sorted(claimed, key=lambda one: rank.get(ident(one), len(rank)))
