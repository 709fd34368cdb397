"""``GET /metrics``: the Prometheus text exposition (all worker processes in multiprocess mode)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.metrics import CONTENT_TYPE, multiprocess_dir, render

__all__ = ["setup_metrics_routes"]


async def metrics(request: web.Request) -> web.Response:
    """Every metric; reading the other processes' files happens off the event loop."""
    body = await asyncio.to_thread(render) if multiprocess_dir() else render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def setup_metrics_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
