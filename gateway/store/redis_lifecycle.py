"""The session-lifecycle half of :class:`gateway.store.redis.RedisStore`: compare-and-set
session updates, webhook event markers, the expiry index and the notification outbox.

Every multi-key operation is one Lua script on the keys of one bucket (one Redis Cluster slot),
so it is atomic across gateway processes. A session write and the notifications it causes are
enqueued by the same script, into the session's bucket: a crash can never keep the one without
the other. Claims take the earliest due across the buckets
(:func:`~gateway.store.redis_support.claim_in_due_order`); a lease token names its bucket. Key
layout: :mod:`gateway.store.keys`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from gateway.domain.session import SessionRecord
from gateway.store.base import BACKLOG_COUNT_LIMIT, OutboxItem
from gateway.store.keys import QUEUE_BUCKETS, RedisKeys, bucket
from gateway.store.redis_conn import LuaScript, RedisConn, ScriptArg
from gateway.store.redis_support import (
    LEASED_QUEUE_CLAIM,
    _mapped,
    _ms,
    _readable,
    _text,
    claim_in_due_order,
    lease_bucket,
    lease_prefix,
)

__all__ = ["RedisLifecycle"]

# Enqueue (shared tail of the session scripts). Outbox keys at KEYS[o], KEYS[o+1] (due, items);
# ARGV from a: due, then id/json pairs.
ENQUEUE = """
local function enqueue(o, a)
  for i = a + 1, #ARGV, 2 do
    redis.call('HSET', KEYS[o + 1], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[o], ARGV[a], ARGV[i])
  end
end
"""

# KEYS outbox due, outbox items (one bucket); ARGV due, id/json pairs
_OUTBOX_ADD = LuaScript(ENQUEUE + "enqueue(1, 1)\nreturn 1\n")

# Compare-and-set on the record's ``version``. KEYS session, outbox due, outbox items (the
# session's bucket); ARGV expected version, payload, due, id/json pairs
_UPDATE_SESSION = LuaScript(
    ENQUEUE
    + """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local version = cjson.decode(current)['version'] or 0
if tonumber(version) ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
enqueue(2, 3)
return 1
"""
)

# KEYS marker; ARGV lease_ms. The marker's state ('processing' | 'done'), or 'new' once leased.
_CLAIM_EVENT = LuaScript("""
local state = redis.call('GET', KEYS[1])
if state then return state end
redis.call('SET', KEYS[1], 'processing', 'PX', ARGV[1])
return 'new'
""")

# KEYS zset (one bucket's expiry index); ARGV now, lease_until, limit. Due members, each
# pushed to lease_until.
_CLAIM_DUE = LuaScript("""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
""")


# KEYS due, items, leases, dead, dead_items (one bucket); ARGV id, token, action
# ('done'|'retry'|'dead'), json, score, keep (a bucket never keeps more dead letters)
_OUTBOX_FINISH = LuaScript("""
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] == 'dead' then
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[6])
  if extra > 0 then
    local old = redis.call('ZRANGE', KEYS[4], 0, extra - 1)
    redis.call('ZREM', KEYS[4], unpack(old))
    redis.call('HDEL', KEYS[5], unpack(old))
  end
end
return 1
""")

# KEYS dead, dead_items (one bucket); ARGV the ids to forget
_DEAD_TRIM = LuaScript("""
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
return 1
""")


class RedisLifecycle:
    """Mixed into :class:`~gateway.store.redis.RedisStore` (which sets ``keys`` and ``conn``)."""

    keys: RedisKeys
    conn: RedisConn

    @staticmethod
    def _enqueue_args(outbox: Sequence[OutboxItem]) -> list[ScriptArg]:
        args: list[ScriptArg] = [repr(time.time())]
        for item in outbox:
            args += [item.id, item.to_json()]
        return args

    # lifecycle
    async def update_session(
        self, record: SessionRecord, *, expected_version: int, outbox: Sequence[OutboxItem] = ()
    ) -> bool:
        """Compare-and-set on ``version`` (Lua), keeping the TTL, enqueueing ``outbox`` into
        the session's bucket; answered once a replica has it (``WAIT``)."""
        n = bucket(record.sessionId)
        keys = [
            self.keys.session(record.sessionId),
            self.keys.outbox_due(n),
            self.keys.outbox_items(n),
        ]
        args: list[ScriptArg] = [
            expected_version,
            record.model_dump_json().encode(),
            *self._enqueue_args(outbox),
        ]
        with _mapped("update_session"):
            done = await self.conn.script(_UPDATE_SESSION, keys, args, confirm=True)
        return bool(done)

    async def claim_event(self, provider: str, event_id: str, *, lease_s: float) -> str:
        """One script: the marker's state, or a new processing lease."""
        with _mapped("claim_event"):
            state = await self.conn.script(
                _CLAIM_EVENT,
                [self.keys.webhook_dedup(provider, event_id)],
                [max(1, int(lease_s * 1000))],
            )
        return _text(state)

    async def finish_event(self, provider: str, event_id: str, *, ttl_s: int) -> None:
        """Mark the event done for ``ttl_s``."""
        with _mapped("finish_event"):
            await self.conn.client.set(
                self.keys.webhook_dedup(provider, event_id), b"done", px=_ms(ttl_s)
            )

    async def forget_event(self, provider: str, event_id: str) -> None:
        """Drop an event marker."""
        with _mapped("forget_event"):
            await self.conn.client.delete(self.keys.webhook_dedup(provider, event_id))

    async def schedule_expiry(self, session_id: str, at: float) -> None:
        """Index ``session_id`` for the sweeper at ``at`` (in its bucket)."""
        with _mapped("schedule_expiry"):
            await self.conn.client.zadd(
                self.keys.expiry_index(bucket(session_id)), {session_id: at}
            )

    async def drop_expiry(self, session_id: str) -> None:
        """Remove ``session_id`` from the expiry index."""
        with _mapped("drop_expiry"):
            await self.conn.client.zrem(self.keys.expiry_index(bucket(session_id)), session_id)

    async def claim_expiries(self, *, now: float, lease_s: float, limit: int) -> list[str]:
        """Due session ids, earliest first across the buckets, leased for ``lease_s`` (a peek
        at every bucket, then a script per bucket holding some)."""

        async def claim(n: int, count: int) -> list[str]:
            reply = await self.conn.script(
                _CLAIM_DUE, [self.keys.expiry_index(n)], [repr(now), repr(now + lease_s), count]
            )
            return [_text(i) for i in reply]

        with _mapped("claim_expiries"):
            return await claim_in_due_order(
                self.conn,
                [self.keys.expiry_index(n) for n in range(QUEUE_BUCKETS)],
                now=now,
                limit=limit,
                claim=claim,
                ident=str,
            )

    # outbox
    def _outbox_keys(self, n: int) -> list[str]:
        k = self.keys
        return [
            k.outbox_due(n),
            k.outbox_items(n),
            k.outbox_leases(n),
            k.outbox_dead(n),
            k.outbox_dead_items(n),
        ]

    async def outbox_add(self, items: Sequence[OutboxItem], *, due: float) -> None:
        """Enqueue ``items`` due at ``due``, each into the bucket of its id (one script per
        bucket used)."""
        buckets: dict[int, list[OutboxItem]] = defaultdict(list)
        for item in items:
            buckets[bucket(item.id)].append(item)
        with _mapped("outbox_add"):
            for n, some in buckets.items():
                args: list[ScriptArg] = [repr(due)]
                for item in some:
                    args += [item.id, item.to_json()]
                await self.conn.script(_OUTBOX_ADD, self._outbox_keys(n)[:2], args)

    async def outbox_claim(self, *, now: float, lease_s: float, limit: int) -> list[OutboxItem]:
        """Due items, earliest first across the buckets, each leased for ``lease_s`` with a
        fresh token naming its bucket (a peek at every bucket, then a script per bucket
        holding some)."""

        async def claim(n: int, count: int) -> list[OutboxItem]:
            reply = await self.conn.script(
                LEASED_QUEUE_CLAIM,
                self._outbox_keys(n)[:3],
                [repr(now), repr(now + lease_s), count, lease_prefix(n)],
            )
            return _readable(reply, OutboxItem.from_json, "outbox item")

        with _mapped("outbox_claim"):
            return await claim_in_due_order(
                self.conn,
                [self.keys.outbox_due(n) for n in range(QUEUE_BUCKETS)],
                now=now,
                limit=limit,
                claim=claim,
                ident=lambda item: item.id,
            )

    async def _finish(self, item: OutboxItem, action: str, score: float, keep: int = 0) -> bool:
        n = lease_bucket(item.lease) if item.lease is not None else None
        if item.lease is None or n is None:
            return False
        args: list[ScriptArg] = [
            item.id,
            item.lease,
            action,
            item.to_json(),
            repr(score),
            keep,
        ]
        with _mapped(f"outbox_{action}"):
            done = await self.conn.script(_OUTBOX_FINISH, self._outbox_keys(n), args)
            if done and action == "dead":
                await self._trim_dead(keep)
        return bool(done)

    async def _trim_dead(self, keep: int) -> None:
        """Remove the oldest dead letters beyond ``keep`` across the buckets (a pipelined
        count; when over, a pipelined read of each bucket's oldest and a script per bucket)."""

        async def pipelined(command: Callable[[Any, int], None]) -> list[Any]:
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for n in range(QUEUE_BUCKETS):
                    command(pipe, n)
                result: list[Any] = await pipe.execute()
                return result

        counts = await self.conn.read(
            lambda: pipelined(lambda pipe, n: pipe.zcard(self.keys.outbox_dead(n)))
        )
        extra = sum(int(c) for c in counts) - keep
        if extra <= 0:
            return
        oldest = await self.conn.read(
            lambda: pipelined(
                lambda pipe, n: pipe.zrange(self.keys.outbox_dead(n), 0, extra - 1, withscores=True)
            )
        )
        gone = sorted(
            (float(score), _text(member), n)
            for n, rows in enumerate(oldest)
            for member, score in rows
        )[:extra]
        by_bucket: dict[int, list[str]] = defaultdict(list)
        for _, member, n in gone:
            by_bucket[n].append(member)
        for n, ids in by_bucket.items():
            await self.conn.script(_DEAD_TRIM, self._outbox_keys(n)[3:], ids)

    async def outbox_done(self, item: OutboxItem) -> bool:
        """Remove a delivered item (only with its current lease)."""
        return await self._finish(item, "done", 0.0)

    async def outbox_retry(self, item: OutboxItem, *, due: float) -> bool:
        """Store the item's new attempt count and make it due at ``due``."""
        return await self._finish(item, "retry", due)

    async def outbox_dead(self, item: OutboxItem, *, at: float, keep: int = 10_000) -> bool:
        """Move the item to the dead letters, keeping the newest ``keep`` across the buckets."""
        return await self._finish(item, "dead", at, keep)

    async def outbox_backlog(self, *, at_most: int = BACKLOG_COUNT_LIMIT) -> int:
        """Items waiting or being delivered, up to ``at_most`` (a ``ZCARD`` per bucket, in one
        pipeline: O(1) each)."""

        async def count() -> list[Any]:
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for n in range(QUEUE_BUCKETS):
                    pipe.zcard(self.keys.outbox_due(n))
                result: list[Any] = await pipe.execute()
                return result

        with _mapped("outbox_backlog"):
            counts = await self.conn.read(count)
        return min(sum(int(c) for c in counts), at_most)

    async def outbox_dead_letters(self, limit: int = 100) -> list[OutboxItem]:
        """The newest dead letters first, across the buckets (two pipelines: the newest ids of
        every bucket, then the items of the newest ``limit``)."""

        async def newest() -> list[Any]:
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for n in range(QUEUE_BUCKETS):
                    pipe.zrevrange(self.keys.outbox_dead(n), 0, limit - 1, withscores=True)
                result: list[Any] = await pipe.execute()
                return result

        with _mapped("outbox_dead_letters"):
            per_bucket = await self.conn.read(newest)
        dead = sorted(
            (
                (float(score), _text(member), n)
                for n, rows in enumerate(per_bucket)
                for member, score in rows
            ),
            reverse=True,
        )[:limit]
        if not dead:
            return []

        async def items() -> list[Any]:
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for _, member, n in dead:
                    pipe.hget(self.keys.outbox_dead_items(n), member)
                result: list[Any] = await pipe.execute()
                return result

        with _mapped("outbox_dead_letters"):
            raw = await self.conn.read(items)
        return [OutboxItem.from_json(r) for r in raw if r is not None]
