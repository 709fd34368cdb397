"""Routing statistics while their Redis is down: one line per failure, no traceback; a bug in
the statistics store still logs its traceback."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest

from gateway.routing.learning import OutcomeFeed
from gateway.routing.stats_redis import RedisStatsStore
from gateway.settings import Settings
from gateway.store.redis_client import open_redis
from tests.gateway_processes import free_port


async def test_a_stats_outage_is_one_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.routing")
    url = f"redis://127.0.0.1:{free_port()}/0"
    conn = open_redis(Settings(_env_file=None, redis_url=url))  # type: ignore[call-arg]
    store = RedisStatsStore(conn, "nothing:", owns_conn=True)
    counters: Counter[str] = Counter()
    feed = OutcomeFeed(store, owns_store=True, clock=lambda: 1_000.0, counters=counters)
    try:
        await feed.refresh(["stripe"], 3600.0)
        feed.creation("stripe", "created", 12.0, "USD", "US", 3600.0)
        await feed.flush()
    finally:
        await feed.close()
    failures = [r for r in caplog.records if "routing statistics" in r.getMessage()]
    assert [r.getMessage() for r in failures] == [
        "routing statistics refresh failed",
        "routing statistics write failed",
    ]
    assert all(r.exc_info is None for r in failures)
    assert all(getattr(r, "exception_type", "").endswith("Error") for r in failures)
    assert counters["stats_refresh_failed"] == 1
    assert counters["stats_write_failed"] == 1


class _BrokenStats:
    async def load(self, **_: Any) -> Any:
        raise KeyError("a bug")

    async def add(self, *_: Any, **__: Any) -> None:
        raise KeyError("a bug")

    async def close(self) -> None:
        return None


async def test_a_bug_in_the_stats_store_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.routing")
    feed = OutcomeFeed(
        _BrokenStats(),  # type: ignore[arg-type]
        owns_store=True,
        clock=lambda: 1_000.0,
        counters=Counter(),
    )
    await feed.refresh(["stripe"], 3600.0)
    await feed.close()
    failures = [r for r in caplog.records if "routing statistics" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].exception_type == "KeyError"  # type: ignore[attr-defined]
