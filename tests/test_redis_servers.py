"""The private Redis deployments the Redis-mode tests rely on start as promised."""

from __future__ import annotations

import redis

from tests.redis_servers import RedisCluster, SentinelGroup


def test_the_cluster_covers_every_slot_with_three_primaries(redis_cluster: RedisCluster) -> None:
    client = redis.RedisCluster.from_url(redis_cluster.seed_url)
    try:
        assert len(redis_cluster.primaries) == 3
        for node in redis_cluster.nodes:
            assert node.role_now() == "master"
        slots = client.cluster_slots()
        covered = sum(end - start + 1 for start, end in slots)
        assert covered == 16384
    finally:
        client.close()


def test_the_replicated_cluster_has_a_synced_replica_per_primary(
    redis_cluster_replicated: RedisCluster,
) -> None:
    assert len(redis_cluster_replicated.replicas) == 3
    for node in redis_cluster_replicated.replicas:
        info = node.server.info("replication")
        assert info["role"] == "slave"
        assert info["master_link_status"] == "up"
    for node in redis_cluster_replicated.primaries:
        assert node.server.info("replication")["connected_slaves"] == 1


def test_the_sentinel_group_watches_a_durable_primary(redis_sentinel_group: SentinelGroup) -> None:
    primary = redis_sentinel_group.current_primary()
    assert primary.role_now() == "master"
    with primary.server.client() as client:
        config = client.config_get("min-replicas-*")
    assert config["min-replicas-to-write"] == "1"
    assert config["min-replicas-max-lag"] == "10"
    assert len(redis_sentinel_group.sentinels) == 3
