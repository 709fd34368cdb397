"""The Redis key layout: one root prefix, escaped parts, hash tags for circuits."""

from __future__ import annotations

import pytest

from gateway.settings import Settings
from gateway.store.keys import CIRCUIT_IDLE_S, RedisKeys, circuit_ttl_s


def test_default_root_matches_settings() -> None:
    assert RedisKeys().root == Settings.model_fields["redis_prefix"].default == "gw:"


def test_layout() -> None:
    keys = RedisKeys("gw:")
    assert keys.idempotency("merchant-1", "key-1") == "gw:idem:merchant-1:key-1"
    assert keys.order("merchant-1", "ORD-1") == "gw:order:merchant-1:ORD-1"
    assert keys.session("s_1") == "gw:session:s_1"
    assert keys.circuit("stripe") == "gw:circuit:{stripe}"
    assert keys.circuit_failures("stripe") == "gw:circuit:{stripe}:fails"
    assert keys.circuit_probes("stripe") == "gw:circuit:{stripe}:probes"
    assert keys.routing_stats("adyen") == "gw:stats:{adyen}"
    assert keys.webhook_dedup("paypal", "WH-1") == "gw:webhook:paypal:WH-1"
    assert keys.outbox() == "gw:outbox"


def test_every_key_lives_under_the_root() -> None:
    keys = RedisKeys("tenant-a:gw:")
    built = [
        keys.idempotency("m", "k"),
        keys.order("m", "o"),
        keys.session("s"),
        keys.circuit("p"),
        keys.circuit_failures("p"),
        keys.circuit_probes("p"),
        keys.routing_stats("p"),
        keys.webhook_dedup("p", "e"),
        keys.outbox(),
    ]
    assert all(k.startswith("tenant-a:gw:") for k in built)
    assert len(set(built)) == len(built)


def test_parts_are_escaped_so_keys_never_collide() -> None:
    keys = RedisKeys("gw:")
    assert keys.idempotency("a:b", "c") != keys.idempotency("a", "b:c")
    assert keys.idempotency("a:b", "c") == "gw:idem:a%3Ab:c"
    assert keys.idempotency("a%3Ab", "c") == "gw:idem:a%253Ab:c"
    # a provider name cannot break out of its hash tag
    assert keys.circuit("x}y{z") == "gw:circuit:{x%7Dy%7Bz}"


def test_match_all_escapes_glob_characters() -> None:
    assert RedisKeys("gw:").match_all() == "gw:*"
    assert RedisKeys("t*[1]?:").match_all() == "t\\*\\[1\\]\\?:*"


def test_root_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="hash tags"):
        RedisKeys("gw:{x}:")


def test_circuit_ttl_covers_open_period_and_window() -> None:
    assert circuit_ttl_s(now=100.0, window_s=10, open_until=None) == 10 + CIRCUIT_IDLE_S
    assert circuit_ttl_s(now=100.0, window_s=10, open_until=130.0) == 40 + CIRCUIT_IDLE_S
    assert circuit_ttl_s(now=200.0, window_s=10, open_until=130.0) == 10 + CIRCUIT_IDLE_S
