"""``create_app(settings)``: wiring only. Resources are opened and closed in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.api.health import setup_health_routes
from gateway.api.metrics import setup_metrics_routes
from gateway.api.openapi import setup_openapi_routes
from gateway.api.payments import setup_payment_routes
from gateway.api.routing import setup_routing_routes
from gateway.api.sessions import setup_session_routes
from gateway.api.webhooks import setup_webhook_routes
from gateway.appkeys import (
    ADAPTERS,
    AUTH,
    COORDINATION,
    HTTP_CLIENT,
    LIFECYCLE,
    MERCHANTS,
    RATE_LIMITS,
    REDIS_STARTUPS,
    RETURN_WAITERS,
    ROUTER,
    SERVICES,
    SETTINGS,
    STORE,
)
from gateway.auth import Authenticator
from gateway.background import drain
from gateway.circuit import CircuitBreakers, CircuitPolicy
from gateway.lifecycle import LifecycleService
from gateway.metrics import configure_merchant_labels
from gateway.middleware import request_context_middleware
from gateway.notifications.delivery import DeliveryPolicy, DeliveryWorker
from gateway.notifications.events import Notifier
from gateway.notifications.merchants import load_merchants
from gateway.redis_startup import RedisStartup
from gateway.retention import run_retention
from gateway.routing.service import Router, enabled_providers
from gateway.sessions import SessionService
from gateway.settings import Settings, SettingsError
from gateway.store.base import RecordStore
from gateway.store.coordination import Coordination, open_coordination
from gateway.store.redis_conn import RedisConn
from gateway.store.timing import instrument_coordination, instrument_store
from providers.base import ProviderAdapter
from providers.http import new_client_session
from providers.registry import build_adapter

__all__ = ["check_startup", "create_app", "open_backends", "open_store"]

log = logging.getLogger("gateway.app")


def check_startup(settings: Settings) -> list[str]:
    """Validate everything that must stop start-up; returns the enabled providers.

    Raises :class:`SettingsError` with a message that says what to set.
    """
    problem = settings.jwt_key_problem()
    if problem:
        raise SettingsError(problem)
    if settings.workers > 1:
        _check_shared(settings)
    providers = enabled_providers(settings.rules_path)
    for name in providers:
        settings.provider(name)
    return providers


def _check_shared(settings: Settings) -> None:
    """Several worker processes need every piece of state shared between them."""
    # each process would hold its own idempotency records and sessions, or its own circuits,
    # statistics and rate-limit buckets
    local: list[str] = []
    fixes: list[str] = []
    if settings.store == "memory":
        local.append("GATEWAY_STORE=memory")
        fixes.append("GATEWAY_STORE=redis (or postgres)")
    if settings.coordination_backend == "memory":
        local.append("GATEWAY_COORDINATION=memory")
        fixes.append("GATEWAY_COORDINATION=redis")
    if local:
        raise SettingsError(
            f"GATEWAY_WORKERS > 1 needs state shared by every process, but {' and '.join(local)} "
            f"lives in one process: set {' and '.join(fixes)}"
        )


def open_store(settings: Settings, *, conn: RedisConn | None = None) -> RecordStore:
    """The configured record store (not yet started). A Redis store uses ``conn`` when given
    (it stays the caller's to close), else opens and owns one of its own
    (:func:`~gateway.store.redis_client.open_redis`)."""
    if settings.store == "redis":
        from gateway.store.redis import RedisStore
        from gateway.store.redis_client import open_redis

        opened_here = conn is None
        return RedisStore(
            conn if conn is not None else open_redis(settings),
            settings.redis_prefix,
            owns_conn=opened_here,
            order_ttl_s=settings.session_retention_seconds,
        )
    if settings.store == "postgres":
        from gateway.store.postgres import PostgresSettings, PostgresStore

        return PostgresStore(PostgresSettings.from_settings(settings))
    from gateway.store.memory import MemoryStore

    return MemoryStore()


def open_backends(settings: Settings) -> tuple[RecordStore, Coordination]:
    """The configured records and coordination. When both are in Redis they share one
    connection (one pool, :func:`~gateway.store.redis_client.open_redis`): the coordination
    closes it, so close the store first."""
    shared: RedisConn | None = None
    if settings.store == "redis" and settings.coordination_backend == "redis":
        from gateway.store.redis_client import open_redis

        shared = open_redis(settings)
    return (
        open_store(settings, conn=shared),
        open_coordination(settings, conn=shared),
    )


def create_app(
    settings: Settings,
    *,
    store: RecordStore | None = None,
    coordination: Coordination | None = None,
) -> web.Application:
    """The gateway application. ``store`` and ``coordination`` override the configured ones
    (tests); they stay the caller's to close."""
    providers = check_startup(settings)
    app = web.Application(
        middlewares=[request_context_middleware], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app[AUTH] = Authenticator(settings)
    configure_merchant_labels(m.strip() for m in settings.metrics_merchants.split(",") if m.strip())

    async def resources(app: web.Application) -> AsyncIterator[None]:
        if store is None and coordination is None:
            records, coordinated = open_backends(settings)
        else:
            records = store if store is not None else open_store(settings)
            coordinated = coordination if coordination is not None else open_coordination(settings)
        opened = instrument_store(records)
        http = new_client_session()
        app[STORE] = opened
        app[COORDINATION] = instrument_coordination(coordinated)
        app[HTTP_CLIENT] = http
        app[REDIS_STARTUPS] = []
        try:
            async with _wired(app, records, opened, app[COORDINATION], http):
                yield
        finally:
            # also when start-up failed half-way: no client session or pool is left open (the
            # store first: the coordination closes a Redis connection they share)
            for startup in app[REDIS_STARTUPS]:
                await startup.close()
            await http.close()
            if store is None:
                await opened.close()
            if coordination is None:
                await coordinated.close()

    @contextlib.asynccontextmanager
    async def _wired(
        app: web.Application,
        raw: RecordStore,
        opened: RecordStore,
        coordinated: Coordination,
        http: aiohttp.ClientSession,
    ) -> AsyncIterator[None]:
        await _start_backends(app, settings, raw, coordinated)
        app[RATE_LIMITS] = coordinated.buckets
        adapters: dict[str, ProviderAdapter] = {
            name: build_adapter(settings.provider(name), http) for name in providers
        }
        app[ADAPTERS] = adapters
        router = Router.from_settings(settings, adapters, coordinated.stats)
        circuits = CircuitBreakers(
            coordinated.circuits,
            list(adapters),
            CircuitPolicy(
                threshold=settings.circuit_failure_threshold,
                window_seconds=settings.circuit_window_seconds,
                open_seconds=settings.circuit_open_seconds,
                half_open_probes=settings.circuit_half_open_probes,
            ),
        )
        lifecycle = LifecycleService(
            settings, opened, adapters, router, Notifier(app[MERCHANTS]), circuits
        )
        app[LIFECYCLE] = lifecycle
        app[SERVICES] = SessionService(settings, opened, router, adapters, circuits, lifecycle)
        async with router.running(), circuits.running():
            app[ROUTER] = router
            try:
                yield
            finally:
                await app[SERVICES].close(settings.provider_timeout_seconds)

    app[MERCHANTS] = load_merchants(
        settings.merchants_path,
        allow_http_localhost=settings.is_sandbox,
        required="merchants_path" in settings.model_fields_set,
    )
    app[RETURN_WAITERS] = asyncio.Semaphore(settings.return_page_max_waiting)
    if settings.is_sandbox:
        from gateway.demo import DEMO_MERCHANT, demo_webhook, setup_demo_routes

        if DEMO_MERCHANT not in app[MERCHANTS].webhooks:  # a configured one wins
            hooks = {**app[MERCHANTS].webhooks, DEMO_MERCHANT: demo_webhook(settings)}
            app[MERCHANTS] = dataclasses.replace(app[MERCHANTS], webhooks=hooks)
        setup_demo_routes(app)
    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(_lifecycle_tasks)
    setup_health_routes(app)
    setup_metrics_routes(app)
    setup_openapi_routes(app)
    setup_session_routes(app)
    setup_payment_routes(app)
    setup_routing_routes(app)
    setup_webhook_routes(app)
    if settings.is_sandbox and settings.sandbox_embedded:
        from providers.sandbox.app import create_sandbox_app
        from providers.sandbox.state import SandboxConfig

        app.add_subapp(
            "/sandbox",
            create_sandbox_app(
                SandboxConfig(public_url=settings.base_url, gateway_base_url=settings.base_url)
            ),
        )
    return app


async def _start_backends(
    app: web.Application, settings: Settings, store: RecordStore, coordination: Coordination
) -> None:
    """Before the server listens: start each Redis connection once (:mod:`gateway.
    redis_startup`: connect, check, durability warnings, then warm the pool; retried in the
    background while Redis is down) and warm the other pools, so a burst right after start
    does not open them all at once; a backend that is down is only logged."""
    store_conn: RedisConn | None = getattr(store, "conn", None)
    conns: list[RedisConn] = []
    for conn in (store_conn, coordination.conn):
        if conn is not None and all(conn is not seen for seen in conns):
            conns.append(conn)
    for conn in conns:
        startup = RedisStartup(
            conn,
            warm_connections=settings.redis_warm_connections,
            serves_records=conn is store_conn,
        )
        app[REDIS_STARTUPS].append(startup)
        await startup.start()
    warm = getattr(store, "warm_up", None)
    if store_conn is None and warm is not None:
        opened = await warm()
        log.info("store connection pool warmed: %d connections open", opened)


async def _lifecycle_tasks(app: web.Application) -> AsyncIterator[None]:
    """The expiry sweeper (which also retries owed captures), the notification delivery
    worker, the orphan clean-up and the retention purge, for the app's life; on the way out,
    running capture calls may finish."""
    settings = app[SETTINGS]
    policy = DeliveryPolicy(
        max_attempts=settings.notification_max_attempts,
        backoff_base_s=settings.notification_backoff_base_seconds,
        backoff_max_s=settings.notification_backoff_max_seconds,
        timeout_s=settings.notification_timeout_seconds,
        poll_interval_s=settings.notification_poll_interval_seconds,
        lease_s=settings.notification_lease_seconds,
    )
    async with aiohttp.ClientSession() as http:
        worker = DeliveryWorker(app[STORE], app[MERCHANTS], http, policy)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(app[LIFECYCLE].run_sweeper(stop), name="expiry-sweeper"),
            asyncio.create_task(worker.run(stop), name="notification-delivery"),
            asyncio.create_task(
                app[SERVICES].orphans.run(stop, settings.expiry_sweep_interval_seconds),
                name="orphan-cleanup",
            ),
            asyncio.create_task(
                run_retention(
                    app[STORE],
                    stop,
                    interval_s=settings.retention_interval_seconds,
                    batch=settings.retention_batch_size,
                ),
                name="retention",
            ),
        ]
        try:
            yield
        finally:
            # let a round in progress finish (never cut a store call in half), then stop
            stop.set()
            await app[LIFECYCLE].completions.close(settings.provider_timeout_seconds)
            await drain(tasks, policy.timeout_s + 5)
