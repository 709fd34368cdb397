"""The orphan queue of :class:`gateway.store.redis.RedisStore`: orphan provider sessions to
expire, leased to one process at a time and retried by any (:mod:`gateway.orphans`).

It has one set of keys per bucket (a job lives in its session's bucket: the create's commit
script enqueues it with the session, :mod:`gateway.store.redis_create`); each script below
touches one bucket, so one Redis Cluster slot. A lease token names its bucket.
"""

from __future__ import annotations

from gateway.store.base import OrphanJob
from gateway.store.keys import QUEUE_BUCKETS, RedisKeys
from gateway.store.redis_conn import LuaScript, RedisConn
from gateway.store.redis_support import (
    LEASED_QUEUE_CLAIM,
    _mapped,
    _readable,
    claim_in_due_order,
    lease_bucket,
    lease_prefix,
)

__all__ = ["RedisOrphans"]


# KEYS due, items, leases (one bucket); ARGV id, token, action ('done' | 'retry'), json, due
_FINISH = LuaScript("""
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
""")


class RedisOrphans:
    """Mixed into :class:`~gateway.store.redis.RedisStore` (which sets ``keys`` and ``conn``)."""

    keys: RedisKeys
    conn: RedisConn

    def _orphan_keys(self, n: int) -> list[str]:
        k = self.keys
        return [k.orphans_due(n), k.orphans_items(n), k.orphans_leases(n)]

    async def orphan_claim(self, *, now: float, lease_s: float, limit: int) -> list[OrphanJob]:
        """Due jobs, earliest first across the buckets, each leased for ``lease_s`` with a
        fresh token naming its bucket (a peek at every bucket, then a script per bucket holding
        some)."""

        async def claim(n: int, count: int) -> list[OrphanJob]:
            reply = await self.conn.script(
                LEASED_QUEUE_CLAIM,
                self._orphan_keys(n),
                [repr(now), repr(now + lease_s), count, lease_prefix(n)],
            )
            return _readable(reply, OrphanJob.from_json, "orphan job")

        with _mapped("orphan_claim"):
            return await claim_in_due_order(
                self.conn,
                [self.keys.orphans_due(n) for n in range(QUEUE_BUCKETS)],
                now=now,
                limit=limit,
                claim=claim,
                ident=lambda job: job.id,
            )

    async def _orphan_finish_as(self, job: OrphanJob, action: str, due: float) -> bool:
        n = lease_bucket(job.lease) if job.lease is not None else None
        if job.lease is None or n is None:
            return False
        with _mapped(f"orphan_{action}"):
            done = await self.conn.script(
                _FINISH,
                self._orphan_keys(n),
                [job.id, job.lease, action, job.to_json(), repr(due)],
            )
        return bool(done)

    async def orphan_retry(self, job: OrphanJob, *, due: float) -> bool:
        """Store the job's new attempt count and make it due at ``due``."""
        return await self._orphan_finish_as(job, "retry", due)

    async def orphan_done(self, job: OrphanJob) -> bool:
        """Remove a finished job (only with its current lease)."""
        return await self._orphan_finish_as(job, "done", 0.0)
