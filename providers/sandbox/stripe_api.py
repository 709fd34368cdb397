"""Stripe emulation: ``/stripe/v1/...`` close enough that the adapter cannot tell.

Implements Bearer (or Basic) secret-key auth, bracketed form bodies, Stripe's idempotency rules
on every POST (same key + same parameters replays the saved answer with
``Idempotent-Replayed: true``; other parameters -> 400 ``idempotency_error``; a concurrent
request with the key -> 409; answers that failed validation are not saved), errors in Stripe's
``{"error": {...}}`` shape, the ``checkout.session`` object (``mode`` payment or setup),
``/expire``, the PaymentIntent, SetupIntent and Refund calls of
:mod:`providers.sandbox.stripe_payments`, and signed webhooks (``checkout.session.*``,
``payment_intent.*``, ``refund.updated``, ``charge.refunded``), delivered in order.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from providers.sandbox.state import SandboxSession, SandboxState
from providers.sandbox.stripe_payments import (
    cancel_intent,
    capture_intent,
    charge_object,
    create_intent,
    create_refund,
    intent_of,
    ledger,
    record_hosted_payment,
    refunds_of,
    setup_intent_of,
)
from providers.sandbox.stripe_wire import (
    StripeError,
    create_object,
    decode_form,
    payment_intent_object,
    session_object,
    token,
    validate_params,
)
from providers.stripe.transformers import STRIPE_API_VERSION, stripe_exponent
from providers.stripe.webhooks import sign_payload

__all__ = ["error_body", "notify", "register"]

PROVIDER = "stripe"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Stripe's error body, for faults the sandbox injects.

    The pinned spec's error ``type`` enum has no ``rate_limit_error``: a 429 is an
    ``invalid_request_error`` with code ``rate_limit``.
    """
    kind = "invalid_request_error" if status == 429 else "api_error"
    code = "rate_limit" if status == 429 else None
    body: dict[str, Any] = {"type": kind, "message": message}
    if code:
        body["code"] = code
    return {"error": body}


def _answer(status: int, payload: Any, extra: dict[str, str] | None = None) -> web.Response:
    headers = {"Request-Id": token("req_", 14), "Stripe-Version": STRIPE_API_VERSION}
    headers.update(extra or {})
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def _error(exc: StripeError) -> web.Response:
    return _answer(exc.status, {"error": exc.body})


def _authorised(request: web.Request, api_key: str) -> bool:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return secrets.compare_digest(auth[7:].strip(), api_key)
    if auth.startswith("Basic "):
        try:
            user = base64.b64decode(auth[6:]).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user, api_key)
    return False


#: a POST handler behind :meth:`_Api._idempotent`: (request, form body) -> answer
_Action = Callable[[web.Request, str], Awaitable[web.Response]]


def _fingerprint(request: web.Request, body: str) -> str:
    pairs = sorted(parse_qsl(body, keep_blank_values=True))
    canon = orjson.dumps([request.method, request.path, pairs])
    return hashlib.sha256(canon).hexdigest()


class _Events:
    """Signed Stripe events, delivered one after the other in the order they were made (a
    capture's event never overtakes the authorization's), after the answer that caused them."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._last: asyncio.Future[None] | None = None

    def send(self, event_type: str, obj: dict[str, Any]) -> None:
        """Deliver ``obj`` as it is now as an event of ``event_type``."""
        body = orjson.dumps(_event(event_type, obj))

        async def deliver() -> None:
            await _post_event(self.state, body)

        self.later(deliver)

    def later(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` after every step queued before it has finished (or failed)."""
        previous = self._last
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last = done

        async def run() -> None:
            try:
                if previous is not None:
                    await asyncio.shield(previous)
                await step()
            finally:
                if not done.done():
                    done.set_result(None)

        self.state.send_later(PROVIDER, run)


class _Api:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.events = _Events(state)
        state.extensions[f"{PROVIDER}_events"] = self.events

    def _check_auth(self, request: web.Request) -> None:
        if not _authorised(request, self.state.config.secret(PROVIDER, "api_key")):
            raise StripeError(401, "Invalid API Key provided.", code="api_key_invalid")

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/checkout/sessions``."""
        return await self._idempotent(request, self._create)

    async def _idempotent(self, request: web.Request, action: _Action) -> web.Response:
        """Authenticate, read the form body and run ``action`` under Stripe's idempotency
        rules (the ``Idempotency-Key`` header)."""
        try:
            self._check_auth(request)
            if request.content_type != "application/x-www-form-urlencoded":
                raise StripeError(400, "Request body must be application/x-www-form-urlencoded")
            body = (await request.read()).decode("utf-8")
        except StripeError as exc:
            return _error(exc)
        except UnicodeDecodeError:
            return _error(StripeError(400, "Request body is not valid UTF-8"))
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return await action(request, body)
        if len(key) > 255:
            return _error(
                StripeError(400, "Idempotency-Key is too long (max 255)", type_="idempotency_error")
            )
        fingerprint = _fingerprint(request, body)
        record = self.state.idempotency_get(PROVIDER, key)
        if record is not None:
            if record.in_flight:
                return _error(
                    StripeError(
                        409,
                        "There is currently another in-progress request "
                        "using this Idempotent Key (that probably means you submitted "
                        "twice, and the other request is still going through): "
                        f"{key}. Please try again later.",
                        type_="idempotency_error",
                        code="idempotency_key_in_use",
                    )
                )
            if record.fingerprint != fingerprint:
                return _error(
                    StripeError(
                        400,
                        "Keys for idempotent requests can only be used "
                        "with the same parameters they were first used with. Try using a "
                        "key other than "
                        f"'{key}' if you meant to execute a different request.",
                        type_="idempotency_error",
                    )
                )
            assert record.status is not None
            assert record.body is not None
            return web.Response(
                status=record.status,
                body=record.body,
                content_type="application/json",
                headers={**record.headers, "Idempotent-Replayed": "true"},
            )
        self.state.idempotency_begin(PROVIDER, key, fingerprint)
        return await self.state.detached(self._keyed(request, body, key, action))

    async def _keyed(
        self, request: web.Request, body: str, key: str, action: _Action
    ) -> web.Response:
        try:
            response = await action(request, body)
        except BaseException:
            self.state.idempotency_abandon(PROVIDER, key)
            raise
        if response.status == 400:  # failed validation: nothing saved, may be retried
            self.state.idempotency_abandon(PROVIDER, key)
        else:
            assert isinstance(response.body, bytes)
            self.state.idempotency_finish(
                PROVIDER,
                key,
                response.status,
                response.body,
                {
                    "Request-Id": response.headers["Request-Id"],
                    "Stripe-Version": STRIPE_API_VERSION,
                    "Idempotency-Key": key,
                },
            )
        response.headers["Idempotency-Key"] = key
        return response

    async def _create(self, request: web.Request, body: str) -> web.Response:
        await self.state.processing_delay(PROVIDER)
        now = int(time.time())
        try:
            params = decode_form(body)
            validate_params(params, now)
            session_id = token("cs_test_a1", 56)
            url = self.state.checkout_url(request, PROVIDER, session_id)
            obj = create_object(session_id, params, url, now)
        except StripeError as exc:
            return _error(exc)
        self.state.add_session(
            SandboxSession(
                provider=PROVIDER,
                id=session_id,
                amount=obj["amount_total"] or 0,
                currency=obj["currency"],
                success_url=str(params["success_url"]),
                failure_url=str(params.get("cancel_url") or params["success_url"]),
                expires_at=datetime.fromtimestamp(obj["expires_at"], UTC),
                order_reference=params.get("client_reference_id"),
                metadata=dict(obj["metadata"]),
                raw_request=params,
                minor_exponent=stripe_exponent(obj["currency"]),
                extra={"object": obj},
                saves_only=obj["mode"] == "setup",
            )
        )
        return _answer(200, obj)

    def _session(self, request: web.Request) -> SandboxSession:
        session = self.state.get_session(PROVIDER, request.match_info["id"])
        if session is None:
            raise StripeError(
                404,
                f"No such checkout.session: '{request.match_info['id']}'",
                code="resource_missing",
                param="session",
            )
        return session

    async def retrieve(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
            return _answer(200, session_object(self._session(request)))
        except StripeError as exc:
            return _error(exc)

    async def payment_intent(self, request: web.Request) -> web.Response:
        """``GET /v1/payment_intents/{id}``: of the ledger, or of a declined checkout."""
        try:
            self._check_auth(request)
            wanted = request.match_info["id"]
            found = ledger(self.state).intents.get(wanted)
            if found is not None:
                return _answer(200, found)
            for session in self.state.sessions.get(PROVIDER, {}).values():
                if session.extra.get("payment_intent") == wanted:
                    return _answer(200, payment_intent_object(session))
            return _answer(200, intent_of(self.state, wanted))
        except StripeError as exc:
            return _error(exc)

    async def setup_intent(self, request: web.Request) -> web.Response:
        """``GET /v1/setup_intents/{id}`` of a completed setup session."""
        try:
            self._check_auth(request)
            return _answer(200, setup_intent_of(self.state, request.match_info["id"]))
        except StripeError as exc:
            return _error(exc)

    # after the checkout ---------------------------------------------------------------------

    async def _run(
        self, work: Callable[[dict[str, Any]], dict[str, Any]], body: str
    ) -> web.Response:
        await self.state.processing_delay(PROVIDER)
        try:
            return _answer(200, work(decode_form(body)))
        except StripeError as exc:
            return _error(exc)

    async def create_intent(self, request: web.Request) -> web.Response:
        """``POST /v1/payment_intents`` (confirm, off_session)."""

        async def act(request: web.Request, body: str) -> web.Response:
            return await self._run(lambda p: create_intent(self.state, p, self.events.send), body)

        return await self._idempotent(request, act)

    async def capture(self, request: web.Request) -> web.Response:
        """``POST /v1/payment_intents/{id}/capture``."""
        intent = request.match_info["id"]

        async def act(request: web.Request, body: str) -> web.Response:
            return await self._run(
                lambda p: capture_intent(self.state, intent, p, self.events.send), body
            )

        return await self._idempotent(request, act)

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/payment_intents/{id}/cancel``."""
        intent = request.match_info["id"]

        async def act(request: web.Request, body: str) -> web.Response:
            return await self._run(
                lambda p: cancel_intent(self.state, intent, p, self.events.send), body
            )

        return await self._idempotent(request, act)

    async def refund(self, request: web.Request) -> web.Response:
        """``POST /v1/refunds``: pending now; it succeeds a moment later (by webhook)."""

        async def act(request: web.Request, body: str) -> web.Response:
            return await self._run(lambda p: create_refund(self.state, p, self._settle), body)

        return await self._idempotent(request, act)

    def _settle(self, refund: dict[str, Any]) -> None:
        """Let a pending refund succeed after the answer, and report it."""
        state = self.state

        async def settle() -> None:
            stored = ledger(state).refunds[refund["id"]]
            stored["status"] = "succeeded"
            intent = ledger(state).intents[stored["payment_intent"]]
            self.events.send("refund.updated", stored)
            self.events.send(
                "charge.refunded", charge_object(intent, refunds_of(state, intent["id"]))
            )

        self.events.later(settle)

    async def expire(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
            session = self._session(request)
            if session.status != "open" or session.is_expired():
                raise StripeError(
                    400,
                    'Only Checkout Sessions with a status in ["open"] can be expired.',
                )
        except StripeError as exc:
            return _error(exc)
        await self.state.finish(session, "expired")
        return _answer(200, session_object(session))


def register(app: web.Application, state: SandboxState) -> None:
    """Add the Stripe routes under ``/stripe/v1/...``."""
    api = _Api(state)
    app.router.add_get("/stripe/v1/payment_intents/{id}", api.payment_intent)
    app.router.add_get("/stripe/v1/setup_intents/{id}", api.setup_intent)
    app.router.add_post("/stripe/v1/payment_intents", api.create_intent)
    app.router.add_post("/stripe/v1/payment_intents/{id}/capture", api.capture)
    app.router.add_post("/stripe/v1/payment_intents/{id}/cancel", api.cancel)
    app.router.add_post("/stripe/v1/refunds", api.refund)
    app.router.add_post("/stripe/v1/checkout/sessions", api.create)
    app.router.add_get("/stripe/v1/checkout/sessions/{id}", api.retrieve)
    app.router.add_post("/stripe/v1/checkout/sessions/{id}/expire", api.expire)


_EVENT_TYPES = {
    "paid": "checkout.session.completed",
    "declined": "checkout.session.async_payment_failed",
    "cancelled": "checkout.session.expired",
    "expired": "checkout.session.expired",
}


def _event(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": token("evt_test_"),
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def event_payload(session: SandboxSession, outcome: str) -> dict[str, Any]:
    """The Stripe event the sandbox sends for ``outcome``."""
    return _event(_EVENT_TYPES[outcome], session_object(session))


async def _post_event(state: SandboxState, body: bytes) -> None:
    timestamp = int(time.time())
    signature = sign_payload(state.config.secret(PROVIDER, "webhook_secret"), timestamp, body)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": f"t={timestamp},v1={signature}",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    await state.send_webhook(PROVIDER, body, headers)


async def notify(state: SandboxState, session: SandboxSession, outcome: str) -> None:
    """Sign (``Stripe-Signature``) and POST the event for ``outcome`` to the gateway.

    Stripe has no "cancelled" session event: a cancelled (abandoned) session is expired, as a
    merchant's cancel page would do with ``/expire``, and ``checkout.session.expired`` is sent.
    A paid session's PaymentIntent (or a saved setup's SetupIntent) is recorded first; an
    authorization for a manual capture is then reported by
    ``payment_intent.amount_capturable_updated``, after the session's own event.
    """
    follow = record_hosted_payment(state, session) if outcome == "paid" else []
    await _post_event(state, orjson.dumps(event_payload(session, outcome)))
    intent_id = session.extra.get("payment_intent")
    for event_type in follow:
        intent = ledger(state).intents.get(str(intent_id))
        if intent is not None:
            await _post_event(state, orjson.dumps(_event(event_type, intent)))
