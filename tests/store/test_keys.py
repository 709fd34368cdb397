"""The Redis key layout: one root prefix, escaped parts, hash tags: a session's records and
its bucket's queues in one slot, an order's reservation and index in another."""

from __future__ import annotations

import uuid
import zlib

import pytest
from redis.crc import key_slot

from gateway.idempotency import session_id_for
from gateway.settings import Settings
from gateway.store.keys import CIRCUIT_IDLE_S, QUEUE_BUCKETS, RedisKeys, bucket, circuit_ttl_s


def test_default_root_matches_settings() -> None:
    assert RedisKeys().root == Settings.model_fields["redis_prefix"].default == "gw:"


def test_layout() -> None:
    keys = RedisKeys("gw:")
    n = bucket(session_id_for("merchant-1", "key-1"))
    assert keys.idempotency("merchant-1", "key-1") == f"gw:{{s{n}}}:idem:merchant-1:key-1"
    assert keys.order("merchant-1", "ORD-1") == "gw:order:{merchant-1:ORD-1}"
    assert keys.order_sessions("merchant-1", "ORD-1") == "gw:order_sessions:{merchant-1:ORD-1}"
    assert keys.order_next("m", "O", "t") == "gw:order:{m:O}:next:t"
    assert keys.session("s_1") == f"gw:{{s{bucket('s_1')}}}:session:s_1"
    assert keys.circuit("stripe") == "gw:circuit:{stripe}"
    assert keys.circuit_failures("stripe") == "gw:circuit:{stripe}:fails"
    assert keys.circuit_probes("stripe") == "gw:circuit:{stripe}:probes"
    assert keys.routing_stats("adyen") == "gw:stats:{adyen}"
    assert keys.webhook_dedup("paypal", "WH-1") == "gw:webhook:paypal:WH-1"
    assert keys.outbox_due(3) == "gw:{s3}:outbox:due"
    assert keys.outbox_dead_items(15) == "gw:{s15}:outbox:dead_items"
    assert keys.orphans_leases(0) == "gw:{s0}:orphans:leases"
    assert keys.expiry_index(7) == "gw:{s7}:expiry"


def test_buckets_are_fixed_and_stable() -> None:
    # changing either strands queued items and moves idempotency records: never do it
    assert QUEUE_BUCKETS == 16
    assert [bucket(v) for v in ("s_1", "a", "")] == [
        zlib.crc32(b"s_1") % 16,
        zlib.crc32(b"a") % 16,
        0,
    ]
    spread = {bucket(str(uuid.UUID(int=i))) for i in range(400)}
    assert spread == set(range(QUEUE_BUCKETS))


def test_a_sessions_records_share_its_buckets_slot() -> None:
    keys = RedisKeys("gw:")
    session_id = session_id_for("merchant-1", "key-1")
    n = bucket(session_id)
    together = [
        keys.idempotency("merchant-1", "key-1"),
        keys.session(session_id),
        keys.expiry_index(n),
        keys.outbox_due(n),
        keys.outbox_items(n),
        keys.outbox_leases(n),
        keys.outbox_dead(n),
        keys.outbox_dead_items(n),
        keys.orphans_due(n),
        keys.orphans_items(n),
        keys.orphans_leases(n),
    ]
    assert len({key_slot(k.encode()) for k in together}) == 1
    order = [
        keys.order("merchant-1", "ORD-1"),
        keys.order_next("merchant-1", "ORD-1", "t"),
        keys.order_sessions("merchant-1", "ORD-1"),
    ]
    assert len({key_slot(k.encode()) for k in order}) == 1
    # the buckets spread over the cluster's slots (so over its masters)
    assert len({key_slot(keys.outbox_due(n).encode()) for n in range(QUEUE_BUCKETS)}) == 16


def test_every_key_lives_under_the_root() -> None:
    keys = RedisKeys("tenant-a:gw:")
    built = [
        keys.idempotency("m", "k"),
        keys.order("m", "o"),
        keys.order_next("m", "o", "t"),
        keys.order_sessions("m", "o"),
        keys.session("s"),
        keys.circuit("p"),
        keys.circuit_failures("p"),
        keys.circuit_probes("p"),
        keys.routing_stats("p"),
        keys.webhook_dedup("p", "e"),
        keys.outbox_due(0),
        keys.orphans_due(0),
        keys.expiry_index(0),
    ]
    assert all(k.startswith("tenant-a:gw:") for k in built)
    assert len(set(built)) == len(built)


def test_parts_are_escaped_so_keys_never_collide() -> None:
    keys = RedisKeys("gw:")
    assert keys.idempotency("a:b", "c") != keys.idempotency("a", "b:c")
    assert keys.idempotency("a:b", "c").endswith("}:idem:a%3Ab:c")
    assert keys.idempotency("a%3Ab", "c").endswith("}:idem:a%253Ab:c")
    assert keys.order("a:b", "c") != keys.order("a", "b:c")
    # no part can open or close a hash tag
    assert keys.circuit("x}y{z") == "gw:circuit:{x%7Dy%7Bz}"
    assert keys.order("m{", "}o") == "gw:order:{m%7B:%7Do}"
    assert keys.session("{s}") == f"gw:{{s{bucket('{s}')}}}:session:%7Bs%7D"


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
