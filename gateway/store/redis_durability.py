"""The start-up check of the Redis settings that "no acknowledged write lost" relies on.

A write confirmed by ``WAIT`` reached a replica, but three settings decide whether it survives:

- ``min-replicas-to-write 1``: a primary cut off from its replicas (a network split, a
  failover under way) refuses writes instead of accepting ones the promoted replica never saw;
- ``min-replicas-max-lag`` (1 to 10 s): how long a silent replica still counts;
- ``appendonly yes``: a primary restarted before its replica took over comes back with its
  data (without AOF it comes back empty, and its replicas copy the emptiness).

:func:`durability_warnings` reads them with ``CONFIG GET`` on every primary and returns one
line per missing setting, each also logged as a WARNING. Managed Redis services often disable
``CONFIG``: then it says it could not check. Node names are ``host:port``, never a URL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

__all__ = ["durability_warnings", "replica_count"]

log = logging.getLogger("gateway.store.redis")

_LOSS = "an acknowledged write can be lost in a failover"
MAX_LAG_S = 10


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def replica_count(client: Any) -> int:
    """``connected_slaves`` of the node behind ``client`` (``INFO replication``)."""
    info = await client.info("replication")
    return int(info.get("connected_slaves", 0))


async def _config(client: Any, pattern: str) -> dict[str, str]:
    reply = await client.config_get(pattern)
    return {_text(k): _text(v) for k, v in dict(reply).items()}


async def durability_warnings(
    primaries: Sequence[tuple[str, Any]], *, wait_replicas: int, mode: str
) -> list[str]:
    """The durability problems of ``primaries`` (``(host:port, client)`` pairs), each logged
    as a WARNING. ``wait_replicas`` 0 means writes are not confirmed by a replica: in
    cluster and Sentinel mode that is itself a warning; a standalone server without replicas
    is a single-node deployment by choice (a development Redis, most often) and is not
    checked: there is no failover to lose a write in."""
    found: list[str] = []
    if wait_replicas <= 0 and mode == "standalone":
        return found
    for name, client in primaries:
        try:
            config = await _config(client, "appendonly")
            config.update(await _config(client, "min-replicas-*"))
        except (RedisError, OSError) as exc:
            found.append(
                f"could not check the durability settings of redis {name} (CONFIG GET "
                f"refused: {type(exc).__name__}); make sure min-replicas-to-write >= 1, "
                f"min-replicas-max-lag <= {MAX_LAG_S} and appendonly yes, or {_LOSS}"
            )
            continue
        if config.get("appendonly") != "yes":
            found.append(
                f"redis {name}: appendonly is not yes: a primary restarted before its replica "
                f"took over comes back without its recent writes (set appendonly yes)"
            )
        if wait_replicas <= 0:
            if mode != "standalone":
                found.append(
                    f"redis {name}: no replica confirms writes (wait_replicas 0): {_LOSS} "
                    f"(give every primary a replica)"
                )
            continue
        to_write = int(config.get("min-replicas-to-write", "0") or 0)
        max_lag = int(config.get("min-replicas-max-lag", "0") or 0)
        if to_write < 1:
            found.append(
                f"redis {name}: min-replicas-to-write is {to_write}: cut off from its replicas "
                f"this primary keeps accepting writes that the promoted replica never saw, "
                f"so {_LOSS} (set min-replicas-to-write 1)"
            )
        elif not 1 <= max_lag <= MAX_LAG_S:
            found.append(
                f"redis {name}: min-replicas-max-lag is {max_lag}: a replica silent that long "
                f"still lets the primary accept writes, so {_LOSS} "
                f"(set min-replicas-max-lag between 1 and {MAX_LAG_S})"
            )
    for line in found:
        log.warning("REDIS DURABILITY: %s", line)
    return found
