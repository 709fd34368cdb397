"""Mutated requests never get a 500: every answer is a 201 or an error in the envelope.

Three hundred seeded mutations of the seed request (a value replaced by another type, an
extreme, junk or a deep nest; a field removed; an unknown field added) go through the real HTTP
stack, to both endpoints that take a checkout body.
"""

from __future__ import annotations

import json
import random
from typing import Any

from tests.api.conftest import SEED, GatewayFactory, headers

REPLACEMENTS: list[Any] = [
    None,
    "",
    "x" * 3000,
    -1,
    0,
    10**40,
    True,
    [],
    {},
    "NaN",
    "1e400",
    "\u0000",
    "\ud7ff\uffff",
    "💳" * 50,
    [[[[[[[[[[[]]]]]]]]]]],
    {"nested": {"deeper": {"deepest": [1, 2, 3]}}},
    "https://evil.example/\r\nSet-Cookie: x",
    "-0.00",
    "0.0000001",
]
RAW_NUMBERS = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "1E-400",
    "123456789012345678901234567890.12",
    "[" * 20_000 + "]" * 20_000,
]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += paths(item, (*prefix, index))
    return out


def mutate(rng: random.Random) -> bytes:
    body = json.loads(json.dumps(SEED))
    path = rng.choice(paths(body))
    parent = body
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    action = rng.random()
    if action < 0.15 and isinstance(parent, dict):
        del parent[last]
    elif action < 0.25 and isinstance(parent, dict):
        parent[f"unknown_{rng.randint(0, 9)}"] = rng.choice(REPLACEMENTS)
    elif action < 0.40:
        parent[last] = "__RAW__"
        return json.dumps(body).replace('"__RAW__"', rng.choice(RAW_NUMBERS)).encode()
    else:
        parent[last] = rng.choice(REPLACEMENTS)
    return json.dumps(body).encode()


async def test_mutated_bodies_get_defined_answers(gateway: GatewayFactory) -> None:
    client = await gateway()
    rng = random.Random(20261121)
    for i in range(300):
        raw = mutate(rng)
        path = "/api/v1/sessions" if i % 2 == 0 else "/api/v1/routing/simulate"
        response = await client.post(path, data=raw, headers=headers(f"fuzz-{i}"))
        assert response.status in (200, 201, 400, 409, 422), (response.status, raw[:300])
        body = await response.json()
        if response.status >= 400:
            assert body["statusCode"] == response.status
            assert body["requestId"] == response.headers["X-Request-ID"]
            assert body["message"]
