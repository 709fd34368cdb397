"""The Redis record store, shared by every gateway process and machine (its circuits:
:mod:`gateway.store.circuits_redis`).

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

from gateway.domain.session import SessionRecord
from gateway.store.base import ORDER_CLAIM_PREFIX, stored_session
from gateway.store.keys import RedisKeys
from gateway.store.redis_conn import RedisConn
from gateway.store.redis_create import RedisCreate
from gateway.store.redis_find import RedisFind
from gateway.store.redis_lifecycle import RedisLifecycle
from gateway.store.redis_orphans import RedisOrphans
from gateway.store.redis_support import _mapped

__all__ = ["RedisStore"]


# KEYS[1] record; ARGV token
_RELEASE = """
if redis.call('HGET', KEYS[1], 'tok') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
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


class RedisStore(RedisLifecycle, RedisCreate, RedisFind, RedisOrphans):
    """The :class:`~gateway.store.base.RecordStore` on Redis (``redis.asyncio`` with hiredis).

    ``conn`` is the Redis deployment (:func:`gateway.store.redis_client.open_redis`: a blocking
    pool, connect retries, never a re-sent command); ``prefix`` is the root of every key
    (``Settings.redis_prefix``). :meth:`close` closes ``conn`` only with ``owns_conn``.
    """

    name = "redis"

    def __init__(self, conn: RedisConn, prefix: str, *, owns_conn: bool = False) -> None:
        self.keys = RedisKeys(prefix)
        self.conn = conn
        self.client = conn.client
        self._owns_client = owns_conn
        client = conn.client
        self._release = client.register_script(_RELEASE)
        self._order_cas = client.register_script(_ORDER_CAS)
        self._register_lifecycle_scripts(client)
        self._register_create_scripts(client)
        self._register_orphan_scripts(client)

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless Redis answers."""
        with _mapped("ping"):
            await self.conn.ping()

    async def purge(self, *, now: float, limit: int) -> int:
        """Nothing to do: every record carries its own TTL and expires by itself."""
        return 0

    async def close(self) -> None:
        """Close the connection pool (when this store opened it)."""
        if self._owns_client:
            with _mapped("close"):
                await self.conn.close()

    # the create path beside begin_create/commit_create (gateway.store.redis_create)
    async def release(self, scope: str, key: str, token: str) -> None:
        """Drop the claim if ``token`` still holds it."""
        with _mapped("release"):
            await self._release(keys=[self.keys.idempotency(scope, key)], args=[token])

    async def replace_order(
        self, scope: str, order_ref: str, expected: str, token: str, *, lease_ms: int
    ) -> bool:
        """Take the reservation over from ``expected``."""
        with _mapped("replace_order"):
            swapped = await self._order_cas(
                keys=[self.keys.order(scope, order_ref)],
                args=[expected, ORDER_CLAIM_PREFIX + token, lease_ms],
            )
        return bool(swapped)

    async def release_order(self, scope: str, order_ref: str, token: str) -> None:
        """Drop the reservation held by ``token``."""
        with _mapped("release_order"):
            await self._order_cas(
                keys=[self.keys.order(scope, order_ref)], args=[ORDER_CLAIM_PREFIX + token]
            )

    # sessions
    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None when unknown or expired."""
        with _mapped("get_session"):
            payload = await self.client.get(self.keys.session(session_id))
        return None if payload is None else stored_session(payload, repr(session_id))
