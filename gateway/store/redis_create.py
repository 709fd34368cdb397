"""The create path of :class:`gateway.store.redis.RedisStore` in two round trips.

``begin_create`` claims the Idempotency-Key and reserves the order reference in one script;
``commit_create`` writes the session (with its expiry and orderReference index entries,
notifications and orphan jobs), points the order reservation at it and completes the key in one
script. Between them is only the provider call, so a create costs two Redis round trips however
many records it touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from gateway.domain.session import SessionRecord
from gateway.store.base import (
    ORDER_CLAIM_PREFIX,
    Begun,
    Claim,
    ClaimKind,
    Completion,
    CreatePin,
    OrphanJob,
    OutboxItem,
    StoredResponse,
)
from gateway.store.keys import RedisKeys
from gateway.store.redis_find import created_score
from gateway.store.redis_lifecycle import _ENQUEUE, RedisLifecycle
from gateway.store.redis_support import _mapped, _ms, _text

__all__ = ["RedisCreate"]


# KEYS idempotency record, order reservation; ARGV 1 fingerprint, 2 token, 3 lease_ms,
# 4 reservation value ('' when the order guard is off), 5 pin JSON ('' for none), 6 pin ttl_ms.
# A pinned record lives for the pin's ttl and holds its lease in 'until' (Redis clock, ms): a
# lapsed lease or a given-up claim ('tok' gone) is claimed again with the stored pin.
# Replies like the claim script; claimed: {'claimed', order holder or '', pin, sent, resumed}.
_BEGIN = """
local rec = redis.call('HMGET', KEYS[1], 'fp', 'tok', 'st', 'body', 'loc', 'until', 'pin', 'sent')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pin, resumed = ARGV[5], '0'
if rec[1] then
  if rec[1] ~= ARGV[1] then return {'mismatch'} end
  if rec[3] then return {'replay', rec[3], rec[4], rec[5]} end
  if rec[2] then
    if not rec[6] then return {'in_flight', redis.call('PTTL', KEYS[1])} end
    local left = tonumber(rec[6]) - now
    if left > 0 then return {'in_flight', left} end
  end
  if rec[7] then pin, resumed = rec[7], '1' end
end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'tok', ARGV[2])
if pin ~= '' then
  redis.call('HSET', KEYS[1], 'pin', pin, 'until', now + tonumber(ARGV[3]))
  local lease = tonumber(ARGV[3])
  if not rec[1] then redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[6]), lease)) end
  if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local holder = ''
if ARGV[4] ~= '' then
  local current = redis.call('GET', KEYS[2])
  if current then
    holder = current
  else
    redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
  end
end
return {'claimed', holder, pin, rec[8] or '', resumed}
"""

# KEYS idempotency record; ARGV token, providers sent (comma-separated). Drops the lease and
# keeps the pin, adding the providers; a record without a pin is deleted (a plain release).
_ABANDON = """
if redis.call('HGET', KEYS[1], 'tok') ~= ARGV[1] then return 0 end
if not redis.call('HGET', KEYS[1], 'pin') then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('HDEL', KEYS[1], 'tok', 'until')
local sent = redis.call('HGET', KEYS[1], 'sent') or ''
for p in string.gmatch(ARGV[2], '[^,]+') do
  if not string.find(',' .. sent .. ',', ',' .. p .. ',', 1, true) then
    if sent == '' then sent = p else sent = sent .. ',' .. p end
  end
end
redis.call('HSET', KEYS[1], 'sent', sent)
return 1
"""

# KEYS session, expiry index, outbox due, outbox items, idempotency record, order reservation,
# orphan due, orphan items, the merchant's sessions of the orderReference
# ARGV 1 payload, 2 ttl_ms, 3 expiry_at ('' for none), 4 session id, 5 token, 6 status, 7 body,
# 8 idempotency ttl_ms, 9 location (''), 10 reservation value ('' when none), 11 order ttl_ms,
# 12 createdAt (epoch µs), 13 number of orphan jobs n, then n id/json pairs, then the due time
# (of the jobs and the notifications), then the notifications' id/json pairs
_COMMIT = (
    _ENQUEUE
    + """
-- a session an earlier attempt of the key stored is never overwritten (it may have moved on)
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) end
  redis.call('ZADD', KEYS[9], ARGV[12], ARGV[4])
  if redis.call('PTTL', KEYS[9]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[9], ARGV[2])
  end
  local jobs = tonumber(ARGV[13])
  local due = 14 + 2 * jobs
  for i = 14, due - 1, 2 do
    redis.call('HSET', KEYS[8], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[7], ARGV[due], ARGV[i])
  end
  enqueue(3, due)
end
if ARGV[10] ~= '' and redis.call('GET', KEYS[6]) == ARGV[10] then
  redis.call('SET', KEYS[6], ARGV[4], 'PX', ARGV[11])
end
if redis.call('HGET', KEYS[5], 'tok') ~= ARGV[5] then return 0 end
redis.call('HDEL', KEYS[5], 'tok', 'until')
redis.call('HSET', KEYS[5], 'st', ARGV[6], 'body', ARGV[7])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[5], 'loc', ARGV[9]) end
redis.call('PEXPIRE', KEYS[5], ARGV[8])
return 1
"""
)


class RedisCreate:
    """Mixed into :class:`~gateway.store.redis.RedisStore` (which sets ``keys`` and ``client``)."""

    keys: RedisKeys
    client: aioredis.Redis
    _begin_create: AsyncScript
    _commit_create: AsyncScript
    _abandon_create: AsyncScript

    def _register_create_scripts(self, client: aioredis.Redis) -> None:
        self._begin_create = client.register_script(_BEGIN)
        self._commit_create = client.register_script(_COMMIT)
        self._abandon_create = client.register_script(_ABANDON)

    async def begin_create(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        *,
        token: str,
        lease_ms: int,
        order_ref: str | None,
        pin: CreatePin | None = None,
        pin_ttl_ms: int = 0,
    ) -> Begun:
        """Claim the key (resuming a pinned one) and reserve the order in one round trip."""
        idem = self.keys.idempotency(scope, key)
        order = self.keys.order(scope, order_ref) if order_ref is not None else idem
        value = ORDER_CLAIM_PREFIX + token if order_ref is not None else ""
        proposed = pin.to_json() if pin is not None else b""
        with _mapped("begin_create"):
            reply = await self._begin_create(
                keys=[idem, order],
                args=[fingerprint, token, lease_ms, value, proposed, pin_ttl_ms],
            )
        kind = _text(reply[0])
        if kind == "claimed":
            return _claimed(reply, token)
        if kind == "replay":
            location = _text(reply[3]) if len(reply) > 3 and reply[3] is not None else None
            return Begun(
                Claim(
                    ClaimKind.REPLAY,
                    response=StoredResponse(int(reply[1]), bytes(reply[2]), location),
                )
            )
        if kind == "in_flight":
            return Begun(Claim(ClaimKind.IN_FLIGHT, retry_after_ms=max(1, int(reply[1]))))
        return Begun(Claim(ClaimKind.MISMATCH))

    async def abandon_create(
        self, scope: str, key: str, token: str, *, sent: Sequence[str]
    ) -> None:
        """Drop the lease, keep the pin (one round trip)."""
        with _mapped("abandon_create"):
            await self._abandon_create(
                keys=[self.keys.idempotency(scope, key)], args=[token, ",".join(sent)]
            )

    async def commit_create(
        self,
        record: SessionRecord,
        completion: Completion,
        *,
        ttl_s: int,
        expires_at: float | None,
        outbox: Sequence[OutboxItem] = (),
        orphans: Sequence[OrphanJob] = (),
    ) -> bool:
        """Write the session, enqueue its orphan jobs, bind the order and complete the key in
        one round trip."""
        c = completion
        order_key = (
            self.keys.order(c.scope, c.order_ref)
            if c.order_ref is not None
            else self.keys.idempotency(c.scope, c.key)
        )
        keys = [
            self.keys.session(record.sessionId),
            self.keys.expiry_index(),
            self.keys.outbox_due(),
            self.keys.outbox_items(),
            self.keys.idempotency(c.scope, c.key),
            order_key,
            self.keys.orphans_due(),
            self.keys.orphans_items(),
            self.keys.order_sessions(record.merchantId, record.orderReference),
        ]
        args: list[str | int | bytes] = [
            record.model_dump_json().encode(),
            _ms(ttl_s),
            repr(expires_at) if expires_at is not None else "",
            record.sessionId,
            c.token,
            c.response.status,
            c.response.body,
            _ms(c.ttl_s),
            c.response.location or "",
            ORDER_CLAIM_PREFIX + c.token if c.order_ref is not None else "",
            _ms(max(1, c.order_ttl_s)),
            created_score(record.createdAt),
            len(orphans),
            *[part for job in orphans for part in (job.id, job.to_json())],
            *RedisLifecycle._enqueue_args(outbox),
        ]
        with _mapped("commit_create"):
            done = await self._commit_create(keys=keys, args=args)
        return bool(done)


def _claimed(reply: list[Any], token: str) -> Begun:
    holder = _text(reply[1]) or None
    stored = bytes(reply[2])
    pin = CreatePin.from_json(stored, _text(reply[3])) if stored else None
    return Begun(Claim(ClaimKind.CLAIMED, token=token), holder, pin, _text(reply[4]) == "1")
