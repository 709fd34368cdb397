"""The sandbox application: emulated provider APIs, the hosted pay page and a fault admin.

Mounted by the gateway at ``/sandbox`` (``app.add_subapp("/sandbox", create_sandbox_app(cfg))``);
``gateway sandbox`` serves :func:`create_sandbox_root`, which mounts it at ``/sandbox`` as well, so
every URL is the same either way::

    /sandbox/{provider}/...                        emulated provider APIs (faults apply here)
    GET  /sandbox/pay/{provider}/{id}              hosted pay page (the checkoutUrl)
    POST /sandbox/pay/{provider}/{id}/{action}     action = pay | decline | cancel -> 303
    POST /sandbox/admin/faults                     {provider, latencyMs, errorRate, ...}
    GET  /sandbox/admin/faults                     every provider's faults
    DELETE /sandbox/admin/faults[?provider=name]   back to the start-up faults
    GET  /sandbox/admin/stats                      {"sessionsCreated": {provider: n}, ...}
    POST /sandbox/admin/sessions/{provider}/{id}/expire   expire now and send the webhook

A provider module (``stripe_api``, ``adyen_api``, ``paypal_api``) exposes
``register(app, state)``, ``async notify(state, session, outcome)`` and optionally
``error_body(status, message) -> dict`` (the provider's error shape for injected faults).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from string import Template
from types import ModuleType
from typing import Any, Protocol, cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from providers.sandbox.state import (
    SANDBOX_STATE,
    FaultSettings,
    SandboxConfig,
    SandboxSession,
    SandboxState,
)

__all__ = [
    "PROVIDER_MODULES",
    "ProviderEmulator",
    "create_sandbox_app",
    "create_sandbox_root",
    "loaded_emulators",
]

_log = logging.getLogger("providers.sandbox")

#: The emulated providers: name -> module. A listed module that does not exist yet is skipped,
#: so plugging a provider in is this one line plus its module.
PROVIDER_MODULES: dict[str, str] = {
    "stripe": "providers.sandbox.stripe_api",
    "adyen": "providers.sandbox.adyen_api",
    "paypal": "providers.sandbox.paypal_api",
}

_LABELS = {"stripe": "Stripe", "adyen": "Adyen", "paypal": "PayPal"}
_ACTIONS = {"pay": "paid", "decline": "declined", "cancel": "cancelled"}
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ProviderEmulator(Protocol):
    """What a provider module of the sandbox exposes."""

    def register(self, app: web.Application, state: SandboxState) -> None:
        """Add the provider's API routes (under ``/{provider}/...``) to the sandbox app."""
        ...

    async def notify(self, state: SandboxState, session: SandboxSession, outcome: str) -> None:
        """Send the provider's signed webhook for ``outcome`` to the gateway."""
        ...


def loaded_emulators() -> dict[str, ModuleType]:
    """The provider modules of :data:`PROVIDER_MODULES` that exist, by provider name."""
    loaded: dict[str, ModuleType] = {}
    for provider, module_name in PROVIDER_MODULES.items():
        try:
            loaded[provider] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # the module exists but one of its own imports is missing
    return loaded


def create_sandbox_app(config: SandboxConfig | None = None) -> web.Application:
    """The sandbox sub-application, to be mounted at ``/sandbox``."""
    state = SandboxState(config or SandboxConfig())
    emulators = loaded_emulators()
    app = web.Application(middlewares=[_fault_middleware(state, emulators)])
    app[SANDBOX_STATE] = state
    for provider, module in emulators.items():
        emulator = cast(ProviderEmulator, module)
        emulator.register(app, state)
        state.notifiers[provider] = emulator.notify
    page = Template(resources.files("providers.sandbox").joinpath("pay_page.html").read_text())
    pages = _PayPages(state, page)
    app.router.add_get("/pay/{provider}/{id}", pages.show)
    app.router.add_post("/pay/{provider}/{id}/{action}", pages.act)
    admin = _Admin(state, emulators)
    app.router.add_post("/admin/faults", admin.set_faults)
    app.router.add_get("/admin/faults", admin.get_faults)
    app.router.add_delete("/admin/faults", admin.reset_faults)
    app.router.add_get("/admin/stats", admin.stats)
    app.router.add_post("/admin/sessions/{provider}/{id}/expire", admin.expire)
    app.cleanup_ctx.append(_lifecycle)
    return app


def create_sandbox_root(config: SandboxConfig | None = None) -> web.Application:
    """A root application serving only the sandbox, mounted at ``/sandbox``."""
    root = web.Application()
    root.add_subapp("/sandbox", create_sandbox_app(config))
    return root


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    import aiohttp

    state = app[SANDBOX_STATE]
    state.client = aiohttp.ClientSession()
    sweeper = None
    if state.config.expiry_sweep_seconds > 0:
        sweeper = asyncio.create_task(_sweep_expired(state))
    try:
        yield
    finally:
        pending = list(state.background)
        if sweeper is not None:
            pending.append(sweeper)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.client.close()
        state.client = None


async def _sweep_expired(state: SandboxState) -> None:
    while True:
        await asyncio.sleep(state.config.expiry_sweep_seconds)
        for session in state.due_for_expiry():
            await state.finish(session, "expired")


# faults -------------------------------------------------------------------------------------


def _provider_of(path: str, emulators: dict[str, ModuleType]) -> str | None:
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "sandbox":
        parts = parts[1:]
    if parts and parts[0] in emulators:
        return parts[0]
    return None


def _fault_middleware(state: SandboxState, emulators: dict[str, ModuleType]) -> Middleware:
    @web.middleware
    async def faults(request: web.Request, handler: _Handler) -> web.StreamResponse:
        provider = _provider_of(request.path, emulators)
        fault = state.faults.get(provider) if provider else None
        if provider is None or fault is None or not fault.active:
            return await handler(request)
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.down:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never delivered: the connection is gone
        if fault.timeout:
            await _hold_until_client_leaves(request, state.config.timeout_fault_max_seconds)
            return web.Response(status=504)
        if fault.rate_limit_rate and state.rng.random() < fault.rate_limit_rate:
            return _fault_answer(
                emulators[provider], 429, "Too many requests", fault.retry_after_seconds
            )
        if fault.error_rate and state.rng.random() < fault.error_rate:
            return _fault_answer(emulators[provider], 500, "Internal error (injected)", None)
        return await handler(request)

    return faults


async def _hold_until_client_leaves(request: web.Request, limit: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.02)


def _fault_answer(
    module: ModuleType, status: int, message: str, retry_after: int | None
) -> web.Response:
    error_body = getattr(module, "error_body", None)
    body: Any = (
        error_body(status, message)
        if callable(error_body)
        else {"status": status, "message": message}
    )
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


class _Admin:
    def __init__(self, state: SandboxState, emulators: dict[str, ModuleType]) -> None:
        self.state = state
        self.providers = sorted(set(emulators) | set(PROVIDER_MODULES))

    def _all(self) -> dict[str, Any]:
        return {p: self.state.fault(p).to_json() for p in self.providers}

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json({"error": "body must be JSON"}, 400)
        if not isinstance(data, dict) or data.get("provider") not in self.providers:
            return _json({"error": f"provider must be one of {', '.join(self.providers)}"}, 400)
        try:
            settings = FaultSettings.from_json(data)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        self.state.set_fault(data["provider"], settings)
        _log.info("sandbox faults set provider=%s %s", data["provider"], settings.to_json())
        return _json({data["provider"]: settings.to_json()})

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(self._all())

    async def reset_faults(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider")
        if provider is None:
            self.state.reset_faults()
        elif provider in self.providers:
            initial = self.state.config.faults.get(provider)
            self.state.faults.pop(provider, None)
            if initial is not None:
                self.state.set_fault(provider, initial.copy())
        else:
            return _json({"error": f"unknown provider {provider!r}"}, 400)
        return _json(self._all())

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.state.stats())

    async def expire(self, request: web.Request) -> web.Response:
        session = self.state.get_session(request.match_info["provider"], request.match_info["id"])
        if session is None:
            return _json({"error": "no such session"}, 404)
        changed = await self.state.finish(session, "expired")
        return _json({"id": session.id, "status": session.status, "changed": changed})


# pay page -----------------------------------------------------------------------------------


def _label(session: SandboxSession, action: str) -> str:
    """A pay page button's text: a setup session's "pay" saves the method."""
    return "Save" if action == "pay" and session.saves_only else action.capitalize()


class _PayPages:
    def __init__(self, state: SandboxState, page: Template) -> None:
        self.state = state
        self.page = page

    def _render(self, session: SandboxSession, actions: str, status: int) -> web.Response:
        label = _LABELS.get(session.provider, session.provider)
        text = self.page.substitute(
            title=html.escape(f"{label} sandbox checkout"),
            provider_label=html.escape(label),
            amount=html.escape(session.display_amount()),
            currency=html.escape(session.currency.upper()),
            order_reference=html.escape(session.order_reference or "-"),
            session_id=html.escape(session.id),
            status=html.escape(session.status),
            actions=actions,
        )
        return web.Response(
            status=status,
            text=text,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"},
        )

    def _session(self, request: web.Request) -> SandboxSession:
        session = self.state.get_session(request.match_info["provider"], request.match_info["id"])
        if session is None:
            raise web.HTTPNotFound(text="No such checkout session")
        return session

    async def show(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session.is_expired():
            notice = '<p class="notice" id="expired">This checkout session has expired.</p>'
            return self._render(session, notice, 410)
        if session.status != "open":
            notice = f'<p class="notice" id="finished">This checkout session is already \
{html.escape(session.status)}.</p>'
            return self._render(session, notice, 409)
        base = html.escape(f"{request.path.rstrip('/')}/", quote=True)
        forms = "".join(
            f'<form method="post" action="{base}{action}">'
            f'<button type="submit" id="{action}">{_label(session, action)}</button></form>'
            for action in _ACTIONS
        )
        return self._render(session, f'<div class="actions">{forms}</div>', 200)

    async def act(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        outcome = _ACTIONS.get(request.match_info["action"])
        if outcome is None:
            raise web.HTTPNotFound(text="Unknown action")
        if session.is_expired():
            if session.status == "open":
                await self.state.finish(session, "expired")
            return await self.show(request)
        if session.status != "open":
            return await self.show(request)
        await self.state.finish(session, outcome)
        target = session.success_url if outcome == "paid" else session.failure_url
        raise web.HTTPSeeOther(location=target)
