"""Liveness and readiness."""

from __future__ import annotations

import os
from typing import Any

import orjson
from aiohttp import web

from gateway.appkeys import COORDINATION, REDIS_STARTUPS, ROUTER, STORE, WORKER_STATE
from gateway.store.base import StoreUnavailable
from gateway.supervisor import read_worker_state

__all__ = ["setup_health_routes"]


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    """Ready: the record store answers, routing rules are loaded and, under ``--workers N``,
    all N workers are alive (503 with details otherwise). The coordination (circuits,
    statistics, rate limits) is reported but does not decide: without it the gateway still
    answers correctly (circuits read closed, limits let requests through). ``redis`` tells
    whether the Redis connection has started (:mod:`gateway.redis_startup`: topology checked,
    replicas to wait for resolved), its mode and durability warnings; it decides only when
    the records live there."""
    checks: dict[str, Any] = {}
    ready = True
    store = request.app.get(STORE)
    if store is None:
        checks["store"] = {"ok": False, "error": "not opened"}
        ready = False
    else:
        try:
            await store.ping()
            checks["store"] = {"ok": True, "backend": store.name}
        except StoreUnavailable as exc:
            checks["store"] = {"ok": False, "backend": store.name, "error": str(exc)[:200]}
            ready = False
    coordination = request.app.get(COORDINATION)
    if coordination is not None:
        try:
            await coordination.ping()
            checks["coordination"] = {"ok": True, "backend": coordination.name}
        except StoreUnavailable as exc:
            problem = str(exc)[:200]
            checks["coordination"] = {"ok": False, "backend": coordination.name, "error": problem}
    startups = request.app.get(REDIS_STARTUPS) or []
    if startups:
        started = all(s.started for s in startups)
        redis: dict[str, Any] = {
            "ok": started,
            "mode": startups[0].conn.mode,
            "waitReplicas": max(s.conn.wait_replicas for s in startups),
        }
        errors = [s.error for s in startups if not s.started and s.error]
        if errors:
            redis["error"] = errors[0]
        warnings = [w for s in startups for w in s.warnings]
        if warnings:
            redis["warnings"] = warnings
        checks["redis"] = redis
        if any(s.serves_records and not s.started for s in startups):
            ready = False
    router = request.app.get(ROUTER)
    if router is None:
        checks["rules"] = {"ok": False, "error": "not loaded"}
        ready = False
    else:
        rules: dict[str, Any] = {"ok": True, "version": router.rules_version}
        error = getattr(router, "last_reload_error", None)
        if error:
            rules["lastReloadError"] = error
        checks["rules"] = rules
    state_path = request.app.get(WORKER_STATE)
    if state_path is not None:
        state = read_worker_state(state_path)
        if state is None:
            checks["workers"] = {"ok": False, "error": "supervisor state unreadable"}
            ready = False
        else:
            ok = state.alive >= state.expected
            checks["workers"] = {
                "ok": ok,
                "expected": state.expected,
                "alive": state.alive,
                "restarts": state.restarts,
                "pids": state.pids,
                "answeredBy": os.getpid(),
            }
            ready = ready and ok
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return web.Response(
        status=200 if ready else 503, body=orjson.dumps(body), content_type="application/json"
    )


def setup_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
