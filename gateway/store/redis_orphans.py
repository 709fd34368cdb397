"""The orphan queue of :class:`gateway.store.redis.RedisStore`: orphan provider sessions to
expire, leased to one process at a time and retried by any (:mod:`gateway.orphans`).

Its three keys share a hash tag, so each script below touches one Redis Cluster slot. Jobs are
enqueued by the create's commit script (:mod:`gateway.store.redis_create`), with their session.
"""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from gateway.store.base import OrphanJob, StoreUnavailable
from gateway.store.keys import RedisKeys
from gateway.store.redis_support import LEASED_QUEUE_CLAIM, _leased, _mapped

__all__ = ["RedisOrphans"]


# KEYS due, items, leases; ARGV id, token, action ('done' | 'retry'), json, due
_FINISH = """
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
"""


class RedisOrphans:
    """Mixed into :class:`~gateway.store.redis.RedisStore` (which sets ``keys`` and ``client``)."""

    keys: RedisKeys
    client: aioredis.Redis
    _orphan_claim: AsyncScript
    _orphan_finish: AsyncScript

    def _register_orphan_scripts(self, client: aioredis.Redis) -> None:
        self._orphan_claim = client.register_script(LEASED_QUEUE_CLAIM)
        self._orphan_finish = client.register_script(_FINISH)

    def _orphan_keys(self) -> list[str]:
        return [self.keys.orphans_due(), self.keys.orphans_items(), self.keys.orphans_leases()]

    async def orphan_claim(self, *, now: float, lease_s: float, limit: int) -> list[OrphanJob]:
        """Due jobs, each leased for ``lease_s`` with a fresh token (one script, one slot)."""
        prefix = uuid.uuid4().hex + ":"
        with _mapped("orphan_claim"):
            reply = await self._orphan_claim(
                keys=self._orphan_keys(), args=[repr(now), repr(now + lease_s), limit, prefix]
            )
        try:
            return [OrphanJob.from_json(raw, lease=lease) for raw, lease in _leased(reply)]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"an orphan job is unreadable: {exc}") from exc

    async def _orphan_finish_as(self, job: OrphanJob, action: str, due: float) -> bool:
        if job.lease is None:
            return False
        with _mapped(f"orphan_{action}"):
            done = await self._orphan_finish(
                keys=self._orphan_keys(),
                args=[job.id, job.lease, action, job.to_json(), repr(due)],
            )
        return bool(done)

    async def orphan_retry(self, job: OrphanJob, *, due: float) -> bool:
        """Store the job's new attempt count and make it due at ``due``."""
        return await self._orphan_finish_as(job, "retry", due)

    async def orphan_done(self, job: OrphanJob) -> bool:
        """Remove a finished job (only with its current lease)."""
        return await self._orphan_finish_as(job, "done", 0.0)
