"""GATEWAY_REDIS_MODE and its companions: refused when they cannot work, never echoing a secret;
and the one error mapping of every Redis failure to StoreUnavailable (503)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import StandaloneConn, open_redis, parse_sentinels
from gateway.store.redis_cluster import ClusterConn
from gateway.store.redis_sentinel import SentinelConn
from gateway.store.redis_support import _mapped

SECRET = "s3cr3t-Pa55"


def _refusal(**settings: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**settings)  # type: ignore[arg-type]
    text = str(caught.value)
    assert SECRET not in text
    return text


@pytest.mark.parametrize(
    "url", [f"redis://:{SECRET}@h:7000/3", f"redis://u:{SECRET}@h:7000/0?db=2"]
)
def test_a_cluster_url_naming_another_database_is_refused(url: str) -> None:
    text = _refusal(redis_mode="cluster", redis_url=url)
    assert "cluster mode" in text
    assert "database" in text


@pytest.mark.parametrize("url", ["redis://h:7000", "redis://h:7000/", "redis://h:7000/0"])
def test_a_cluster_seed_url_on_database_0_is_accepted(url: str) -> None:
    settings = Settings(redis_mode="cluster", redis_url=url)  # type: ignore[call-arg]
    assert isinstance(open_redis(settings), ClusterConn)


def test_sentinel_mode_needs_its_sentinels_and_service() -> None:
    password = {"redis_sentinel_password": SECRET, "redis_url": f"redis://:{SECRET}@x/0"}
    assert "redis_sentinels" in _refusal(redis_mode="sentinel", **password)
    text = _refusal(redis_mode="sentinel", redis_sentinels="h:26379", **password)
    assert "redis_sentinel_service" in text
    text = _refusal(
        redis_mode="sentinel", redis_sentinels="h:26379,h2", redis_sentinel_service="m", **password
    )
    assert "host:port" in text


def test_open_redis_makes_the_conn_the_mode_asks_for() -> None:
    assert isinstance(open_redis(Settings()), StandaloneConn)  # type: ignore[call-arg]
    sentinel = open_redis(
        Settings(  # type: ignore[call-arg]
            redis_mode="sentinel",
            redis_sentinels="10.0.0.1:26379, [::1]:26380",
            redis_sentinel_service="gateway",
        )
    )
    assert isinstance(sentinel, SentinelConn)
    assert sentinel.wait_replicas == 1  # auto behind Sentinel
    assert parse_sentinels("10.0.0.1:26379, [::1]:26380") == [("10.0.0.1", 26379), ("::1", 26380)]


@pytest.mark.parametrize(
    "error",
    [
        RedisClusterException("EVALSHA - all keys must map to the same key slot"),
        SlotNotCoveredError("slot 12 not covered"),
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        MovedError("3999 127.0.0.1:6381"),
        ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
        ResponseError("NOREPLICAS Not enough good replicas to write."),
        ReadOnlyError("You can't write against a read only replica."),
        RedisConnectionError("Error 111 connecting to 127.0.0.1:7000."),
        RedisTimeoutError("Timeout reading from 127.0.0.1:7000"),
        TimeoutError(),
    ],
)
def test_every_redis_failure_maps_to_store_unavailable_with_its_cause(error: Exception) -> None:
    with pytest.raises(StoreUnavailable) as caught, _mapped("create"):
        raise error
    assert type(error).__name__ in str(caught.value)
    assert caught.value.__cause__ is error
