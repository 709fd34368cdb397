"""The Redis store's create path alone, on the Redis at ``BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/14``): ``begin_create`` + ``commit_create`` as the gateway makes them
(a pin, the order guard on and off, one notification, an expiry). Prints the median of three
runs: sequential latency (p50/p99 of 2,000 creates) and creates/s with 64 in flight. Deletes its
keys afterwards (SCAN of its own prefix, UNLINK per slot).

    .venv/bin/python bench/redis_create.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.idempotency import session_id_for  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.store.base import Completion, CreatePin, OutboxItem, StoredResponse  # noqa: E402
from gateway.store.redis import RedisStore  # noqa: E402
from gateway.store.redis_client import RedisClientSettings, open_redis  # noqa: E402
from tests.redis_cleanup import delete_matching_at  # noqa: E402
from tests.store.samples import make_session  # noqa: E402

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def open_store(prefix: str) -> RedisStore:
    conn = open_redis(Settings(redis_url=URL), RedisClientSettings())
    return RedisStore(conn, prefix, owns_conn=True)


async def one(store: RedisStore, key: str, guard: bool) -> float:
    scope = "merchant-1"
    sid = session_id_for(scope, key)
    order = f"ORD-{key}" if guard else None
    token = uuid.uuid4().hex
    pin = CreatePin(created_at=datetime.now(UTC), request_id="rq", first="stripe")
    started = time.perf_counter()
    await store.begin_create(
        scope,
        key,
        "fp",
        token=token,
        lease_ms=60_000,
        order_ref=order,
        pin=pin,
        pin_ttl_ms=86_400_000,
    )
    record = make_session(sid).model_copy(update={"orderReference": order or "ORD-x"})
    note = OutboxItem(f"{sid}:created", scope, "payment_session.created", b"{}", time.time())
    completion = Completion(
        scope, key, token, StoredResponse(201, b"{}", "/x"), 86_400, order, 2_592_000
    )
    await store.commit_create(
        record, completion, ttl_s=2_592_000, expires_at=time.time() + 3600, outbox=[note]
    )
    return time.perf_counter() - started


async def run(guard: bool, n_seq: int, n_conc: int) -> dict[str, float]:
    prefix = f"bench:{uuid.uuid4().hex}:"
    store = open_store(prefix)
    try:
        for i in range(50):
            await one(store, f"warm{i}", guard)
        lat = [await one(store, f"s{i}", guard) for i in range(n_seq)]
        sem = asyncio.Semaphore(64)

        async def bounded(i: int) -> None:
            async with sem:
                await one(store, f"c{i}", guard)

        started = time.perf_counter()
        await asyncio.gather(*(bounded(i) for i in range(n_conc)))
        rate = n_conc / (time.perf_counter() - started)
    finally:
        await store.close()
        delete_matching_at([URL], prefix + "*")
    lat.sort()
    return {
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "creates_per_s": rate,
    }


async def main() -> None:
    for guard in (True, False):
        results = [await run(guard, 2000, 5000) for _ in range(3)]
        best = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"guard={guard}: " + ", ".join(f"{k}={v:.3f}" for k, v in best.items()))


asyncio.run(main())
