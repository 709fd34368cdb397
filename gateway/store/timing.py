"""Latency and error metrics at the store boundary, for any record store and the coordination.

:func:`instrument_store` wraps each public coroutine method of one store *instance* so that
``gateway_store_operation_duration_seconds{operation}`` times it and
``gateway_store_errors_total{operation}`` counts its failures. The operation label is the
method name (with an optional prefix), so the label set is bounded by the code.
:func:`instrument_coordination` does it for the circuits (``circuit_*``), routing statistics
(``stats_add``, ``stats_load``) and rate limits (``ratelimit_take``) of a
:class:`~gateway.store.coordination.Coordination`. The cost is one extra coroutine frame,
two clock reads and one histogram observation per call.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.metrics import STORE_DURATION, STORE_ERRORS

if TYPE_CHECKING:
    from gateway.store.coordination import Coordination

__all__ = ["instrument_coordination", "instrument_store"]

S = TypeVar("S")
_MARK = "_gateway_store_instrumented"
#: lifecycle methods, not store operations
_SKIP = frozenset({"close", "connect"})


def _timed(operation: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    duration = STORE_DURATION.labels(operation)
    errors = STORE_ERRORS.labels(operation)

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except Exception:
            errors.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)

    return timed


def instrument_store(store: S, *, prefix: str = "") -> S:
    """``store`` with every public async method timed, labelled ``prefix`` + its name
    (idempotent; returns the same object)."""
    if getattr(store, _MARK, False):
        return store
    for name, _ in inspect.getmembers(type(store), inspect.iscoroutinefunction):
        if name.startswith("_") or name in _SKIP:
            continue
        setattr(store, name, _timed(prefix + name, getattr(store, name)))
    setattr(store, _MARK, True)
    return store


def instrument_coordination(coordination: Coordination) -> Coordination:
    """``coordination`` with its circuits, statistics and rate limits timed (same object)."""
    instrument_store(coordination.circuits)
    instrument_store(coordination.stats, prefix="stats_")
    instrument_store(coordination.buckets, prefix="ratelimit_")
    return coordination
