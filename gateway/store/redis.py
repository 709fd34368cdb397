"""The production store: Redis, shared by every gateway process and machine.

Every operation is one round trip; the ones that read and then write run as Lua scripts, so
they are atomic across processes. Key layout and lifetimes: :mod:`gateway.store.keys`.

Errors are mapped once, here: any redis-py error (connection refused, timeout, a ``WRONGTYPE``
or script error...) or a record that no longer parses becomes :class:`StoreUnavailable`
(``raise StoreUnavailable(...) from exc``). Only opening a connection is retried (nothing was
sent yet); a command is never re-sent: a dead Redis fails within the socket timeouts, the request
answers 503, and the client's retry with the same Idempotency-Key is safe because every claim is
leased.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from gateway.domain.session import SessionRecord
from gateway.store.base import (
    Claim,
    ClaimKind,
    StoredResponse,
    StoreUnavailable,
)
from gateway.store.coordination import CircuitState
from gateway.store.keys import RedisKeys, circuit_ttl_s
from gateway.store.redis_client import RedisClientSettings, open_redis_client, warm_up
from gateway.store.redis_create import RedisCreate
from gateway.store.redis_find import RedisFind
from gateway.store.redis_lifecycle import RedisLifecycle
from gateway.store.redis_orphans import RedisOrphans
from gateway.store.redis_support import _mapped, _ms, _text

__all__ = ["RedisStore"]

_CLAIM_PREFIX = "claim:"

# Idempotency record: hash {fp, tok} while leased; {fp, st, body[, loc]} once completed.
# KEYS[1] record; ARGV fingerprint, token, lease_ms
_CLAIM = """
local rec = redis.call('HMGET', KEYS[1], 'fp', 'tok', 'st', 'body', 'loc')
if not rec[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'tok', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'claimed'}
end
if rec[1] ~= ARGV[1] then return {'mismatch'} end
if rec[3] then return {'replay', rec[3], rec[4], rec[5]} end
return {'in_flight', redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] record; ARGV token, status, body, ttl_ms[, location]
_COMPLETE = """
if redis.call('HGET', KEYS[1], 'tok') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'tok')
redis.call('HSET', KEYS[1], 'st', ARGV[2], 'body', ARGV[3])
if ARGV[5] then redis.call('HSET', KEYS[1], 'loc', ARGV[5]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS[1] record; ARGV token
_RELEASE = """
if redis.call('HGET', KEYS[1], 'tok') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] reservation; ARGV value, lease_ms. Returns the current holder, or nil when reserved.
_ORDER_RESERVE = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# Compare-and-set. KEYS[1] reservation; ARGV expected[, new value, ttl_ms] (no new: delete)
_ORDER_CAS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

# Circuit hash {state='open'?, open_until, failures, seq}; absent state means closed.
# KEYS hash, fails, probes; ARGV now, cutoff (now - window), threshold, open_until (now + open),
# ttl_ms while closed, ttl_ms once open. Returns {state, failures, open_until|nil}.
_CIRCUIT_FAILURE = """
local now = tonumber(ARGV[1])
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'failures')
if st[1] == 'open' then
  if now < tonumber(st[2]) then return {'open', tonumber(st[3]), st[2]} end
  local n = tonumber(st[3]) + 1
  redis.call('HSET', KEYS[1], 'open_until', ARGV[4], 'failures', n)
  redis.call('DEL', KEYS[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {'open', n, ARGV[4]}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], redis.call('HINCRBY', KEYS[1], 'seq', 1))
local n = redis.call('ZCARD', KEYS[2])
if n >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', ARGV[4], 'failures', n)
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {'open', n, ARGV[4]}
end
redis.call('HSET', KEYS[1], 'failures', n)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {'closed', n, false}
"""

# KEYS hash, fails, probes; ARGV now. Half-open closes; nothing else is written.
_CIRCUIT_SUCCESS = """
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'failures')
if st[1] == 'open' then
  if tonumber(ARGV[1]) >= tonumber(st[2]) then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    return {'closed', 0, false}
  end
  return {'open', tonumber(st[3]), st[2]}
end
return {'closed', tonumber(st[3]) or 0, false}
"""

# KEYS hash, probes; ARGV now, cutoff (now - probe_ttl), max_probes, probe_ttl_ms
_CIRCUIT_PROBE = """
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until')
if st[1] ~= 'open' then return 1 end
if tonumber(ARGV[1]) < tonumber(st[2]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[1], redis.call('HINCRBY', KEYS[1], 'seq', 1))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""


def _circuit(reply: list[Any]) -> CircuitState:
    state, failures, open_until = reply
    until = float(_text(open_until)) if open_until is not None else None
    return CircuitState(_text(state), int(failures), until)


class RedisStore(RedisLifecycle, RedisCreate, RedisFind, RedisOrphans):
    """The :class:`~gateway.store.base.Store` on Redis (``redis.asyncio`` with hiredis).

    ``url`` is a redis URL (``redis://host:port/db``, ``rediss://`` for TLS); ``prefix`` is the
    root of every key (``Settings.redis_prefix``). Unless ``client`` is given, the store opens a
    client per ``conf`` (:mod:`gateway.store.redis_client`: a blocking pool, connect retries,
    never a re-sent command; ``max_connections`` overrides the pool size) and owns it:
    :meth:`close` closes it. A given ``client`` (``decode_responses=False``) stays the caller's
    to close.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        client: aioredis.Redis | None = None,
        conf: RedisClientSettings | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.keys = RedisKeys(prefix)
        self._owns_client = client is None
        if client is None:
            conf = conf or RedisClientSettings()
            if max_connections is not None:
                conf = replace(conf, max_connections=max_connections)
            client = open_redis_client(url, conf)
        self.warm_connections = conf.warm_connections if conf is not None else 0
        self.client = client
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)
        self._order_reserve = client.register_script(_ORDER_RESERVE)
        self._order_cas = client.register_script(_ORDER_CAS)
        self._circuit_failure = client.register_script(_CIRCUIT_FAILURE)
        self._circuit_success = client.register_script(_CIRCUIT_SUCCESS)
        self._circuit_probe = client.register_script(_CIRCUIT_PROBE)
        self._register_lifecycle_scripts(client)
        self._register_create_scripts(client)
        self._register_orphan_scripts(client)

    async def warm_up(self) -> int:
        """Open the configured number of pooled connections now (best effort); how many."""
        return await warm_up(self.client, self.warm_connections) if self.warm_connections else 0

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless Redis answers."""
        with _mapped("ping"):
            await self.client.ping()

    async def purge(self, *, now: float, limit: int) -> int:
        """Nothing to do: every record carries its own TTL and expires by itself."""
        return 0

    async def close(self) -> None:
        """Close the connection pool (when this store opened it)."""
        if self._owns_client:
            with _mapped("close"):
                await self.client.aclose()

    # idempotency
    async def claim(
        self, scope: str, key: str, fingerprint: str, *, token: str, lease_ms: int
    ) -> Claim:
        """Claim ``key`` in one round trip (see :class:`~gateway.store.base.IdempotencyStore`)."""
        with _mapped("claim"):
            reply = await self._claim(
                keys=[self.keys.idempotency(scope, key)], args=[fingerprint, token, lease_ms]
            )
        kind = _text(reply[0])
        if kind == "claimed":
            return Claim(ClaimKind.CLAIMED, token=token)
        if kind == "replay":
            location = _text(reply[3]) if len(reply) > 3 and reply[3] is not None else None
            response = StoredResponse(int(reply[1]), bytes(reply[2]), location)
            return Claim(ClaimKind.REPLAY, response=response)
        if kind == "in_flight":
            return Claim(ClaimKind.IN_FLIGHT, retry_after_ms=max(1, int(reply[1])))
        return Claim(ClaimKind.MISMATCH)

    async def complete(
        self, scope: str, key: str, token: str, response: StoredResponse, *, ttl_s: int
    ) -> bool:
        """Store the final answer if ``token`` still holds the claim."""
        args: list[str | int | bytes] = [token, response.status, response.body, _ms(ttl_s)]
        if response.location is not None:
            args.append(response.location)
        with _mapped("complete"):
            done = await self._complete(keys=[self.keys.idempotency(scope, key)], args=args)
        return bool(done)

    async def release(self, scope: str, key: str, token: str) -> None:
        """Drop the claim if ``token`` still holds it."""
        with _mapped("release"):
            await self._release(keys=[self.keys.idempotency(scope, key)], args=[token])

    # order guard
    async def reserve_order(
        self, scope: str, order_ref: str, token: str, *, lease_ms: int
    ) -> str | None:
        """Reserve the order for ``token``; None on success, else the current holder."""
        with _mapped("reserve_order"):
            holder = await self._order_reserve(
                keys=[self.keys.order(scope, order_ref)],
                args=[_CLAIM_PREFIX + token, lease_ms],
            )
        return None if holder is None else _text(holder)

    async def replace_order(
        self, scope: str, order_ref: str, expected: str, token: str, *, lease_ms: int
    ) -> bool:
        """Take the reservation over from ``expected``."""
        with _mapped("replace_order"):
            swapped = await self._order_cas(
                keys=[self.keys.order(scope, order_ref)],
                args=[expected, _CLAIM_PREFIX + token, lease_ms],
            )
        return bool(swapped)

    async def bind_order(
        self, scope: str, order_ref: str, token: str, session_id: str, *, ttl_s: int
    ) -> None:
        """Point the reservation held by ``token`` at ``session_id``."""
        with _mapped("bind_order"):
            await self._order_cas(
                keys=[self.keys.order(scope, order_ref)],
                args=[_CLAIM_PREFIX + token, session_id, _ms(ttl_s)],
            )

    async def release_order(self, scope: str, order_ref: str, token: str) -> None:
        """Drop the reservation held by ``token``."""
        with _mapped("release_order"):
            await self._order_cas(
                keys=[self.keys.order(scope, order_ref)], args=[_CLAIM_PREFIX + token]
            )

    # sessions
    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None when unknown or expired."""
        with _mapped("get_session"):
            payload = await self.client.get(self.keys.session(session_id))
        if payload is None:
            return None
        try:
            return SessionRecord.model_validate_json(payload)
        except ValidationError as exc:
            raise StoreUnavailable(f"session {session_id!r} is unreadable: {exc}") from exc

    # circuit breaker
    def _circuit_keys(self, provider: str) -> list[str]:
        return [
            self.keys.circuit(provider),
            self.keys.circuit_failures(provider),
            self.keys.circuit_probes(provider),
        ]

    async def circuit_states(self, providers: list[str], *, now: float) -> dict[str, CircuitState]:
        """Every provider's circuit, read in one pipelined round trip."""
        if not providers:
            return {}
        with _mapped("circuit_states"):
            async with self.client.pipeline(transaction=False) as pipe:
                for provider in providers:
                    pipe.hmget(self.keys.circuit(provider), ["state", "open_until", "failures"])
                replies = await pipe.execute()
        states: dict[str, CircuitState] = {}
        for provider, (state, open_until, failures) in zip(providers, replies, strict=True):
            count = int(failures) if failures is not None else 0
            if state is not None and _text(state) == "open" and open_until is not None:
                until = float(_text(open_until))
                phase = "open" if now < until else "half_open"
                states[provider] = CircuitState(phase, count, until)
            else:
                states[provider] = CircuitState("closed", count)
        return states

    async def circuit_failure(
        self, provider: str, *, now: float, window_s: float, threshold: int, open_s: float
    ) -> CircuitState:
        """Count a failure in the sliding window; open at ``threshold`` (atomic, Lua)."""
        open_until = now + open_s
        closed_ttl = circuit_ttl_s(now=now, window_s=window_s, open_until=None)
        open_ttl = circuit_ttl_s(now=now, window_s=window_s, open_until=open_until)
        args: list[str | int] = [repr(now), repr(now - window_s), threshold, repr(open_until)]
        with _mapped("circuit_failure"):
            reply = await self._circuit_failure(
                keys=self._circuit_keys(provider), args=[*args, _ms(closed_ttl), _ms(open_ttl)]
            )
        return _circuit(reply)

    async def circuit_success(self, provider: str, *, now: float) -> CircuitState:
        """A success closes a half-open circuit; otherwise nothing is written."""
        with _mapped("circuit_success"):
            reply = await self._circuit_success(keys=self._circuit_keys(provider), args=[repr(now)])
        return _circuit(reply)

    async def circuit_acquire_probe(
        self, provider: str, *, now: float, max_probes: int, probe_ttl_s: float
    ) -> bool:
        """True when the request may go through (closed, or a free half-open probe slot)."""
        keys = [self.keys.circuit(provider), self.keys.circuit_probes(provider)]
        args: list[str | int] = [repr(now), repr(now - probe_ttl_s), max_probes, _ms(probe_ttl_s)]
        with _mapped("circuit_acquire_probe"):
            granted = await self._circuit_probe(keys=keys, args=args)
        return bool(granted)
