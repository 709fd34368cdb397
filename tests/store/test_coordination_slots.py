"""Every coordination script touches one Redis Cluster slot: the provider's hash tag (circuits,
routing statistics), or a single key (a rate-limit bucket). Checked on the keys the stores
really pass to ``conn.script`` (run on the test Redis), with the slot function the cluster
client uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from redis.crc import key_slot

from gateway.ratelimit import RateLimit, RedisTokenBuckets
from gateway.routing.stats import Counters
from gateway.routing.stats_redis import RedisStatsStore
from gateway.settings import Settings
from gateway.store.circuits_redis import RedisCircuits
from gateway.store.keys import RedisKeys
from gateway.store.redis_client import StandaloneConn, open_redis
from gateway.store.redis_conn import LuaScript, ScriptArg

PROVIDERS = ["stripe", "adyen", "paypal", "a:b", "x{y}z", "{}", "%7B"]
PREFIX_TAILS = ["", "tenant-7:", "a:b:"]


class RecordingConn(StandaloneConn):
    """The standalone conn on the test Redis, noting the keys of each script it runs."""

    def __init__(self, url: str) -> None:
        made = open_redis(Settings(_env_file=None, redis_url=url))  # type: ignore[call-arg]
        super().__init__(made.client, wait_replicas=0, wait_timeout_ms=100)
        self.runs: list[list[str]] = []
        self.confirmed = 0

    async def script(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        confirm: bool = False,
    ) -> Any:
        self.runs.append(list(keys))
        self.confirmed += confirm
        return await super().script(script, keys, args, confirm=confirm)


def slots(keys: list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


@pytest.mark.parametrize("tail", PREFIX_TAILS)
async def test_each_script_of_the_coordination_is_in_one_slot(
    tail: str, redis_url: str, redis_prefix: str
) -> None:
    conn = RecordingConn(redis_url)
    prefix = redis_prefix + tail
    circuits = RedisCircuits(conn, prefix)
    stats = RedisStatsStore(conn, prefix, owns_conn=True)
    buckets = RedisTokenBuckets(conn, RedisKeys(prefix))
    for provider in PROVIDERS:
        await circuits.circuit_failure(provider, now=1.0, window_s=10, threshold=5, open_s=30)
        await circuits.circuit_success(provider, now=1.0)
        await circuits.circuit_acquire_probe(provider, now=1.0, max_probes=1, probe_ttl_s=5)
        await buckets.take("merchant", provider, RateLimit(per_second=1.0, burst=1))
    for provider in ["stripe", "adyen", "a.b-c_d"]:  # what a segment may be named
        segments = [(provider, "all", ""), (provider, "currency", "EUR"), (provider, "bin", "4")]
        await stats.add(segments, Counters(creation_ok=1), now=1.0, half_life_s=60)
    await stats.close()
    assert len(conn.runs) == len(PROVIDERS) * 4 + 3
    for keys in conn.runs:
        assert len(slots(keys)) == 1, keys
    assert conn.confirmed == 0  # coordination state is advisory: it never waits for replicas


def test_a_providers_keys_hash_on_its_tag_so_providers_spread_over_slots() -> None:
    keys = RedisKeys("gw:")
    circuits = RedisCircuits(None, "gw:")  # type: ignore[arg-type]
    stats = RedisStatsStore(None, "gw:")  # type: ignore[arg-type]
    for provider in ["stripe", "adyen", "paypal"]:
        tagged = [*circuits.circuit_keys(provider), stats.index_key(provider)]
        tagged.append(stats.segment_key((provider, "country", "NL")))
        assert slots(tagged) == {key_slot(provider.encode())}
    assert len({key_slot(p.encode()) for p in ["stripe", "adyen", "paypal"]}) == 3
    assert keys.rate_limit("merchant", "m-1") != keys.rate_limit("merchant", "m-2")
