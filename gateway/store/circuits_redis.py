"""Circuit breakers in Redis (:class:`~gateway.store.coordination.CircuitStore`), shared by
every gateway process and machine (``GATEWAY_COORDINATION=redis``).

Each change is one Lua script on one provider's keys, which share the ``{provider}`` hash tag
(one Redis Cluster slot), so opening a circuit is atomic across processes; reading every
provider's state is one non-transactional pipeline (split per node by a cluster client),
retried once on a connection error since it only reads. The scripts are never re-sent and never
wait for replicas: circuit state is advisory. Keys: :mod:`gateway.store.keys` (``circuit:``).
Errors become :class:`~gateway.store.base.StoreUnavailable`, as in the record store.
"""

from __future__ import annotations

from typing import Any

from gateway.store.coordination import CircuitState
from gateway.store.keys import RedisKeys, circuit_ttl_s
from gateway.store.redis_conn import LuaScript, RedisConn
from gateway.store.redis_support import _mapped, _ms, _text

__all__ = ["RedisCircuits"]

# Circuit hash {state='open'?, open_until, failures, seq}; absent state means closed.
# KEYS hash, fails, probes; ARGV now, cutoff (now - window), threshold, open_until (now + open),
# ttl_ms while closed, ttl_ms once open. Returns {state, failures, open_until|nil}.
_CIRCUIT_FAILURE = LuaScript("""
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
""")

# KEYS hash, fails, probes; ARGV now. Half-open closes; nothing else is written.
_CIRCUIT_SUCCESS = LuaScript("""
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'failures')
if st[1] == 'open' then
  if tonumber(ARGV[1]) >= tonumber(st[2]) then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    return {'closed', 0, false}
  end
  return {'open', tonumber(st[3]), st[2]}
end
return {'closed', tonumber(st[3]) or 0, false}
""")

# KEYS hash, probes; ARGV now, cutoff (now - probe_ttl), max_probes, probe_ttl_ms
_CIRCUIT_PROBE = LuaScript("""
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until')
if st[1] ~= 'open' then return 1 end
if tonumber(ARGV[1]) < tonumber(st[2]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[1], redis.call('HINCRBY', KEYS[1], 'seq', 1))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
""")


def _circuit(reply: list[Any]) -> CircuitState:
    state, failures, open_until = reply
    until = float(_text(open_until)) if open_until is not None else None
    return CircuitState(_text(state), int(failures), until)


class RedisCircuits:
    """Circuits under ``prefix`` (``Settings.redis_prefix``) on ``conn``, which stays the
    caller's to close."""

    name = "redis"

    def __init__(self, conn: RedisConn, prefix: str) -> None:
        self.keys = RedisKeys(prefix)
        self.conn = conn

    def circuit_keys(self, provider: str) -> list[str]:
        """The keys of ``provider``'s circuit (one slot: they share its hash tag)."""
        return [
            self.keys.circuit(provider),
            self.keys.circuit_failures(provider),
            self.keys.circuit_probes(provider),
        ]

    def probe_keys(self, provider: str) -> list[str]:
        """The keys a half-open probe takes a slot in (one slot)."""
        return [self.keys.circuit(provider), self.keys.circuit_probes(provider)]

    async def circuit_states(self, providers: list[str], *, now: float) -> dict[str, CircuitState]:
        """Every provider's circuit, read in one pipelined round trip."""
        if not providers:
            return {}

        async def read() -> list[Any]:
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for provider in providers:
                    pipe.hmget(self.keys.circuit(provider), ["state", "open_until", "failures"])
                replies: list[Any] = await pipe.execute()
            return replies

        with _mapped("circuit_states"):
            replies = await self.conn.read(read)
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
        keys = self.circuit_keys(provider)
        with _mapped("circuit_failure"):
            reply = await self.conn.script(
                _CIRCUIT_FAILURE, keys, [*args, _ms(closed_ttl), _ms(open_ttl)]
            )
        return _circuit(reply)

    async def circuit_success(self, provider: str, *, now: float) -> CircuitState:
        """A success closes a half-open circuit; otherwise nothing is written."""
        keys = self.circuit_keys(provider)
        with _mapped("circuit_success"):
            reply = await self.conn.script(_CIRCUIT_SUCCESS, keys, [repr(now)])
        return _circuit(reply)

    async def circuit_acquire_probe(
        self, provider: str, *, now: float, max_probes: int, probe_ttl_s: float
    ) -> bool:
        """True when the request may go through (closed, or a free half-open probe slot)."""
        keys = self.probe_keys(provider)
        args: list[str | int] = [repr(now), repr(now - probe_ttl_s), max_probes, _ms(probe_ttl_s)]
        with _mapped("circuit_acquire_probe"):
            granted = await self.conn.script(_CIRCUIT_PROBE, keys, args)
        return bool(granted)
