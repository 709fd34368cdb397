"""Routing statistics in Redis, shared by every gateway process.

Layout under the root prefix (``Settings.redis_prefix``), one hash tag per provider so the Lua
script that updates a provider's segments stays in one Redis Cluster slot::

    {root}stats:{{provider}}:seg:{kind}:{value}   hash  t, ch, cs, cf, ls, ln, ps, pf, fcs, ...
    {root}stats:{{provider}}:index                zset  "{kind}:{value}" -> last update time

``t`` is the time the counters were last decayed to; ``cs``/``cf`` creation successes and
failures, ``ls``/``ln`` latency sum and count, ``ps``/``pf`` payment outcomes, ``fcs`` ...
``fpf`` the fast-forgetting counts, ``cdn`` ... ``pup`` the CUSUM statistics and ``ch`` when a
change was last detected (see :func:`gateway.routing.stats.apply_outcomes`). Every update
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

from gateway.routing.stats import Counters, Forgetting, SegmentKey, decay
from gateway.store.keys import RedisKeys
from gateway.store.redis_conn import LuaScript, RedisConn
from gateway.store.redis_support import _mapped

__all__ = ["RedisStatsStore"]

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")
_FIELDS = (
    "cs", "cf", "ls", "ln", "ps", "pf", "fcs", "fcf", "fps", "fpf", "cdn", "cup", "pdn", "pup", "ch"
)  # fmt: skip

# KEYS[1] = index, KEYS[2..] = segment hashes
# ARGV = now, half_life_s, ttl_ms, adaptive (0/1), window, fast_window, threshold, min_samples,
#        shift, six deltas (cs cf ls ln ps pf), then one index member per segment hash.
# The adaptive branch is gateway.routing.stats.apply_outcomes, step for step.
_ADD = LuaScript("""
local now = tonumber(ARGV[1])
local half_life = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local adaptive = ARGV[4] == '1'
local window = tonumber(ARGV[5])
local fast_window = tonumber(ARGV[6])
local threshold = tonumber(ARGV[7])
local min_samples = tonumber(ARGV[8])
local shift = tonumber(ARGV[9])
local d = {}
for j = 1, 6 do d[j] = tonumber(ARGV[9 + j]) end
local names = {'cs', 'cf', 'ls', 'ln', 'ps', 'pf', 'fcs', 'fcf', 'fps', 'fpf',
  'cdn', 'cup', 'pdn', 'pup'}

-- returns slow ok, slow fail, fast ok, fast fail, cusum down, cusum up, slow factor, changed
local function forget(so, sf, fo, ff, down, up, ao, af)
  local n = ao + af
  if n <= 0 then return so, sf, fo, ff, down, up, 1, false end
  if threshold > 0 and so + sf >= fast_window then
    local rate = (so + 0.5) / (so + sf + 1)
    local low = math.max(rate - shift, 0.01)
    local high = math.min(rate + shift, 0.99)
    if low < rate then
      down = math.max(0, down + ao * math.log(low / rate) + af * math.log((1 - low) / (1 - rate)))
    end
    if high > rate then
      up = math.max(0, up + ao * math.log(high / rate) + af * math.log((1 - high) / (1 - rate)))
    end
  end
  local ks = math.pow(1 - 1 / window, n)
  local kf = math.pow(1 - 1 / fast_window, n)
  so, sf = so * ks + ao, sf * ks + af
  fo, ff = fo * kf + ao, ff * kf + af
  if threshold > 0 and math.max(down, up) > threshold and fo + ff >= min_samples then
    return fo, ff, fo, ff, 0, 0, ks, true
  end
  return so, sf, fo, ff, down, up, ks, false
end

for i = 2, #KEYS do
  local key = KEYS[i]
  local cur = redis.call('HMGET', key, 't', 'cs', 'cf', 'ls', 'ln', 'ps', 'pf',
    'fcs', 'fcf', 'fps', 'fpf', 'cdn', 'cup', 'pdn', 'pup', 'ch')
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
  local v = {}
  for j = 1, 14 do v[j] = (tonumber(cur[j + 1]) or 0) * factor end
  local changed_at = tonumber(cur[16]) or 0
  if adaptive then
    local c_changed, p_changed, k
    v[1], v[2], v[7], v[8], v[11], v[12], k, c_changed =
      forget(v[1], v[2], v[7], v[8], v[11], v[12], d[1], d[2])
    v[3], v[4] = v[3] * k + d[3], v[4] * k + d[4]
    v[5], v[6], v[9], v[10], v[13], v[14], k, p_changed =
      forget(v[5], v[6], v[9], v[10], v[13], v[14], d[5], d[6])
    if c_changed or p_changed then changed_at = stamp end
  else
    for j = 1, 6 do v[j] = v[j] + d[j] end
  end
  local out = {'t', string.format('%.17g', stamp), 'ch', string.format('%.17g', changed_at)}
  for j = 1, 14 do
    out[#out + 1] = names[j]
    out[#out + 1] = string.format('%.17g', v[j])
  end
  redis.call('HSET', key, unpack(out))
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', KEYS[1], stamp, ARGV[14 + i])
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
        self,
        segments: Sequence[SegmentKey],
        delta: Counters,
        *,
        now: float,
        half_life_s: float,
        forgetting: Forgetting | None = None,
    ) -> None:
        by_provider: dict[str, list[SegmentKey]] = {}
        for key in segments:
            by_provider.setdefault(key[0], []).append(key)
        for provider, keys in by_provider.items():
            hashes = [self.segment_key(k) for k in keys]
            members = [f"{k[1]}:{k[2]}" for k in keys]
            args: list[Any] = [repr(now), repr(half_life_s), int(self._ttl_s * 1000)]
            f = forgetting
            if f is None:
                args += ["0"] * 6
            else:
                args += ["1", repr(f.window), repr(f.fast_window), repr(f.threshold)]
                args += [repr(f.min_samples), repr(f.shift)]
            args += [repr(v) for v in delta.as_tuple()[:6]]
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
