"""The Redis record store, shared by every gateway process and machine (its circuits:
:mod:`gateway.store.circuits_redis`), on any Redis deployment (standalone, Cluster, Sentinel)
through one :class:`~gateway.store.redis_conn.RedisConn`.

Every operation that reads and then writes runs as a Lua script whose keys share one cluster
slot, so it is atomic across processes; a create costs three round trips, four with the order
guard (:mod:`gateway.store.redis_create`). Key layout and lifetimes: :mod:`gateway.store.keys`.
Creates and lifecycle changes are answered once a replica has them (``confirm=True``: ``WAIT``);
reads retry once after a connection error (:meth:`RedisConn.read`); nothing else is re-sent.

Errors are mapped once, here: any redis-py error (connection refused, timeout, a ``WRONGTYPE``
or script error...) or a record that no longer parses becomes :class:`StoreUnavailable`
(``raise StoreUnavailable(...) from exc``). A dead Redis fails within the socket timeouts, the
request answers 503, and the client's retry with the same Idempotency-Key is safe because every
claim is leased.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from gateway.domain.session import SessionRecord
from gateway.store.keys import RedisKeys
from gateway.store.redis_conn import RedisConn
from gateway.store.redis_create import RedisCreate
from gateway.store.redis_find import RedisFind, read_session
from gateway.store.redis_lifecycle import RedisLifecycle
from gateway.store.redis_orphans import RedisOrphans
from gateway.store.redis_support import _mapped

__all__ = ["DEFAULT_ORDER_TTL_S", "RedisStore"]

#: how long a running create's order reservation is kept when the store is not told the
#: session retention (``Settings.session_retention_seconds``'s default)
DEFAULT_ORDER_TTL_S = 30 * 86_400


class RedisStore(RedisLifecycle, RedisCreate, RedisFind, RedisOrphans):
    """The :class:`~gateway.store.base.RecordStore` on Redis.

    ``conn`` is the deployment (:func:`gateway.store.redis_client.open_redis`); ``prefix`` is
    the root of every key (``Settings.redis_prefix``). The conn is started by whoever made it
    (the app: :mod:`gateway.redis_startup`); with ``owns_conn`` :meth:`close` closes it.
    ``order_ttl_s`` is how long a running create's order reservation is kept, so that it
    outlives the session it guards if the create dies between writing that session and binding
    the reservation: the session retention (``Settings.session_retention_seconds``).
    """

    name = "redis"

    def __init__(
        self,
        conn: RedisConn,
        prefix: str,
        *,
        owns_conn: bool = False,
        order_ttl_s: int = DEFAULT_ORDER_TTL_S,
    ) -> None:
        self.conn = conn
        self.keys = RedisKeys(prefix)
        self.order_ttl_ms = order_ttl_s * 1000
        self._owns_conn = owns_conn
        self._committing: OrderedDict[str, None] = OrderedDict()
        self._undoing: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> Any:
        """The deployment's client for plain single-slot commands (``conn.client``)."""
        return self.conn.client

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless every Redis node written to answers."""
        with _mapped("ping"):
            await self.conn.ping()

    async def purge(self, *, now: float, limit: int) -> int:
        """Nothing to do: every record carries its own TTL and expires by itself."""
        return 0

    async def close(self) -> None:
        """Stop giving failed claims up in the background (their leases free them), then close
        the conn (when this store owns it)."""
        for task in list(self._undoing):
            task.cancel()
        await asyncio.gather(*self._undoing, return_exceptions=True)
        if self._owns_conn:
            with _mapped("close"):
                await self.conn.close()

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None when unknown or expired (an idempotent read)."""
        return await read_session(self.conn, self.keys, session_id)
