"""Emulated PayPal REST API: OAuth2 tokens, Orders v2 create/get/capture/authorize and webhook
verification, close enough that :class:`providers.paypal.PayPalAdapter` cannot tell.

- ``POST /paypal/v1/oauth2/token``: Basic client credentials, ``grant_type=client_credentials``.
- ``POST /paypal/v2/checkout/orders``: Bearer token (401 with issue INVALID_TOKEN otherwise);
  ``PayPal-Request-Id`` answers 201 first and 200 with the same order on a replay; the same id
  with a different body is refused (422 DUPLICATE_REQUEST_ID).
- ``POST /paypal/v2/checkout/orders/{id}/capture`` and ``/authorize``: Bearer token, body ``{}``
  (or empty), ``PayPal-Request-Id`` idempotency as above (a replay answers 200 with the first
  answer, a decline included); the order rules are :func:`~providers.sandbox.paypal_payments.
  complete_order`'s. After a capture PayPal's payment webhook follows (in the background,
  ``PayPalSandbox.payment_webhook_delay_seconds`` later).
- ``POST /paypal/v1/notifications/verify-webhook-signature``: SUCCESS only for a transmission
  this sandbox really sent, with the same headers, webhook id and event.

The calls after the checkout (vaulted charges, authorization capture and void, refunds, Vault
v3 tokens) are :mod:`providers.sandbox.paypal_operations`.

``notify`` sends what PayPal sends when the payer acts on the pay page: Pay and Decline both
*approve* the order (CHECKOUT.ORDER.APPROVED; no money moves until the merchant captures, and a
payer who declined gets a declined capture), Cancel and expiry void it (CHECKOUT.ORDER.VOIDED).
For a setup token, Save approves it (VAULT.SETUP-TOKEN.APPROVED); anything else sends nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from aiohttp import web

from providers.paypal.transformers import REQUEST_ID_MAX
from providers.sandbox.paypal_payments import PaymentRecord, complete_order, now_iso, paypal_id
from providers.sandbox.paypal_rules import (
    PayPalError,
    check_order,
    check_verify_request,
    error_body,
)
from providers.sandbox.state import SandboxSession, SandboxState

__all__ = ["PayPalSandbox", "error_body", "notify", "paypal_sandbox", "register"]

PROVIDER = "paypal"
_ORDER_LIFETIME = timedelta(hours=3)


@dataclass(frozen=True, slots=True)
class Transmission:
    """One webhook delivery as sent: what its headers said and the event it carried."""

    time: str
    sig: str
    cert_url: str
    auth_algo: str
    webhook_id: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CompletionCall:
    """A capture or authorization the emulator really made (replays are not counted)."""

    order_id: str
    action: str
    request_id: str | None
    status: str


@dataclass(slots=True)
class PayPalSandbox:
    """The emulator's own state: issued tokens, sent transmissions, captures and authorizations
    made, and test knobs for the capture/authorize calls."""

    token_lifetime_seconds: int = 32_400
    tokens: dict[str, datetime] = field(default_factory=dict)
    token_requests: int = 0
    transmissions: dict[str, Transmission] = field(default_factory=dict)
    completions: list[CompletionCall] = field(default_factory=list)
    #: the next this-many capture/authorize calls answer 500 without doing anything
    fail_completions: int = 0
    #: the next this-many capture/authorize calls do their work, then answer 500 (the answer
    #: is lost; a retry with the same PayPal-Request-Id gets the first answer again)
    lose_completion_answers: int = 0
    #: how long after a capture/authorization its webhook is sent
    payment_webhook_delay_seconds: float = 0.2
    #: authorizations and captures by id (for the payments API: capture, void, refund)
    payments: dict[str, PaymentRecord] = field(default_factory=dict)
    #: vaulted wallets by payment token / vault id: their vault customer id
    vault: dict[str, str] = field(default_factory=dict)
    #: ids of the orders made by vaulted (payer-absent) charges, and of the refunds made
    charges: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)
    #: the status a new refund gets (COMPLETED, PENDING, FAILED), and a new authorization capture
    refund_status: str = "COMPLETED"
    capture_status: str = "COMPLETED"

    def remember(self, kind: str, resource: dict[str, Any], session: SandboxSession) -> None:
        """Keep an authorization or capture the emulator made, for the payments API."""
        value = str((resource.get("amount") or {}).get("value", "0"))
        self.payments[resource["id"]] = PaymentRecord(kind, resource, session, Decimal(value))

    def revoke_tokens(self) -> None:
        """Invalidate every issued token (as if they had expired)."""
        self.tokens.clear()


def paypal_sandbox(state: SandboxState) -> PayPalSandbox:
    """The PayPal emulator state kept on ``state``."""
    found = state.extensions.get(PROVIDER)
    if not isinstance(found, PayPalSandbox):
        found = state.extensions[PROVIDER] = PayPalSandbox()
    return found


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _bearer_problem(request: web.Request, pp: PayPalSandbox) -> web.Response | None:
    auth = request.headers.get("Authorization", "")
    token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
    expires = pp.tokens.get(token)
    if expires is not None and datetime.now(UTC) < expires:
        return None
    detail = {"issue": "INVALID_TOKEN", "description": "The access token is invalid or expired."}
    return _json(error_body(401, details=[detail]), 401)


async def _complete(
    state: SandboxState,
    session: SandboxSession,
    action: str,
    key: str | None,
    representation: bool,
) -> tuple[int, bytes]:
    """Capture or authorize under the idempotency claim of ``key`` (taken by the caller):
    the (status, body) answer.

    A refusal before anything was done (order not approved, ...) keeps no record of ``key``;
    a made payment or a decline is final and replayed to a retry with the same key.
    """
    pp = paypal_sandbox(state)
    try:
        await state.processing_delay(PROVIDER)
        done = complete_order(session, action)
    except BaseException as exc:
        if key is not None:
            state.idempotency_abandon(PROVIDER, key)
        if isinstance(exc, PayPalError):
            return exc.status, exc.body()
        raise
    if done.refusal is not None:
        status, answer = done.refusal.status, done.refusal.body()
    else:
        status = 201
        answer = orjson.dumps(done.order if representation else _minimal(done.order))
    if key is not None:
        state.idempotency_finish(PROVIDER, key, status, answer)
    pp.completions.append(CompletionCall(session.id, action, key, done.status))
    if done.refusal is None:
        for kind, entries in done.order["purchase_units"][0].get("payments", {}).items():
            for entry in entries:
                pp.remember(kind, entry, session)
        if "vault_id" in session.extra:  # the wallet was vaulted with the payment
            pp.vault[session.extra["vault_id"]] = session.extra["vault_customer"]
    state.send_later(
        PROVIDER, lambda: _send_all(state, session, done.events), pp.payment_webhook_delay_seconds
    )
    return status, answer


def _order_not_found() -> web.Response:
    detail = {"issue": "INVALID_RESOURCE_ID", "description": "Order not found."}
    return _json({**error_body(404), "name": "RESOURCE_NOT_FOUND", "details": [detail]}, 404)


def _minimal(order: dict[str, Any]) -> dict[str, Any]:
    """A completed order as ``Prefer: return=minimal`` shows it: its payments, not its items."""
    units = [
        {"reference_id": unit.get("reference_id"), "payments": unit.get("payments", {})}
        for unit in order["purchase_units"]
    ]
    minimal = {"id": order["id"], "status": order["status"], "purchase_units": units}
    if "payment_source" in order:
        minimal["payment_source"] = order["payment_source"]
    return {**minimal, "links": order["links"]}


def _with_query(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def _request_id_answer(
    state: SandboxState, key: str | None, fingerprint: str
) -> web.Response | None:
    """PayPal-Request-Id semantics: a bad id, a request still running (409), the same id with
    another body (422), or the first answer again (a 201 replays as 200); None for a new id."""
    if key is None:
        return None
    if not 0 < len(key) <= REQUEST_ID_MAX:
        return PayPalError(
            400, "INVALID_STRING_LENGTH", "PayPal-Request-Id", f"1 to {REQUEST_ID_MAX}."
        ).response()
    record = state.idempotency_get(PROVIDER, key)
    if record is None:
        return None
    if record.in_flight:
        detail = {"issue": "REQUEST_IN_PROGRESS", "description": "Retry shortly."}
        return _json({**error_body(409), "name": "RESOURCE_CONFLICT", "details": [detail]}, 409)
    if record.fingerprint != fingerprint or record.body is None:
        return PayPalError(
            422,
            "DUPLICATE_REQUEST_ID",
            "PayPal-Request-Id",
            "The PayPal-Request-Id was already used with a different request.",
        ).response()
    replayed = 200 if record.status in (None, 201) else record.status
    return web.Response(status=replayed, body=record.body, content_type="application/json")


def register(app: web.Application, state: SandboxState) -> None:
    """Add PayPal's token, orders and webhook-verification routes to the sandbox app."""
    pp = paypal_sandbox(state)

    async def token(request: web.Request) -> web.Response:
        pp.token_requests += 1
        auth = request.headers.get("Authorization", "")
        try:
            decoded = base64.b64decode(auth.removeprefix("Basic "), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        expected = (
            f"{state.config.secret(PROVIDER, 'client_id')}:"
            f"{state.config.secret(PROVIDER, 'client_secret')}"
        )
        if not auth.startswith("Basic ") or not hmac.compare_digest(
            decoded.encode(), expected.encode()
        ):
            return _json(
                {"error": "invalid_client", "error_description": "Client Authentication failed"},
                401,
            )
        form = parse_qs((await request.read()).decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            return _json(
                {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"},
                400,
            )
        access = "A21AA" + secrets.token_urlsafe(48)
        pp.tokens[access] = datetime.now(UTC) + timedelta(seconds=pp.token_lifetime_seconds)
        return _json(
            {
                "scope": "https://uri.paypal.com/services/payments/payment",
                "access_token": access,
                "token_type": "Bearer",
                "app_id": "APP-SANDBOX",
                "expires_in": pp.token_lifetime_seconds,
                "nonce": f"{now_iso()}{secrets.token_urlsafe(12)}",
            }
        )

    async def create_order(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not JSON.").response()
        if not isinstance(body, dict):
            return PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not an object.").response()
        key = request.headers.get("PayPal-Request-Id")
        fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        earlier = _request_id_answer(state, key, fingerprint)
        if earlier is not None:
            return earlier
        wallet = (body.get("payment_source") or {}).get("paypal")
        if isinstance(wallet, dict) and wallet.get("vault_id"):
            # the payer is absent: PayPal pays the order with the saved wallet at once
            from providers.sandbox.paypal_operations import charge_vaulted

            return await charge_vaulted(state, request, body, key, fingerprint)
        try:
            return_url, cancel_url = check_order(body)
        except PayPalError as exc:
            return exc.response()
        if key is not None:  # claimed before the work: a concurrent retry meets it in flight
            state.idempotency_begin(PROVIDER, key, fingerprint)

        async def work() -> web.Response:
            # runs to its end even when the caller hangs up (see SandboxState.detached)
            await state.creation_delay(PROVIDER, key)
            order_id = paypal_id()
            api = f"{state.public_base(request)}/sandbox/{PROVIDER}"
            action = "payer-action" if "payment_source" in body else "approve"
            order = {
                "id": order_id,
                "intent": body["intent"],
                "status": "PAYER_ACTION_REQUIRED" if action == "payer-action" else "CREATED",
                **({"payment_source": {"paypal": {}}} if action == "payer-action" else {}),
                "purchase_units": body["purchase_units"],
                "create_time": now_iso(),
                "links": [
                    {
                        "href": f"{api}/v2/checkout/orders/{order_id}",
                        "rel": "self",
                        "method": "GET",
                    },
                    {
                        "href": state.checkout_url(request, PROVIDER, order_id),
                        "rel": action,
                        "method": "GET",
                    },
                ],
            }
            unit = body["purchase_units"][0]
            state.add_session(
                SandboxSession(
                    provider=PROVIDER,
                    id=order_id,
                    amount=str(unit["amount"]["value"]),
                    currency=str(unit["amount"]["currency_code"]),
                    success_url=_with_query(return_url, token=order_id, PayerID=paypal_id(13)),
                    failure_url=_with_query(cancel_url, token=order_id),
                    expires_at=datetime.now(UTC) + _ORDER_LIFETIME,
                    order_reference=unit.get("invoice_id"),
                    metadata={"gatewaySessionId": unit["custom_id"]}
                    if unit.get("custom_id")
                    else {},
                    raw_request=body,
                    extra={"order": order, "api": api},
                )
            )
            minimal = {k: order[k] for k in ("id", "status", "links")}
            prefer = request.headers.get("Prefer", "return=minimal").strip().lower()
            raw = orjson.dumps(order if prefer == "return=representation" else minimal)
            if key is not None:
                state.idempotency_finish(PROVIDER, key, 201, raw)
            return web.Response(status=201, body=raw, content_type="application/json")

        return await state.detached(work())

    async def get_order(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        session = state.get_session(PROVIDER, request.match_info["id"])
        if session is None:
            return _order_not_found()
        return _json(session.extra["order"])

    async def complete(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        session = state.get_session(PROVIDER, request.match_info["id"])
        if session is None:
            return _order_not_found()
        action = request.match_info["action"]
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            return PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not JSON.").response()
        if not isinstance(body, dict):
            return PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not an object.").response()
        key = request.headers.get("PayPal-Request-Id")
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        fingerprint = hashlib.sha256(f"{action}:{session.id}:".encode() + canonical).hexdigest()
        earlier = _request_id_answer(state, key, fingerprint)
        if earlier is not None:
            return earlier
        if pp.fail_completions > 0:
            pp.fail_completions -= 1
            return _json(error_body(500), 500)
        prefer = request.headers.get("Prefer", "return=minimal").strip().lower()
        if key is not None:  # claimed before the work: a concurrent retry meets it in flight
            state.idempotency_begin(PROVIDER, key, fingerprint)
        # PayPal finishes a capture whose caller gave up waiting: the work is not cancelled
        # with this handler, and a retry with the same request id meets it or its answer
        work = asyncio.ensure_future(
            _complete(state, session, action, key, prefer == "return=representation")
        )
        state.background.add(work)
        work.add_done_callback(state.background.discard)
        status, answer = await asyncio.shield(work)
        if pp.lose_completion_answers > 0:
            pp.lose_completion_answers -= 1
            return _json(error_body(500), 500)
        return web.Response(status=status, body=answer, content_type="application/json")

    async def verify(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
            check_verify_request(body)
        except orjson.JSONDecodeError:
            return PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not JSON.").response()
        except PayPalError as exc:
            return exc.response()
        sent = pp.transmissions.get(body["transmission_id"])
        genuine = sent is not None and (
            hmac.compare_digest(sent.sig, body["transmission_sig"])
            and (sent.time, sent.cert_url, sent.auth_algo, sent.webhook_id, sent.event)
            == (
                body["transmission_time"],
                body["cert_url"],
                body["auth_algo"],
                body["webhook_id"],
                body["webhook_event"],
            )
        )
        return _json({"verification_status": "SUCCESS" if genuine else "FAILURE"})

    app.router.add_post(f"/{PROVIDER}/v1/oauth2/token", token)
    app.router.add_post(f"/{PROVIDER}/v2/checkout/orders", create_order)
    app.router.add_get(f"/{PROVIDER}/v2/checkout/orders/{{id}}", get_order)
    app.router.add_post(
        f"/{PROVIDER}/v2/checkout/orders/{{id}}/{{action:capture|authorize}}", complete
    )
    app.router.add_post(f"/{PROVIDER}/v1/notifications/verify-webhook-signature", verify)
    # the calls after the checkout live in their own module, which builds on this one
    from providers.sandbox import paypal_operations

    paypal_operations.register(app, state)


def events_for(session: SandboxSession, outcome: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(event_type, resource_type, resource) PayPal sends for ``outcome``, in order.

    Updates the stored order's status as PayPal would. Pay and Decline only approve the order:
    the merchant's capture (or authorization) call moves the money, or fails for a payer who
    declined (:func:`~providers.sandbox.paypal_payments.complete_order`).
    """
    setup = session.extra.get("setup_token")
    if setup is not None:  # a setup token: only the payer's Save says anything
        if outcome != "paid":
            return []
        setup["status"] = "APPROVED"
        return [("VAULT.SETUP-TOKEN.APPROVED", "setup-token", dict(setup))]
    order = session.extra["order"]
    if outcome in ("cancelled", "expired"):
        order["status"] = "VOIDED"
        return [("CHECKOUT.ORDER.VOIDED", "checkout-order", dict(order))]
    order["status"] = "APPROVED"
    return [("CHECKOUT.ORDER.APPROVED", "checkout-order", dict(order))]


async def send_event(
    state: SandboxState, session: SandboxSession, event_type: str, kind: str, resource: Any
) -> None:
    """Sign, remember and POST one webhook event to the gateway."""
    api = session.extra.get("api", "")
    event_id = f"WH-{paypal_id()}-{paypal_id()}"
    event = {
        "id": event_id,
        "event_version": "1.0",
        "create_time": now_iso(),
        "resource_type": kind,
        "resource_version": "2.0",
        "event_type": event_type,
        "summary": event_type.replace(".", " ").lower(),
        "resource": resource,
        "links": [
            {"href": f"{api}/v1/notifications/webhooks-events/{event_id}", "rel": "self"},
        ],
    }
    body = orjson.dumps(event)
    webhook_id = state.config.secret(PROVIDER, "webhook_id")
    transmission_id = str(uuid.uuid4())
    sent_at = now_iso()
    message = f"{transmission_id}|{sent_at}|{webhook_id}|{zlib.crc32(body)}"
    key = state.config.secret(PROVIDER, "client_secret").encode()
    signature = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
    cert_url = f"{api}/v1/notifications/certs/CERT-SANDBOX-0001"
    paypal_sandbox(state).transmissions[transmission_id] = Transmission(
        sent_at, signature, cert_url, "SHA256withRSA", webhook_id, orjson.loads(body)
    )
    headers = {
        "Content-Type": "application/json",
        "PAYPAL-TRANSMISSION-ID": transmission_id,
        "PAYPAL-TRANSMISSION-TIME": sent_at,
        "PAYPAL-TRANSMISSION-SIG": signature,
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
    }
    await state.send_webhook(PROVIDER, body, headers)


async def _send_all(
    state: SandboxState, session: SandboxSession, events: list[tuple[str, str, dict[str, Any]]]
) -> None:
    for event_type, kind, resource in events:
        await send_event(state, session, event_type, kind, resource)


async def notify(state: SandboxState, session: SandboxSession, outcome: str) -> None:
    """POST PayPal's webhook events for ``outcome`` of ``session`` to the gateway, in order."""
    await _send_all(state, session, events_for(session, outcome))
