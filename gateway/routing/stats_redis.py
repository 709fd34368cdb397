"""Routing statistics in Redis, shared by every gateway process.

Layout under the root prefix (``Settings.redis_prefix``), one hash tag per provider so the Lua
script that updates a provider's segments stays in one Redis Cluster slot::

    {root}stats:{{provider}}:seg:{kind}:{value}   hash  t, cs, cf, ls, ln, ps, pf
    {root}stats:{{provider}}:index                zset  "{kind}:{value}" -> last update time

``t`` is the time the counters were last decayed to; ``cs``/``cf`` creation successes and
failures, ``ls``/``ln`` latency sum and count, ``ps``/``pf`` payment outcomes. Every update
decays and adds in one script (atomic even with many writers) run through
:meth:`~gateway.store.redis_conn.RedisConn.script`, which never re-sends it, so an increment is
never applied twice; every key has a TTL refreshed on each write, so a provider that is gone
leaves nothing behind. Reads are non-transactional pipelines (a cluster client splits them per
node), retried once on a connection error (they only read, or trim expired index entries).
Errors become :class:`~gateway.store.base.StoreUnavailable`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from gateway.routing.stats import Counters, SegmentKey, decay
from gateway.store.keys import RedisKeys
from gateway.store.redis_conn import LuaScript, RedisConn
from gateway.store.redis_support import _mapped

__all__ = ["RedisStatsStore"]

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")
_FIELDS = ("cs", "cf", "ls", "ln", "ps", "pf")

# KEYS[1] = index, KEYS[2..] = segment hashes
# ARGV = now, half_life_s, ttl_ms, six deltas, then one index member per segment hash
_ADD = LuaScript("""
local now = tonumber(ARGV[1])
local half_life = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local names = {'cs', 'cf', 'ls', 'ln', 'ps', 'pf'}
for i = 2, #KEYS do
  local key = KEYS[i]
  local cur = redis.call('HMGET', key, 't', 'cs', 'cf', 'ls', 'ln', 'ps', 'pf')
  local t = tonumber(cur[1])
  local factor = 1
  local stamp = now
  if t then
    if now > t then
      factor = math.pow(0.5, (now - t) / half_life)
    else
      stamp = t
    end
  end
  local out = {'t', string.format('%.17g', stamp)}
  for j = 1, 6 do
    local value = (tonumber(cur[j + 1]) or 0) * factor + tonumber(ARGV[3 + j])
    out[#out + 1] = names[j]
    out[#out + 1] = string.format('%.17g', value)
  end
  redis.call('HSET', key, unpack(out))
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', KEYS[1], stamp, ARGV[8 + i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return #KEYS - 1
""")


class RedisStatsStore:
    """:class:`gateway.routing.stats.StatsStore` on ``conn`` (closed by :meth:`close` only
    with ``owns_conn``)."""

    def __init__(
        self, conn: RedisConn, prefix: str, *, ttl_s: float = 7 * 86_400, owns_conn: bool = False
    ) -> None:
        self._conn = conn
        self._keys = RedisKeys(prefix)
        self._ttl_s = ttl_s
        self._owns_conn = owns_conn

    def _base(self, provider: str) -> str:
        if not _SAFE.match(provider) or not provider:
            raise ValueError(f"unsafe provider name {provider!r}")
        return self._keys.routing_stats(provider)

    def segment_key(self, key: SegmentKey) -> str:
        """The hash holding one segment."""
        provider, kind, value = key
        if not _SAFE.match(kind) or not _SAFE.match(value):
            raise ValueError(f"unsafe segment {kind!r}:{value!r}")
        return f"{self._base(provider)}:seg:{kind}:{value}"

    def index_key(self, provider: str) -> str:
        """The sorted set naming a provider's live segments."""
        return f"{self._base(provider)}:index"

    async def add(
        self, segments: Sequence[SegmentKey], delta: Counters, *, now: float, half_life_s: float
    ) -> None:
        by_provider: dict[str, list[SegmentKey]] = {}
        for key in segments:
            by_provider.setdefault(key[0], []).append(key)
        for provider, keys in by_provider.items():
            hashes = [self.segment_key(k) for k in keys]
            members = [f"{k[1]}:{k[2]}" for k in keys]
            args: list[Any] = [repr(now), repr(half_life_s), int(self._ttl_s * 1000)]
            args += [repr(v) for v in delta.as_tuple()]
            script_keys = [self.index_key(provider), *hashes]
            with _mapped("stats_add"):
                await self._conn.script(_ADD, script_keys, [*args, *members])

    async def load(
        self, *, providers: Sequence[str], now: float, half_life_s: float
    ) -> dict[SegmentKey, Counters]:
        async def live_segments() -> list[Any]:
            async with self._conn.client.pipeline(transaction=False) as pipe:
                for provider in providers:
                    pipe.zremrangebyscore(self.index_key(provider), "-inf", repr(now - self._ttl_s))
                    pipe.zrange(self.index_key(provider), 0, -1)
                replies: list[Any] = await pipe.execute()
            return replies

        with _mapped("stats_load"):
            answers = await self._conn.read(live_segments)
        wanted: list[SegmentKey] = []
        for provider, members in zip(providers, answers[1::2], strict=True):
            for raw in members:
                kind, _, value = raw.decode().partition(":")
                wanted.append((provider, kind, value))
        if not wanted:
            return {}

        async def segments() -> list[Any]:
            async with self._conn.client.pipeline(transaction=False) as pipe:
                for key in wanted:
                    pipe.hmget(self.segment_key(key), "t", *_FIELDS)
                replies: list[Any] = await pipe.execute()
            return replies

        with _mapped("stats_load"):
            rows = await self._conn.read(segments)
        out: dict[SegmentKey, Counters] = {}
        for key, row in zip(wanted, rows, strict=True):
            if row[0] is None:
                continue  # expired between the index read and now
            values = [float(v) if v is not None else 0.0 for v in row[1:]]
            out[key] = Counters(*values).scaled(decay(now - float(row[0]), half_life_s))
        return out

    async def close(self) -> None:
        """Close the connection when this store owns it."""
        if self._owns_conn:
            await self._conn.close()
