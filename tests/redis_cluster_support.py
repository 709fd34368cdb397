"""Pytest fixtures for private Redis deployments (see :mod:`tests.redis_servers`).

- ``redis_cluster``: 3 primaries, no replicas (session scope);
- ``redis_cluster_replicated``: 3 primaries with one replica each, configured for no
  acknowledged loss (``min-replicas-to-write 1``, ``min-replicas-max-lag 10``, AOF; session);
- ``redis_sentinel_group``: a durable primary, 2 replicas and 3 Sentinels (session scope; a
  test may fail it over with ``SENTINEL FAILOVER`` but must not kill or reconfigure its nodes:
  ask :meth:`~tests.redis_servers.SentinelGroup.current_primary`, not ``primary``);
- ``redis_sentinel_group_factory``: ``make(replicas=..., sentinels=..., durable=...)`` for a
  group of the test's own (kill it at will; stopped at teardown);
- ``redis_cluster_prefix``: a key prefix of the test's own on ``redis_cluster``; teardown
  deletes its keys on every primary (:func:`tests.redis_cleanup.delete_matching`).

A test using them is skipped when redis-server is not installed, except under ``CI=true``
where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.redis_cleanup import delete_matching
from tests.redis_servers import (
    RedisCluster,
    SentinelGroup,
    redis_server_binary,
    start_cluster,
    start_sentinel_group,
)

__all__ = [
    "redis_cluster",
    "redis_cluster_prefix",
    "redis_cluster_replicated",
    "redis_sentinel_group",
    "redis_sentinel_group_factory",
    "redis_server_installed",
]


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


@pytest.fixture(scope="session")
def redis_server_installed() -> str:
    """The redis-server binary. Skips the test when it is missing; fails it under CI=true."""
    binary = redis_server_binary()
    if binary is None:
        message = "redis-server is not installed (Debian package redis-server)"
        if _under_ci():
            pytest.fail(f"{message} (CI=true: a missing redis-server is a failure)", pytrace=False)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def redis_cluster(redis_server_installed: str) -> Iterator[RedisCluster]:
    """A 3-primary Redis Cluster without replicas, shared by the session."""
    cluster = start_cluster(masters=3, replicas_per_master=0)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_prefix(redis_cluster: RedisCluster) -> Iterator[str]:
    """A key prefix unique to this test on ``redis_cluster``; teardown deletes its keys on
    every primary (SCAN MATCH per primary, UNLINK per slot)."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    clients = [node.server.client() for node in redis_cluster.primaries]
    try:
        delete_matching(clients, f"{prefix}*")
    finally:
        for client in clients:
            client.close()


@pytest.fixture(scope="session")
def redis_cluster_replicated(redis_server_installed: str) -> Iterator[RedisCluster]:
    """A 3-primary Redis Cluster with one replica per primary, durable settings on."""
    cluster = start_cluster(masters=3, replicas_per_master=1, durable=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel_group(redis_server_installed: str) -> Iterator[SentinelGroup]:
    """A durable primary, 2 replicas and 3 Sentinels (quorum 2), shared by the session."""
    group = start_sentinel_group(replicas=2, sentinels=3)
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def redis_sentinel_group_factory(
    redis_server_installed: str,
) -> Iterator[Callable[..., SentinelGroup]]:
    """``make(**start_sentinel_group_kwargs)``: a Sentinel group of this test's own."""
    groups: list[SentinelGroup] = []

    def make(**kwargs: Any) -> SentinelGroup:
        group = start_sentinel_group(**kwargs)
        groups.append(group)
        return group

    try:
        yield make
    finally:
        for group in groups:
            group.stop()
