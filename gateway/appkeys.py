"""Typed application keys: every long-lived object the handlers reach, in one place."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import aiohttp

    from gateway.auth import Authenticator
    from gateway.demo.inbox import Inbox
    from gateway.lifecycle import LifecycleService
    from gateway.notifications.merchants import MerchantDirectory
    from gateway.ratelimit import TokenBuckets
    from gateway.redis_startup import RedisStartup
    from gateway.settings import Settings
    from gateway.store.base import RecordStore
    from gateway.store.coordination import Coordination
    from providers.base import ProviderAdapter

__all__ = [
    "ADAPTERS",
    "AUTH",
    "COORDINATION",
    "DEMO_INBOX",
    "HTTP_CLIENT",
    "LIFECYCLE",
    "MERCHANTS",
    "RATE_LIMITS",
    "REDIS_STARTUPS",
    "RETURN_WAITERS",
    "ROUTER",
    "SERVICES",
    "SETTINGS",
    "STORE",
    "WORKER_STATE",
]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
#: the records (GATEWAY_STORE)
STORE: web.AppKey[RecordStore] = web.AppKey("store")
#: circuits, routing statistics and rate limits (GATEWAY_COORDINATION)
COORDINATION: web.AppKey[Coordination] = web.AppKey("coordination")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
HTTP_CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("http_client")
ADAPTERS: web.AppKey[dict[str, ProviderAdapter]] = web.AppKey("adapters")
#: the routing service (gateway.routing.service.Router)
ROUTER: web.AppKey[Any] = web.AppKey("router")
#: the session service (gateway.sessions.SessionService)
SERVICES: web.AppKey[Any] = web.AppKey("services")
#: the session lifecycle (webhook events, cancel, expiry)
LIFECYCLE: web.AppKey[LifecycleService] = web.AppKey("lifecycle")
#: merchants and their notification webhooks (GATEWAY_MERCHANTS_PATH)
MERCHANTS: web.AppKey[MerchantDirectory] = web.AppKey("merchants")
#: where the supervisor of ``gateway serve --workers N`` publishes the workers' state
WORKER_STATE: web.AppKey[Path] = web.AppKey("worker_state")
#: the token buckets of the rate limits (the coordination's: Redis-shared or this process's)
RATE_LIMITS: web.AppKey[TokenBuckets] = web.AppKey("rate_limits")
#: bounds how many return-page requests of this process wait for a payment outcome at once
RETURN_WAITERS: web.AppKey[asyncio.Semaphore] = web.AppKey("return_waiters")
#: the demo merchant's received notifications (sandbox mode only)
DEMO_INBOX: web.AppKey[Inbox] = web.AppKey("demo_inbox")
#: the start of each Redis connection (the records' and the coordination's, or one shared)
REDIS_STARTUPS: web.AppKey[list[RedisStartup]] = web.AppKey("redis_startups")
