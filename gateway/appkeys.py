"""Typed application keys: every long-lived object the handlers reach, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import aiohttp

    from gateway.auth import Authenticator
    from gateway.settings import Settings
    from gateway.store.base import Store
    from providers.base import ProviderAdapter

__all__ = ["ADAPTERS", "AUTH", "HTTP_CLIENT", "ROUTER", "SERVICES", "SETTINGS", "STORE"]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORE: web.AppKey[Store] = web.AppKey("store")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
HTTP_CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("http_client")
ADAPTERS: web.AppKey[dict[str, ProviderAdapter]] = web.AppKey("adapters")
#: the routing service (gateway.routing.service.Router)
ROUTER: web.AppKey[Any] = web.AppKey("router")
#: the session service (gateway.sessions.SessionService)
SERVICES: web.AppKey[Any] = web.AppKey("services")
