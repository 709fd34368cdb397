"""Deleting a test's or a benchmark's keys from Redis, standalone or Cluster alike.

A Cluster node's ``SCAN`` sees only the keys of the slots it serves, and a multi-key command
must stay within one slot: :func:`delete_matching` scans every primary it is given (``MATCH``,
never ``KEYS``) and deletes what it finds in batches of one slot each. A standalone server is
the same case with one node (its batches are per slot too, so the one helper serves both).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import redis
from redis.crc import key_slot

__all__ = ["delete_matching", "delete_matching_at"]

#: keys per UNLINK (and the SCAN COUNT hint)
BATCH = 500


def delete_matching(clients: Iterable[redis.Redis], match: str) -> int:
    """UNLINK every key matching ``match`` on each of ``clients`` (every primary of a
    cluster, or the one standalone server), one slot per command; how many were deleted."""
    deleted = 0
    for client in clients:
        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for key in client.scan_iter(match=match, count=BATCH):
            batch = by_slot[key_slot(key)]
            batch.append(key)
            if len(batch) >= BATCH:
                deleted += int(client.unlink(*batch))
                batch.clear()
        for batch in by_slot.values():
            if batch:
                deleted += int(client.unlink(*batch))
    return deleted


def delete_matching_at(urls: Iterable[str], match: str) -> int:
    """:func:`delete_matching` on a fresh client per URL (closed afterwards)."""
    clients = [redis.Redis.from_url(url, socket_timeout=5.0) for url in urls]
    try:
        return delete_matching(clients, match)
    finally:
        for client in clients:
            client.close()
