"""The create path of :class:`gateway.store.redis.RedisStore` in two round trips.

``begin_create`` claims the Idempotency-Key and reserves the order reference in one script;
``commit_create`` writes the session (with its expiry index entry and notifications), points the
order reservation at it and completes the key in one script. Between them is only the provider
call, so a create costs two Redis round trips however many records it touches.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from gateway.domain.session import SessionRecord
from gateway.store.base import Begun, Claim, ClaimKind, Completion, OutboxItem, StoredResponse
from gateway.store.keys import RedisKeys
from gateway.store.redis_lifecycle import _ENQUEUE, RedisLifecycle
from gateway.store.redis_support import _mapped, _ms, _text

__all__ = ["RedisCreate"]

_CLAIM_PREFIX = "claim:"

# KEYS idempotency record, order reservation; ARGV fingerprint, token, lease_ms, reservation
# value ('' when the order guard is off). Replies like the claim script, plus the order's holder.
_BEGIN = """
local rec = redis.call('HMGET', KEYS[1], 'fp', 'tok', 'st', 'body', 'loc')
if rec[1] then
  if rec[1] ~= ARGV[1] then return {'mismatch'} end
  if rec[3] then return {'replay', rec[3], rec[4], rec[5]} end
  return {'in_flight', redis.call('PTTL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'tok', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then
  local holder = redis.call('GET', KEYS[2])
  if holder then return {'claimed', holder} end
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
end
return {'claimed'}
"""

# KEYS session, expiry index, outbox due, outbox items, idempotency record, order reservation
# ARGV 1 payload, 2 ttl_ms, 3 expiry_at ('' for none), 4 session id, 5 token, 6 status, 7 body,
# 8 idempotency ttl_ms, 9 location (''), 10 reservation value ('' when none), 11 order ttl_ms,
# 12 outbox due, then id/json pairs
_COMMIT = (
    _ENQUEUE
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) end
enqueue(3, 12)
if ARGV[10] ~= '' and redis.call('GET', KEYS[6]) == ARGV[10] then
  redis.call('SET', KEYS[6], ARGV[4], 'PX', ARGV[11])
end
if redis.call('HGET', KEYS[5], 'tok') ~= ARGV[5] then return 0 end
redis.call('HDEL', KEYS[5], 'tok')
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

    def _register_create_scripts(self, client: aioredis.Redis) -> None:
        self._begin_create = client.register_script(_BEGIN)
        self._commit_create = client.register_script(_COMMIT)

    async def begin_create(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        *,
        token: str,
        lease_ms: int,
        order_ref: str | None,
    ) -> Begun:
        """Claim the key and reserve the order in one round trip."""
        idem = self.keys.idempotency(scope, key)
        order = self.keys.order(scope, order_ref) if order_ref is not None else idem
        value = _CLAIM_PREFIX + token if order_ref is not None else ""
        with _mapped("begin_create"):
            reply = await self._begin_create(
                keys=[idem, order], args=[fingerprint, token, lease_ms, value]
            )
        kind = _text(reply[0])
        if kind == "claimed":
            holder = _text(reply[1]) if len(reply) > 1 else None
            return Begun(Claim(ClaimKind.CLAIMED, token=token), holder)
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

    async def commit_create(
        self,
        record: SessionRecord,
        completion: Completion,
        *,
        ttl_s: int,
        expires_at: float | None,
        outbox: Sequence[OutboxItem] = (),
    ) -> bool:
        """Write the session, bind the order and complete the key in one round trip."""
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
            _CLAIM_PREFIX + c.token if c.order_ref is not None else "",
            _ms(max(1, c.order_ttl_s)),
            *RedisLifecycle._enqueue_args(outbox),
        ]
        with _mapped("commit_create"):
            done = await self._commit_create(keys=keys, args=args)
        return bool(done)
