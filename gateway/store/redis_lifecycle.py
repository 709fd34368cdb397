"""The session-lifecycle half of :class:`gateway.store.redis.RedisStore`: compare-and-set
session updates, webhook event markers, the expiry index and the notification outbox.

Every multi-key operation is one Lua script, so it is atomic across gateway processes. A
session write and the notifications it causes are enqueued by the same script: a crash can
never keep the one without the other. Key layout: :mod:`gateway.store.keys`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from gateway.domain.session import SessionRecord
from gateway.store.base import BACKLOG_COUNT_LIMIT, OutboxItem, StoreUnavailable
from gateway.store.keys import RedisKeys
from gateway.store.redis_support import LEASED_QUEUE_CLAIM, _leased, _mapped, _ms, _text

__all__ = ["RedisLifecycle"]

# Enqueue (shared tail of the session scripts). Outbox keys at KEYS[o], KEYS[o+1] (due, items);
# ARGV from a: due, then id/json pairs.
_ENQUEUE = """
local function enqueue(o, a)
  for i = a + 1, #ARGV, 2 do
    redis.call('HSET', KEYS[o + 1], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[o], ARGV[a], ARGV[i])
  end
end
"""

# Compare-and-set on the record's ``version``. KEYS session, outbox due, outbox items;
# ARGV expected version, payload, due, id/json pairs
_UPDATE_SESSION = (
    _ENQUEUE
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
_CLAIM_EVENT = """
local state = redis.call('GET', KEYS[1])
if state then return state end
redis.call('SET', KEYS[1], 'processing', 'PX', ARGV[1])
return 'new'
"""

# KEYS zset; ARGV now, lease_until, limit. Due members, each pushed to lease_until.
_CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


# KEYS due, items, leases, dead, dead_items; ARGV id, token, action ('done'|'retry'|'dead'),
# json, score, keep
_OUTBOX_FINISH = """
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
"""


class RedisLifecycle:
    """Mixed into :class:`~gateway.store.redis.RedisStore` (which sets ``keys`` and ``client``)."""

    keys: RedisKeys
    client: aioredis.Redis
    _update_session: AsyncScript
    _claim_due: AsyncScript
    _claim_event: AsyncScript
    _outbox_claim: AsyncScript
    _outbox_finish: AsyncScript

    def _register_lifecycle_scripts(self, client: aioredis.Redis) -> None:
        self._update_session = client.register_script(_UPDATE_SESSION)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._claim_event = client.register_script(_CLAIM_EVENT)
        self._outbox_claim = client.register_script(LEASED_QUEUE_CLAIM)
        self._outbox_finish = client.register_script(_OUTBOX_FINISH)

    @staticmethod
    def _enqueue_args(outbox: Sequence[OutboxItem]) -> list[str | int | bytes]:
        args: list[str | int | bytes] = [repr(time.time())]
        for item in outbox:
            args += [item.id, item.to_json()]
        return args

    # lifecycle
    async def update_session(
        self, record: SessionRecord, *, expected_version: int, outbox: Sequence[OutboxItem] = ()
    ) -> bool:
        """Compare-and-set on ``version`` (Lua), keeping the TTL, enqueueing ``outbox``."""
        keys = [
            self.keys.session(record.sessionId),
            self.keys.outbox_due(),
            self.keys.outbox_items(),
        ]
        args: list[str | int | bytes] = [
            expected_version,
            record.model_dump_json().encode(),
            *self._enqueue_args(outbox),
        ]
        with _mapped("update_session"):
            done = await self._update_session(keys=keys, args=args)
        return bool(done)

    async def claim_event(self, provider: str, event_id: str, *, lease_s: float) -> str:
        """One script: the marker's state, or a new processing lease."""
        with _mapped("claim_event"):
            state = await self._claim_event(
                keys=[self.keys.webhook_dedup(provider, event_id)],
                args=[max(1, int(lease_s * 1000))],
            )
        return _text(state)

    async def finish_event(self, provider: str, event_id: str, *, ttl_s: int) -> None:
        """Mark the event done for ``ttl_s``."""
        with _mapped("finish_event"):
            await self.client.set(
                self.keys.webhook_dedup(provider, event_id), b"done", px=_ms(ttl_s)
            )

    async def forget_event(self, provider: str, event_id: str) -> None:
        """Drop an event marker."""
        with _mapped("forget_event"):
            await self.client.delete(self.keys.webhook_dedup(provider, event_id))

    async def schedule_expiry(self, session_id: str, at: float) -> None:
        """Index ``session_id`` for the sweeper at ``at``."""
        with _mapped("schedule_expiry"):
            await self.client.zadd(self.keys.expiry_index(), {session_id: at})

    async def drop_expiry(self, session_id: str) -> None:
        """Remove ``session_id`` from the expiry index."""
        with _mapped("drop_expiry"):
            await self.client.zrem(self.keys.expiry_index(), session_id)

    async def claim_expiries(self, *, now: float, lease_s: float, limit: int) -> list[str]:
        """Due session ids, leased for ``lease_s`` (Lua)."""
        with _mapped("claim_expiries"):
            ids = await self._claim_due(
                keys=[self.keys.expiry_index()], args=[repr(now), repr(now + lease_s), limit]
            )
        return [_text(i) for i in ids]

    # outbox
    def _outbox_keys(self) -> list[str]:
        k = self.keys
        return [
            k.outbox_due(),
            k.outbox_items(),
            k.outbox_leases(),
            k.outbox_dead(),
            k.outbox_dead_items(),
        ]

    async def outbox_add(self, items: Sequence[OutboxItem], *, due: float) -> None:
        """Enqueue ``items`` due at ``due`` (one transaction)."""
        if not items:
            return
        with _mapped("outbox_add"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.outbox_items(), mapping={i.id: i.to_json() for i in items})
                pipe.zadd(self.keys.outbox_due(), {i.id: due for i in items})
                await pipe.execute()

    async def outbox_claim(self, *, now: float, lease_s: float, limit: int) -> list[OutboxItem]:
        """Due items, each leased for ``lease_s`` with a fresh token (Lua)."""
        prefix = uuid.uuid4().hex + ":"
        with _mapped("outbox_claim"):
            reply = await self._outbox_claim(
                keys=self._outbox_keys()[:3],
                args=[repr(now), repr(now + lease_s), limit, prefix],
            )
        try:
            return [OutboxItem.from_json(raw, lease=lease) for raw, lease in _leased(reply)]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"an outbox item is unreadable: {exc}") from exc

    async def _finish(self, item: OutboxItem, action: str, score: float, keep: int = 0) -> bool:
        if item.lease is None:
            return False
        args: list[str | int | bytes] = [
            item.id,
            item.lease,
            action,
            item.to_json(),
            repr(score),
            keep,
        ]
        with _mapped(f"outbox_{action}"):
            done = await self._outbox_finish(keys=self._outbox_keys(), args=args)
        return bool(done)

    async def outbox_done(self, item: OutboxItem) -> bool:
        """Remove a delivered item (only with its current lease)."""
        return await self._finish(item, "done", 0.0)

    async def outbox_retry(self, item: OutboxItem, *, due: float) -> bool:
        """Store the item's new attempt count and make it due at ``due``."""
        return await self._finish(item, "retry", due)

    async def outbox_dead(self, item: OutboxItem, *, at: float, keep: int = 10_000) -> bool:
        """Move the item to the dead letters, keeping the newest ``keep``."""
        return await self._finish(item, "dead", at, keep)

    async def outbox_backlog(self, *, at_most: int = BACKLOG_COUNT_LIMIT) -> int:
        """Items waiting or being delivered, up to ``at_most`` (``ZCARD``: O(1))."""
        with _mapped("outbox_backlog"):
            return min(int(await self.client.zcard(self.keys.outbox_due())), at_most)

    async def outbox_dead_letters(self, limit: int = 100) -> list[OutboxItem]:
        """The newest dead letters first."""
        with _mapped("outbox_dead_letters"):
            ids = await self.client.zrevrange(self.keys.outbox_dead(), 0, limit - 1)
            if not ids:
                return []
            raw = await self.client.hmget(self.keys.outbox_dead_items(), [_text(i) for i in ids])
        return [OutboxItem.from_json(r) for r in raw if r is not None]
