"""Hostile identifiers on a 3-master Redis Cluster: Idempotency-Keys, orderReferences and
merchant ids (the token's subject) holding hash-tag braces, ``%``, ``:``, glob characters,
unicode and the longest values allowed. Each becomes part of a key; every key of one script
must stay in one slot (a CROSSSLOT would answer 503 for that merchant for good), and no two
identifiers may share a key."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import headers, seed
from tests.redis_servers import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

HOSTILE = [
    "{",
    "}",
    "{}",
    "}{",
    "{s3}",
    "{{s1}}",
    "a{b}c",
    "%7B",
    "%",
    "%%7D%",
    ":",
    "a:b",
    "::{s0}::",
    "*?[]\\",
    "x" * 120 + "{y}",
]


@pytest.fixture
async def cluster_client(
    aiohttp_client: Any, redis_cluster: RedisCluster, make_settings: Callable[..., Settings]
) -> Any:
    settings = make_settings(
        store="redis",
        redis_mode="cluster",
        redis_url=redis_cluster.seed_url,
        redis_prefix=f"hostile:{uuid.uuid4().hex[:8]}:",
        redis_warm_connections=1,
    )
    return await aiohttp_client(create_app(settings))


async def create(client: Any, body: dict[str, Any], key: str, merchant: str) -> tuple[int, Any]:
    answer = await client.post(
        "/api/v1/sessions", json=body, headers=headers(key, merchant=merchant)
    )
    return answer.status, await answer.json()


async def test_hostile_identifiers_stay_in_their_slots(cluster_client: Any) -> None:
    keys = [*HOSTILE, "k" * 255, "~" * 255, "{" * 255]
    refs = [*HOSTILE, "\u00e9\u4e2d\U0001f4b8{x}", "r" * 128, "}" * 128]
    merchants = ["merchant-1", "{m}", "m:{s2}", "%7Bm%7D", "\u00fc{", "z" * 128]
    made: dict[str, tuple[str, str, str]] = {}
    problems: list[str] = []
    for i, merchant in enumerate(merchants):
        for j, ref in enumerate(refs):
            key = keys[(i * len(refs) + j) % len(keys)] + f"-{i}-{j}"
            key = key[-255:]
            status, body = await create(cluster_client, seed(orderReference=ref), key, merchant)
            if status != 201:
                problems.append(f"create {merchant!r} {ref!r} {key!r}: {status} {body}")
                continue
            made[body["sessionId"]] = (merchant, ref, key)
            again, replay = await create(cluster_client, seed(orderReference=ref), key, merchant)
            if again != 201 or replay["sessionId"] != body["sessionId"]:
                problems.append(f"replay {merchant!r} {key!r}: {again} {replay}")
    assert not problems, problems[:5]
    assert len(made) == len(merchants) * len(refs)
    for session_id, (merchant, ref, _) in made.items():
        read = await cluster_client.get(
            f"/api/v1/sessions/{session_id}", headers=headers(None, merchant=merchant)
        )
        assert read.status == 200, (merchant, ref, await read.text())
        found = await cluster_client.get(
            "/api/v1/sessions",
            params={"orderReference": ref},
            headers=headers(None, merchant=merchant),
        )
        assert found.status == 200, (merchant, ref, await found.text())
        ids = [view["sessionId"] for view in (await found.json())["data"]]
        assert ids == [session_id], (merchant, ref, ids)
