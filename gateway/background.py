"""Stopping the gateway's background tasks at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection

__all__ = ["drain"]


async def drain(tasks: Collection[asyncio.Task[object]], timeout: float) -> None:
    """Let ``tasks`` finish for up to ``timeout`` seconds (never cut a store or provider call
    in half when it can end), then cancel the rest and wait for them to unwind."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for task in late:
        task.cancel()
    for task in late:
        with contextlib.suppress(asyncio.CancelledError):
            await task
