"""Routing statistics in Redis, shared by every gateway process.

Layout under the root prefix (``Settings.redis_prefix``), one hash tag per provider so the Lua
script that updates a provider's segments stays in one Redis Cluster slot::

    {root}stats:{{provider}}:seg:{kind}:{value}   hash  t, cs, cf, ls, ln, ps, pf
    {root}stats:{{provider}}:index                zset  "{kind}:{value}" -> last update time

``t`` is the time the counters were last decayed to; ``cs``/``cf`` creation successes and
failures, ``ls``/``ln`` latency sum and count, ``ps``/``pf`` payment outcomes. Every update
decays and adds in one script (atomic even with many writers); every key has a TTL refreshed
on each write, so a provider that is gone leaves nothing behind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from gateway.routing.stats import Counters, SegmentKey, decay
from gateway.store.keys import RedisKeys

__all__ = ["RedisStatsStore"]

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")
_FIELDS = ("cs", "cf", "ls", "ln", "ps", "pf")

# KEYS[1] = index, KEYS[2..] = segment hashes
# ARGV = now, half_life_s, ttl_ms, six deltas, then one index member per segment hash
_ADD = """
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
"""


class RedisStatsStore:
    """:class:`gateway.routing.stats.StatsStore` over ``redis.asyncio``."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, *, ttl_s: float = 7 * 86_400, owns: bool = False
    ) -> None:
        self._client = client
        self._keys = RedisKeys(prefix)
        self._ttl_s = ttl_s
        self._owns = owns
        self._script = client.register_script(_ADD)

    @classmethod
    def from_url(cls, url: str, prefix: str, *, ttl_s: float = 7 * 86_400) -> RedisStatsStore:
        """A store with its own connection pool, closed by :meth:`close`."""
        from gateway.store.redis_client import RedisClientSettings, open_redis_client

        client = open_redis_client(url, RedisClientSettings())
        return cls(client, prefix, ttl_s=ttl_s, owns=True)

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
            await self._script(keys=[self.index_key(provider), *hashes], args=[*args, *members])

    async def load(
        self, *, providers: Sequence[str], now: float, half_life_s: float
    ) -> dict[SegmentKey, Counters]:
        pipe = self._client.pipeline(transaction=False)
        for provider in providers:
            pipe.zremrangebyscore(self.index_key(provider), "-inf", repr(now - self._ttl_s))
            pipe.zrange(self.index_key(provider), 0, -1)
        answers = await pipe.execute()
        wanted: list[SegmentKey] = []
        for provider, members in zip(providers, answers[1::2], strict=True):
            for raw in members:
                kind, _, value = raw.decode().partition(":")
                wanted.append((provider, kind, value))
        if not wanted:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for key in wanted:
            pipe.hmget(self.segment_key(key), "t", *_FIELDS)
        rows = await pipe.execute()
        out: dict[SegmentKey, Counters] = {}
        for key, row in zip(wanted, rows, strict=True):
            if row[0] is None:
                continue  # expired between the index read and now
            values = [float(v) if v is not None else 0.0 for v in row[1:]]
            out[key] = Counters(*values).scaled(decay(now - float(row[0]), half_life_s))
        return out

    async def close(self) -> None:
        if self._owns:
            await self._client.aclose()
