"""The demo's handlers and their routes (added by ``create_app`` in sandbox mode only)."""

from __future__ import annotations

import uuid

import aiohttp
import orjson
from aiohttp import web

from gateway.appkeys import AUTH, DEMO_INBOX, HTTP_CLIENT, LIFECYCLE, SETTINGS, STORE
from gateway.demo.inbox import Inbox
from gateway.demo.links import (
    DEMO_MERCHANT,
    NOTIFICATIONS_PATH,
    RESULT_PATH,
    demo_key,
    demo_webhook,
    result_link,
    verify_session,
)
from gateway.demo.pages import render_error, render_result, render_shop
from gateway.domain.errors import NotFound
from gateway.examples import seed_request_json
from gateway.idempotency import session_id_for
from gateway.notifications.signing import SIGNATURE_HEADER
from gateway.settings import SettingsError

__all__ = ["DEMO_SCOPES", "setup_demo_routes"]

#: all the demo's token may do: create sessions (the result page reads the store itself)
DEMO_SCOPES = ["sessions:write"]
_TOKEN_TTL_SECONDS = 300
_PAYMENT_METHODS = ("card", "paypal")
_HTML_HEADERS = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=_HTML_HEADERS)


async def shop(request: web.Request) -> web.Response:
    """``GET /demo``: the basket, the Buy button and the notifications received."""
    settings = request.app[SETTINGS]
    received = request.app[DEMO_INBOX].latest()
    return _html(render_shop(received, lambda session_id: result_link(settings, session_id)))


async def buy(request: web.Request) -> web.StreamResponse:
    """``POST /demo/buy``: create a session through the public API, then open its page."""
    settings = request.app[SETTINGS]
    form = await request.post()
    method = form.get("paymentMethod", "card")
    if method not in _PAYMENT_METHODS:
        return _html(render_error("Unknown payment method", str(method)), 400)
    try:
        token = request.app[AUTH].issue(DEMO_MERCHANT, DEMO_SCOPES, _TOKEN_TTL_SECONDS)
    except SettingsError as exc:
        return _html(render_error("The demo cannot mint a token", str(exc)), 503)
    key = str(uuid.uuid4())
    back = result_link(settings, session_id_for(DEMO_MERCHANT, key))
    body = seed_request_json(
        order_reference=f"DEMO-{uuid.uuid4().hex[:12].upper()}",
        payment_method=str(method),
        success_url=back,
        failure_url=back,
    )
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Idempotency-Key": key,
    }
    url = f"{settings.base_url}/api/v1/sessions"
    try:
        async with request.app[HTTP_CLIENT].post(url, data=body, headers=headers) as answer:
            raw = await answer.read()
            status = answer.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        message = f"POST {url}: {type(exc).__name__}"
        return _html(render_error("The gateway could not be reached", message), 502)
    if status != 201:
        shown = raw.decode("utf-8", "replace")
        return _html(render_error(f"The gateway answered {status}", shown), 502)
    checkout_url = orjson.loads(raw)["checkoutUrl"]
    raise web.HTTPSeeOther(location=checkout_url)


async def result(request: web.Request) -> web.Response:
    """``GET /demo/result?session=&sig=``: one session's outcome (404 without its link)."""
    session_id = request.query.get("session", "")
    sig = request.query.get("sig", "")
    if not verify_session(demo_key(request.app[SETTINGS]), session_id, sig):
        raise NotFound("Session not found")
    record = await request.app[STORE].get_session(session_id)
    if record is None:
        raise NotFound("Session not found")
    record = await request.app[LIFECYCLE].expire_if_due(record)
    return _html(render_result(record, request.app[DEMO_INBOX].latest(session_id)))


async def receive(request: web.Request) -> web.Response:
    """``POST /demo/notifications``: the demo merchant's endpoint (a bad signature is a 401)."""
    body = await request.read()
    item = request.app[DEMO_INBOX].receive(request.headers.get(SIGNATURE_HEADER, ""), body)
    if not item.verified:
        return web.Response(status=401, text="signature not verified")
    return web.Response(text="ok")


def setup_demo_routes(app: web.Application) -> None:
    """Add the demo's routes; the caller adds them in sandbox mode only."""
    app[DEMO_INBOX] = Inbox(demo_webhook(app[SETTINGS]).secrets[0])
    app.router.add_get("/demo", shop)
    app.router.add_post("/demo/buy", buy)
    app.router.add_get(RESULT_PATH, result)
    app.router.add_post(NOTIFICATIONS_PATH, receive)
