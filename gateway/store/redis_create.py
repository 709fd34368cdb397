"""The create path of :class:`gateway.store.redis.RedisStore`, every script in one Redis Cluster
slot.

``begin_create`` claims the Idempotency-Key (one script on the key's bucket) and, only when it
claimed the key and the order guard is on, reserves the order reference (one script on the
order's slot). ``commit_create`` writes the session with its expiry entry, notifications and
orphan jobs and completes the key (A: one script on the session's bucket, which is the key's),
then binds the order reservation to the session and indexes it by orderReference (B: one script
on the order's slot). So a create costs three round trips without the order guard (B always
runs, for the index) and four with it.

A completes the key before B runs, so a B that fails (a crash, a ``WAIT`` short of replicas, a
Sentinel failover hold) leaves a key whose replay answers 201 for a session neither bound nor
indexed. A therefore stores B's calls in the idempotency record (``ob``), and the first replay of
the key runs them again (they are safe to repeat) and clears them: two round trips more, once.

A and B are not one transaction, so the reservation is written to survive a crash between them:
it names its session from the start (``claim:<token>|<session id>|<lease end>``, on the Redis
clock) and lives as long as a bound reservation. While the lease runs a create finding it is told
``claim:<token>`` (in flight, 409); once the lease is over it is told the session id, which it
reads: a session still payable keeps the order (409), a session never written (or finished) lets
it take the reservation over. Here, in the store, a lapsed reservation whose session was never
written is taken over at once (the create sees no holder), exactly as
:meth:`gateway.sessions.SessionService` would after reading it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

import orjson

from gateway.domain.session import SessionRecord
from gateway.idempotency import session_id_for
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
    StoreUnavailable,
)
from gateway.store.keys import RedisKeys, bucket
from gateway.store.redis_conn import LuaScript, RedisConn, ScriptArg, Unconfirmed
from gateway.store.redis_find import created_score, read_session
from gateway.store.redis_lifecycle import ENQUEUE, RedisLifecycle
from gateway.store.redis_support import _mapped, _ms, _text

log = logging.getLogger("gateway.store.redis")

#: when a failed create's claim (and reservation) is tried to be given up again, after the
#: first try failed: Redis is often back (a failover takes seconds) well before the lease ends
_UNDO_RETRIES_S = (0.5, 1.0, 2.0, 4.0)

__all__ = ["RedisCreate"]

#: tokens whose commit this process started and has not seen bind its order (at most this
#: many are remembered): releasing their reservation lapses it instead of deleting it
_COMMITTING_MAX = 100_000

# The reservation's parts: 'claim:<token>|<session id>|<lease end ms>' (Redis clock).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function parse(v)
  return string.match(v, '^claim:([^|]*)|([^|]*)|(%d+)$')
end
"""

# KEYS idempotency record; ARGV 1 fingerprint, 2 token, 3 lease_ms, 4 pin JSON ('' for none),
# 5 pin ttl_ms. A pinned record lives for the pin's ttl and holds its lease in 'until' (Redis
# clock, ms): a lapsed lease or a given-up claim ('tok' gone) is claimed again with the stored
# pin. Replies {'mismatch'}, {'replay', status, body, location, order binding}, {'in_flight', ms
# left} or
# {'claimed', pin, sent, resumed}.
_CLAIM = LuaScript("""
local rec = redis.call(
  'HMGET', KEYS[1], 'fp', 'tok', 'st', 'body', 'loc', 'until', 'pin', 'sent', 'ob')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pin, resumed = ARGV[4], '0'
if rec[1] then
  if rec[1] ~= ARGV[1] then return {'mismatch'} end
  if rec[3] then return {'replay', rec[3], rec[4], rec[5], rec[9]} end
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
  if not rec[1] then redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[5]), lease)) end
  if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {'claimed', pin, rec[8] or '', resumed}
""")

# KEYS reservation, next-session key of this token (same slot); ARGV 1 token, 2 session id,
# 3 lease_ms, 4 ttl_ms. Free (or lapsed without a session id): reserved for the token, naming
# the session -> {'reserved'}. Held while the lease runs -> {'held', 'claim:<token>'}; else the
# next-session key is set (replace_order reads it) -> {'held', a bound session id} or, once the
# lease is over, {'lapsed', session id, the value as read}.
_RESERVE = LuaScript(
    _NOW
    + """
local current = redis.call('GET', KEYS[1])
local tok, sid, untl
if current then tok, sid, untl = parse(current) end
if not current or (tok and sid == '' and tonumber(untl) <= now) then
  local value = 'claim:' .. ARGV[1] .. '|' .. ARGV[2] .. '|' .. (now + tonumber(ARGV[3]))
  redis.call('SET', KEYS[1], value, 'PX', math.max(tonumber(ARGV[4]), tonumber(ARGV[3])))
  return {'reserved'}
end
if tok and tonumber(untl) > now then return {'held', 'claim:' .. tok} end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if not tok then return {'held', current} end
return {'lapsed', sid, current}
"""
)

# Compare-and-set. KEYS reservation, next-session key of the token; ARGV 1 expected (a session
# id: the bound value, or the session of a lapsed claim; or the exact value read), 2 token,
# 3 lease_ms, 4 ttl_ms. The new claim names the session the next-session key holds (none: it is
# kept for the lease only).
_REPLACE = LuaScript(
    _NOW
    + """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if current ~= ARGV[1] then
  local tok, sid, untl = parse(current)
  if not tok or sid ~= ARGV[1] or tonumber(untl) > now then return 0 end
end
local sid = redis.call('GET', KEYS[2]) or ''
local lease = tonumber(ARGV[3])
local ttl = lease
if sid ~= '' then ttl = math.max(tonumber(ARGV[4]), lease) end
redis.call('SET', KEYS[1], 'claim:' .. ARGV[2] .. '|' .. sid .. '|' .. (now + lease), 'PX', ttl)
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS reservation; ARGV 1 token, 2 'lapse' | 'drop'. Only the token's claim is touched: dropped,
# or (after a commit that may have written the session) lapsed, keeping the session it names
# and its lifetime, so the session keeps the order until a create has read it.
_RELEASE_ORDER = LuaScript(
    _NOW
    + """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if current == 'claim:' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
local tok, sid = parse(current)
if tok ~= ARGV[1] then return 0 end
if ARGV[2] == 'drop' or sid == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], 'claim:|' .. sid .. '|0', 'KEEPTTL')
end
return 1
"""
)

# KEYS idempotency record; ARGV token. Drop the claim if the token still holds it.
_RELEASE = LuaScript("""
if redis.call('HGET', KEYS[1], 'tok') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
""")

# KEYS idempotency record; ARGV token, providers sent (comma-separated). Drops the lease and
# keeps the pin, adding the providers; a record without a pin is deleted (a plain release).
_ABANDON = LuaScript("""
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
""")

# Completes the key at KEYS[k] from ARGV[a..a+5]: token, status, body, ttl_ms, location (''),
# order binding ('': none; else B's calls as JSON, re-run by a replay until it clears them, so a
# session whose B failed after this completion is still bound and indexed)
_COMPLETE_FN = """
local function complete(k, a)
  if redis.call('HGET', KEYS[k], 'tok') ~= ARGV[a] then return 0 end
  redis.call('HDEL', KEYS[k], 'tok', 'until')
  redis.call('HSET', KEYS[k], 'st', ARGV[a + 1], 'body', ARGV[a + 2])
  if ARGV[a + 4] ~= '' then redis.call('HSET', KEYS[k], 'loc', ARGV[a + 4]) end
  if ARGV[a + 5] ~= '' then redis.call('HSET', KEYS[k], 'ob', ARGV[a + 5]) end
  redis.call('PEXPIRE', KEYS[k], ARGV[a + 3])
  return 1
end
"""

# KEYS idempotency record; ARGV token, status, body, ttl_ms, location, order binding
_COMPLETE = LuaScript(_COMPLETE_FN + "return complete(1, 1)\n")

# A: KEYS session, expiry, outbox due, outbox items, orphan due, orphan items, idempotency record
# (all of the session's bucket; the session key again when the key lies elsewhere);
# ARGV 1 payload, 2 ttl_ms, 3 expiry_at ('' for none), 4 session id, 5 complete here ('1'|'0'),
# 6..11 completion (token, status, body, ttl_ms, location, order binding), 12 number of orphan
# jobs n, then
# n id/json pairs, then the due time (of the jobs and the notifications), then the
# notifications' id/json pairs
_COMMIT_SESSION = LuaScript(
    ENQUEUE
    + _COMPLETE_FN
    + """
-- a session an earlier attempt of the key stored is never overwritten (it may have moved on)
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) end
  local jobs = tonumber(ARGV[12])
  local due = 13 + 2 * jobs
  for i = 13, due - 1, 2 do
    redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[5], ARGV[due], ARGV[i])
  end
  enqueue(3, due)
end
if ARGV[5] ~= '1' then return 0 end
return complete(7, 6)
"""
)

# B: KEYS reservation, the merchant's sessions of the orderReference (same slot; either may be
# given twice when only one is to be written); ARGV 1 bind ('1'|'0'), 2 token, 3 session id,
# 4 order ttl_ms, 5 index ('1'|'0'), 6 createdAt (epoch µs), 7 session ttl_ms. Binds the
# reservation to the session if the token's claim still holds it (or a claim naming this very
# session: the same key's earlier attempt); indexes the session.
_COMMIT_ORDER = LuaScript(
    """
local function parse(v)
  return string.match(v, '^claim:([^|]*)|([^|]*)|(%d+)$')
end
if ARGV[1] == '1' then
  local current = redis.call('GET', KEYS[1])
  if current then
    local tok, sid = parse(current)
    if current == 'claim:' .. ARGV[2] or (tok and (tok == ARGV[2] or sid == ARGV[3])) then
      redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
    end
  end
end
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[3])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[7]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[7])
  end
end
return 1
"""
)


class RedisCreate:
    """Mixed into :class:`~gateway.store.redis.RedisStore` (which sets ``keys``, ``conn`` and
    ``order_ttl_ms``)."""

    keys: RedisKeys
    conn: RedisConn
    order_ttl_ms: int
    _committing: OrderedDict[str, None]
    _undoing: set[asyncio.Task[None]]

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
        """Claim the key (resuming a pinned one), then, when claimed, reserve the order: one
        round trip each, both answered once a replica has them."""
        proposed = pin.to_json() if pin is not None else b""
        try:
            with _mapped("begin_create"):
                reply = await self.conn.script(
                    _CLAIM,
                    [self.keys.idempotency(scope, key)],
                    [fingerprint, token, lease_ms, proposed, pin_ttl_ms],
                    confirm=True,
                )
        except Unconfirmed:
            # the claim ran, but no replica confirmed it: give it up again so the client's
            # retry is not told 409 for the whole lease (a Redis that does not answer is not
            # asked again: the 503 must not wait for it twice)
            await self._abandon_quietly(scope, key, token)
            raise
        kind = _text(reply[0])
        if kind == "claimed":
            holder = None
            if order_ref is not None:
                try:
                    holder = await self._reserve(scope, key, order_ref, token, lease_ms)
                except StoreUnavailable:
                    await self._undo_quietly(scope, key, order_ref, token)
                    raise
            stored = bytes(reply[1])
            begun_pin = CreatePin.from_json(stored, _text(reply[2])) if stored else None
            claim = Claim(ClaimKind.CLAIMED, token=token)
            return Begun(claim, holder, begun_pin, _text(reply[3]) == "1")
        if kind == "replay":
            location = _text(reply[3]) if len(reply) > 3 and reply[3] is not None else None
            if len(reply) > 4 and reply[4]:
                await self._rebind(scope, key, bytes(reply[4]))
            return Begun(
                Claim(
                    ClaimKind.REPLAY,
                    response=StoredResponse(int(reply[1]), bytes(reply[2]), location),
                )
            )
        if kind == "in_flight":
            return Begun(Claim(ClaimKind.IN_FLIGHT, retry_after_ms=max(1, int(reply[1]))))
        return Begun(Claim(ClaimKind.MISMATCH))

    async def _reserve(
        self, scope: str, key: str, order_ref: str, token: str, lease_ms: int
    ) -> str | None:
        """Reserve the order for ``token``; its holder otherwise. A lapsed claim whose session
        was never written is taken over here (one read and one compare-and-set more)."""
        keys = [self.keys.order(scope, order_ref), self.keys.order_next(scope, order_ref, token)]
        args: list[ScriptArg] = [token, session_id_for(scope, key), lease_ms, self.order_ttl_ms]
        for _ in range(2):
            with _mapped("begin_create"):
                reply = await self.conn.script(_RESERVE, keys, args, confirm=True)
            kind = _text(reply[0])
            if kind == "reserved":
                return None
            if kind == "held":
                return _text(reply[1])
            holder = _text(reply[1])
            if await read_session(self.conn, self.keys, holder) is not None:
                return holder  # the caller decides whether that session keeps the order
            with _mapped("begin_create"):
                taken = await self.conn.script(
                    _REPLACE,
                    keys,
                    [_text(reply[2]), token, lease_ms, self.order_ttl_ms],
                    confirm=True,
                )
            if taken:
                return None
        return ORDER_CLAIM_PREFIX  # changed hands twice meanwhile: someone is creating it

    async def _undo_quietly(self, scope: str, key: str, order_ref: str, token: str) -> None:
        """Give the order (if the reservation was made) and the key (keeping its pin) up again
        after the reservation failed, so a retry need not wait out the lease."""
        await self._undo(scope, key, order_ref, token)

    async def _abandon_quietly(self, scope: str, key: str, token: str) -> None:
        """Give the key up if ``token`` holds it, keeping its pin."""
        await self._undo(scope, key, None, token)

    async def _undo(self, scope: str, key: str, order_ref: str | None, token: str) -> None:
        """Try once now (a Redis that does not answer is not waited for twice: the caller's
        503 must not wait), then again in the background after :data:`_UNDO_RETRIES_S`, as
        the Redis that failed is often back (a failover) well before the lease ends. Each step
        touches only what ``token`` still holds; what is never undone frees with its lease."""
        if await self._undo_once(scope, key, order_ref, token):
            return
        task = asyncio.ensure_future(self._undo_later(scope, key, order_ref, token))
        self._undoing.add(task)
        task.add_done_callback(self._undoing.discard)

    async def _undo_once(self, scope: str, key: str, order_ref: str | None, token: str) -> bool:
        try:
            with _mapped("begin_create"):
                if order_ref is not None:
                    await self.conn.script(
                        _RELEASE_ORDER, [self.keys.order(scope, order_ref)], [token, "drop"]
                    )
                await self.conn.script(_ABANDON, [self.keys.idempotency(scope, key)], [token, ""])
        except StoreUnavailable:
            return False
        return True

    async def _undo_later(self, scope: str, key: str, order_ref: str | None, token: str) -> None:
        for delay in _UNDO_RETRIES_S:
            await asyncio.sleep(delay)
            if await self._undo_once(scope, key, order_ref, token):
                return
        log.warning("could not give a failed create's claim up; its lease will expire")

    async def abandon_create(
        self, scope: str, key: str, token: str, *, sent: Sequence[str]
    ) -> None:
        """Drop the lease, keep the pin (one round trip, answered once a replica has it)."""
        with _mapped("abandon_create"):
            await self.conn.script(
                _ABANDON,
                [self.keys.idempotency(scope, key)],
                [token, ",".join(sent)],
                confirm=True,
            )

    async def release(self, scope: str, key: str, token: str) -> None:
        """Drop the claim if ``token`` still holds it."""
        with _mapped("release"):
            await self.conn.script(_RELEASE, [self.keys.idempotency(scope, key)], [token])

    async def replace_order(
        self, scope: str, order_ref: str, expected: str, token: str, *, lease_ms: int
    ) -> bool:
        """Take the reservation over from ``expected``: a bound session id, or the session a
        lapsed claim names (answered once a replica has it)."""
        keys = [self.keys.order(scope, order_ref), self.keys.order_next(scope, order_ref, token)]
        with _mapped("replace_order"):
            swapped = await self.conn.script(
                _REPLACE, keys, [expected, token, lease_ms, self.order_ttl_ms], confirm=True
            )
        return bool(swapped)

    async def release_order(self, scope: str, order_ref: str, token: str) -> None:
        """Drop the reservation held by ``token``; after a commit of the token that may have
        written its session (it raised before binding the order), lapse it instead, so the
        session keeps the order until a create has read it."""
        mode = "lapse" if token in self._committing else "drop"
        with _mapped("release_order"):
            await self.conn.script(
                _RELEASE_ORDER, [self.keys.order(scope, order_ref)], [token, mode]
            )
        self._committing.pop(token, None)

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
        """Write the session, enqueue its notifications and orphan jobs and complete the key
        (A, one script in the session's bucket), then bind the order and index the session (B,
        one script in the order's slot); each answered once a replica has it."""
        c = completion
        binding = _dump_calls(self._order_calls(record, c, ttl_s))
        n = bucket(record.sessionId)
        idem = self.keys.idempotency(c.scope, c.key)
        session = self.keys.session(record.sessionId)
        here = bucket(session_id_for(c.scope, c.key)) == n
        finish: list[ScriptArg] = [
            c.token,
            c.response.status,
            c.response.body,
            _ms(c.ttl_s),
            c.response.location or "",
            binding,
        ]
        keys = [
            session,
            self.keys.expiry_index(n),
            self.keys.outbox_due(n),
            self.keys.outbox_items(n),
            self.keys.orphans_due(n),
            self.keys.orphans_items(n),
            idem if here else session,
        ]
        args: list[ScriptArg] = [
            record.model_dump_json().encode(),
            _ms(ttl_s),
            repr(expires_at) if expires_at is not None else "",
            record.sessionId,
            "1" if here else "0",
            *finish,
            len(orphans),
            *[part for job in orphans for part in (job.id, job.to_json())],
            *RedisLifecycle._enqueue_args(outbox),
        ]
        if c.order_ref is not None:
            self._committing[c.token] = None
            while len(self._committing) > _COMMITTING_MAX:
                self._committing.popitem(last=False)
        with _mapped("commit_create"):
            done = await self.conn.script(_COMMIT_SESSION, keys, args, confirm=True)
            if not here:  # a key whose session id is not the one it derives (tests, tools)
                done = await self.conn.script(_COMPLETE, [idem], finish, confirm=True)
            await self._commit_order(record, c, ttl_s)
        self._committing.pop(c.token, None)
        return bool(done)

    async def _commit_order(self, record: SessionRecord, c: Completion, ttl_s: int) -> None:
        """B: bind the reservation held by ``c.token`` to the session and index the session by
        its merchant and orderReference (one script; two when they lie in different slots)."""
        for keys, args in self._order_calls(record, c, ttl_s):
            await self.conn.script(_COMMIT_ORDER, keys, args, confirm=True)

    def _order_calls(self, record: SessionRecord, c: Completion, ttl_s: int) -> list[_Call]:
        """The keys and arguments of B's scripts (safe to run again: they bind only a
        reservation naming this token or session, and index the session with its own score)."""
        index = self.keys.order_sessions(record.merchantId, record.orderReference)
        indexing: list[ScriptArg] = ["1", created_score(record.createdAt), _ms(ttl_s)]
        if c.order_ref is None:
            return [([index, index], ["0", "", record.sessionId, 0, *indexing])]
        order = self.keys.order(c.scope, c.order_ref)
        binding: list[ScriptArg] = ["1", c.token, record.sessionId, _ms(max(1, c.order_ttl_s))]
        if (c.scope, c.order_ref) == (record.merchantId, record.orderReference):
            return [([order, index], [*binding, *indexing])]
        return [
            ([order, order], [*binding, "0", 0, 0]),
            ([index, index], ["0", "", record.sessionId, 0, *indexing]),
        ]

    async def _rebind(self, scope: str, key: str, stored: bytes) -> None:
        """A replay of a completed create: run its B again (it may have failed after the key
        was completed: a crash, a WAIT short of replicas, a failover hold), then forget it, so
        the session answered 201 is bound and found by its orderReference."""
        try:
            calls = [(list(keys), list(args)) for keys, args in orjson.loads(stored)]
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise StoreUnavailable(f"a stored order binding is unreadable: {exc}") from exc
        with _mapped("begin_create"):
            for keys, args in calls:
                await self.conn.script(_COMMIT_ORDER, keys, args, confirm=True)
            await self.conn.client.hdel(self.keys.idempotency(scope, key), "ob")


_Call = tuple[list[str], list[ScriptArg]]


def _dump_calls(calls: list[_Call]) -> bytes:
    return orjson.dumps(
        [[keys, [a.decode() if isinstance(a, bytes) else a for a in args]] for keys, args in calls]
    )
