"""Making a :class:`~gateway.store.redis.RedisStore` the way the gateway does: a
:class:`~gateway.store.redis_conn.RedisConn` from :func:`~gateway.store.redis_client.open_redis`
(``GATEWAY_REDIS_MODE`` standalone), owned by the store."""

from __future__ import annotations

from typing import Any

from gateway.settings import Settings
from gateway.store.redis import RedisStore
from gateway.store.redis_client import RedisClientSettings, open_redis
from gateway.store.redis_conn import RedisMode


def redis_store(
    url: str, prefix: str, *, mode: RedisMode = "standalone", **conf: Any
) -> RedisStore:
    """A store on its own conn to ``url`` (not started: nothing is sent before its first
    command); ``mode`` is ``GATEWAY_REDIS_MODE`` (``cluster``: ``url`` is a seed node);
    ``conf`` overrides :class:`RedisClientSettings` fields (``max_connections``...)."""
    settings = Settings(_env_file=None, redis_url=url, redis_mode=mode)  # type: ignore[call-arg]
    conn = open_redis(settings, RedisClientSettings(**conf))
    return RedisStore(conn, prefix, owns_conn=True)
