"""Delivering the outbox: at least once, signed, with exponential backoff and dead letters.

One :class:`DeliveryWorker` runs in every gateway process. Each round it claims a batch of due
items from the store with a lease (two processes never deliver the same item at once; the
items of a process that died come back when their lease ends), POSTs them concurrently and
then, per item:

* 2xx: removed from the outbox;
* anything else (timeout, refused connection, non-2xx): attempt ``n`` is retried after
  ``min(max, base * 2**(n-1))`` seconds, scaled by a random factor in ``[0.5, 1]`` (jitter,
  so a merchant coming back is not hit by every retry at once);
* after ``max_attempts`` failed attempts the item goes to the dead letters, where it is kept
  for inspection (:meth:`~gateway.store.base.OutboxStore.outbox_dead_letters`).

Redirects are not followed: a merchant endpoint must answer 2xx itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from gateway import __version__
from gateway.metrics import (
    NOTIFICATION_BACKLOG,
    NOTIFICATION_DELIVERIES,
    NOTIFICATION_DURATION,
    NOTIFICATION_FAILURES,
)
from gateway.notifications.merchants import MerchantDirectory
from gateway.notifications.signing import SIGNATURE_HEADER, signature_header
from gateway.store.base import OutboxItem, OutboxStore, StoreUnavailable

__all__ = ["DeliveryPolicy", "DeliveryWorker"]

log = logging.getLogger("gateway.notifications")


def _reraise_cancellation() -> None:
    """A client library may turn our cancellation into an error we caught: honour it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How hard the worker tries (``GATEWAY_NOTIFICATION_*`` settings)."""

    max_attempts: int = 12
    backoff_base_s: float = 5.0
    backoff_max_s: float = 3600.0
    timeout_s: float = 10.0
    poll_interval_s: float = 1.0
    lease_s: float = 60.0
    batch_size: int = 20

    def backoff(self, attempts: int, draw: float) -> float:
        """Seconds before the next try after ``attempts`` failures; ``draw`` is in [0, 1)."""
        growth = 2.0 ** max(0, attempts - 1)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * growth)
        return ceiling * (0.5 + draw / 2)


class DeliveryWorker:
    """Delivers due outbox items to the merchants' webhook URLs."""

    def __init__(
        self,
        store: OutboxStore,
        directory: MerchantDirectory,
        http: aiohttp.ClientSession,
        policy: DeliveryPolicy,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.directory = directory
        self.http = http
        self.policy = policy
        self._clock = clock
        self._rng = rng

    async def run_once(self) -> int:
        """Claim one batch and deliver it; returns how many items were handled."""
        now = self._clock()
        items = await self.store.outbox_claim(
            now=now, lease_s=self.policy.lease_s, limit=self.policy.batch_size
        )
        if items:
            await asyncio.gather(*(self._handle(item) for item in items))
        NOTIFICATION_BACKLOG.set(await self.store.outbox_backlog())
        return len(items)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set (a round in progress finishes first); a full batch is
        followed at once by the next one."""
        while not stop.is_set():
            try:
                handled = await self.run_once()
            except StoreUnavailable:
                log.warning("notification outbox unavailable; retrying")
                handled = 0
            except Exception:
                log.exception("notification delivery round failed")
                handled = 0
            _reraise_cancellation()
            if handled < self.policy.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.policy.poll_interval_s)

    async def _handle(self, item: OutboxItem) -> None:
        hook = self.directory.webhook_for(item.merchant_id, item.event_type)
        if hook is None:
            NOTIFICATION_FAILURES.labels(item.event_type, "not_configured").inc()
            log.warning(
                "notification dropped to dead letters: merchant has no webhook for it",
                extra={"merchant": item.merchant_id, "event_id": item.id},
            )
            await self.store.outbox_dead(item.failed("no webhook configured"), at=self._clock())
            return
        error = await self._post(item, hook.url, hook.secrets)
        if error is None:
            NOTIFICATION_DELIVERIES.labels(item.event_type).inc()
            await self.store.outbox_done(item)
            return
        NOTIFICATION_FAILURES.labels(item.event_type, error).inc()
        failed = item.failed(error)
        context = {
            "merchant": item.merchant_id,
            "event_id": item.id,
            "attempts": failed.attempts,
            "reason": error,
        }
        if failed.attempts >= self.policy.max_attempts:
            NOTIFICATION_FAILURES.labels(item.event_type, "gave_up").inc()
            log.error("notification dead-lettered after its last attempt", extra=context)
            await self.store.outbox_dead(failed, at=self._clock())
            return
        delay = self.policy.backoff(failed.attempts, self._rng())
        log.warning("notification delivery failed; will retry", extra=context)
        await self.store.outbox_retry(failed, due=self._clock() + delay)

    async def _post(self, item: OutboxItem, url: str, secrets: tuple[str, ...]) -> str | None:
        """POST the signed item; None on 2xx, else the failure reason."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"payment-routing-gateway/{__version__}",
            "Gateway-Event-Id": item.id,
            "Gateway-Event-Type": item.event_type,
            SIGNATURE_HEADER: signature_header(list(secrets), int(self._clock()), item.body),
        }
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        began = time.perf_counter()
        try:
            async with self.http.post(
                url, data=item.body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError):
            return "connection_error"
        finally:
            NOTIFICATION_DURATION.observe(time.perf_counter() - began)
        if 200 <= status < 300:
            return None
        return f"http_{status // 100}xx"
