"""Emulated PayPal calls after the checkout: vaulted charges, authorization capture and void,
capture refunds, and Vault v3 setup and payment tokens.

- ``POST /paypal/v2/checkout/orders`` with ``payment_source.paypal.vault_id``
  (:func:`charge_vaulted`): PayPal pays the order at once with the saved wallet: 201 with the
  order COMPLETED and its capture (or authorization). With the ``declineOffSession`` fault the
  capture is DECLINED (an authorization: 422 INSTRUMENT_DECLINED).
- ``POST /paypal/v2/payments/authorizations/{id}/capture``: full or partial (``amount``,
  ``final_capture``); 422 MAX_CAPTURE_AMOUNT_EXCEEDED, AUTHORIZATION_VOIDED,
  AUTHORIZATION_ALREADY_CAPTURED.
- ``POST /paypal/v2/payments/authorizations/{id}/void``: no ``PayPal-Request-Id`` (the spec has
  none); a second void answers 422 PREVIOUSLY_VOIDED, a captured one PREVIOUSLY_CAPTURED.
- ``POST /paypal/v2/payments/captures/{id}/refund``: full or partial; 422
  REFUND_AMOUNT_EXCEEDED, CAPTURE_FULLY_REFUNDED. The refund gets
  ``PayPalSandbox.refund_status`` (COMPLETED by default).
- ``POST /paypal/v3/vault/setup-tokens``: a setup token awaiting the payer (its ``approve`` link
  is the pay page, which says Save); the payer's Save sends VAULT.SETUP-TOKEN.APPROVED.
- ``POST /paypal/v3/vault/payment-tokens`` from an approved setup token (one payment token per
  setup token).

``PayPal-Request-Id`` works as for orders: the same id and body answers the first answer again
(a 201 as 200), the same id with another body 422 DUPLICATE_REQUEST_ID, one still running 409.
Each made payment, void and refund is followed by its webhook.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from gateway.domain.money import format_major
from providers.paypal.transformers import paypal_decimals
from providers.sandbox.paypal_api import (
    PROVIDER,
    _bearer_problem,
    _request_id_answer,
    _send_all,
    _with_query,
    paypal_sandbox,
)
from providers.sandbox.paypal_payments import (
    PaymentRecord,
    now_iso,
    payment_resource,
    paypal_id,
)
from providers.sandbox.paypal_rules import (
    PayPalError,
    check_money,
    check_order_units,
    error_body,
)
from providers.sandbox.state import SandboxSession, SandboxState

__all__ = ["charge_vaulted", "register"]

_SETUP_LIFETIME = timedelta(hours=3)
_Work = Callable[[], Awaitable[tuple[int, Any]]]


def _not_found(description: str) -> PayPalError:
    return PayPalError(404, "INVALID_RESOURCE_ID", "/", description)


def _error_response(exc: PayPalError) -> web.Response:
    if exc.status != 404:
        return exc.response()
    detail = {"issue": exc.issue, "description": exc.description}
    body = {**error_body(404), "name": "RESOURCE_NOT_FOUND", "details": [detail]}
    return web.Response(status=404, body=orjson.dumps(body), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not JSON.") from None
    if not isinstance(body, dict):
        raise PayPalError(400, "MALFORMED_REQUEST_JSON", "/", "Not an object.")
    return body


async def _once(
    state: SandboxState,
    request: web.Request,
    body: dict[str, Any],
    work: _Work,
    *,
    key_required: bool = False,
    claimed: tuple[str | None, str] | None = None,
) -> web.Response:
    """Run ``work`` under PayPal-Request-Id semantics, to its end even when the caller hangs
    up. ``work`` answers (status, JSON document or None for no body) or raises PayPalError (a
    refusal is not kept under the key). ``claimed``: the (key, fingerprint) the caller already
    checked."""
    if claimed is None:
        key = request.headers.get("PayPal-Request-Id")
        if key is None and key_required:
            return PayPalError(
                400, "MISSING_REQUIRED_PARAMETER", "PayPal-Request-Id", "Required."
            ).response()
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        fingerprint = hashlib.sha256(f"POST {request.path}:".encode() + canonical).hexdigest()
        earlier = _request_id_answer(state, key, fingerprint)
        if earlier is not None:
            return earlier
    else:
        key, fingerprint = claimed
    if key is not None:  # claimed before the work: a concurrent retry meets it in flight
        state.idempotency_begin(PROVIDER, key, fingerprint)

    async def run() -> web.Response:
        try:
            await state.processing_delay(PROVIDER)
            status, answer = await work()
        except PayPalError as exc:
            if key is not None:
                state.idempotency_abandon(PROVIDER, key)
            return _error_response(exc)
        except BaseException:
            if key is not None:
                state.idempotency_abandon(PROVIDER, key)
            raise
        raw = b"" if answer is None else orjson.dumps(answer)
        if key is not None:
            state.idempotency_finish(PROVIDER, key, status, raw)
        if answer is None:
            return web.Response(status=status)
        return web.Response(status=status, body=raw, content_type="application/json")

    return await state.detached(run())


def _representation(request: web.Request) -> bool:
    return request.headers.get("Prefer", "").strip().lower() == "return=representation"


def _minimal(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: resource[k] for k in ("id", "status", "links") if k in resource}


def _money(value: Decimal, currency: str) -> dict[str, str]:
    return {"currency_code": currency, "value": format_major(value, paypal_decimals(currency))}


def _asked_amount(
    body: dict[str, Any], record: PaymentRecord, mismatch_issue: str, where: str
) -> Decimal:
    """The amount a capture/refund asks for: ``amount`` (in the payment's currency), else what
    remains of the payment."""
    node = body.get("amount")
    if node is None:
        return record.remaining
    currency, value = check_money(node, "/amount")
    if currency != record.session.currency:
        raise PayPalError(422, mismatch_issue, "/amount/currency_code", "Currency differs.")
    if value <= 0:
        raise PayPalError(422, "CANNOT_BE_ZERO_OR_NEGATIVE", where, "Must be positive.")
    return value


def _later(state: SandboxState, session: SandboxSession, *events: tuple[str, str, Any]) -> None:
    pp = paypal_sandbox(state)
    state.send_later(
        PROVIDER,
        lambda: _send_all(state, session, list(events)),
        pp.payment_webhook_delay_seconds,
    )


def _payment(state: SandboxState, payment_id: str, kind: str) -> PaymentRecord:
    record = paypal_sandbox(state).payments.get(payment_id)
    if record is None or record.kind != kind:
        raise _not_found(f"Specified resource ID does not exist ({kind[:-1]}).")
    return record


async def charge_vaulted(
    state: SandboxState, request: web.Request, body: dict[str, Any], key: str | None, fp: str
) -> web.Response:
    """An order paid by a vaulted wallet (``payment_source.paypal.vault_id``), completed at once
    (the request id checks are the caller's)."""
    pp = paypal_sandbox(state)
    try:
        check_order_units(body)
    except PayPalError as exc:
        return exc.response()
    vault_id = str(body["payment_source"]["paypal"]["vault_id"])
    if vault_id not in pp.vault:
        return _error_response(_not_found("The vault_id is not a payment token of this payee."))

    async def work() -> tuple[int, Any]:
        intent = body["intent"]
        declined = state.fault(PROVIDER).decline_off_session
        where = "/payment_source/paypal/vault_id"
        if declined and intent == "AUTHORIZE":
            raise PayPalError(
                422, "INSTRUMENT_DECLINED", where, "The instrument presented was declined."
            )
        order_id = paypal_id()
        api = f"{state.public_base(request)}/sandbox/{PROVIDER}"
        units = [dict(unit) for unit in body["purchase_units"]]
        order: dict[str, Any] = {
            "id": order_id,
            "intent": intent,
            "status": "COMPLETED",
            "payment_source": {
                "paypal": {
                    "attributes": {
                        "vault": {"id": vault_id, "customer": {"id": pp.vault[vault_id]}}
                    }
                }
            },
            "purchase_units": units,
            "create_time": now_iso(),
            "links": [
                {"href": f"{api}/v2/checkout/orders/{order_id}", "rel": "self", "method": "GET"}
            ],
        }
        unit = units[0]
        session = SandboxSession(
            provider=PROVIDER,
            id=order_id,
            amount=str(unit["amount"]["value"]),
            currency=str(unit["amount"]["currency_code"]),
            success_url="",
            failure_url="",
            expires_at=datetime.now(UTC),
            status="paid",
            order_reference=unit.get("invoice_id"),
            metadata={"gatewaySessionId": unit["custom_id"]} if unit.get("custom_id") else {},
            raw_request=body,
            extra={"order": order, "api": api},
        )
        state.add_session(session)
        kind = "capture" if intent == "CAPTURE" else "authorization"
        status = ("DECLINED" if declined else "COMPLETED") if kind == "capture" else "CREATED"
        payment = payment_resource(session, kind, status)
        unit["payments"] = {f"{kind}s": [payment]}
        pp.remember(f"{kind}s", payment, session)
        pp.charges.append(order_id)
        event_type = {
            "COMPLETED": "PAYMENT.CAPTURE.COMPLETED",
            "DECLINED": "PAYMENT.CAPTURE.DECLINED",
            "CREATED": "PAYMENT.AUTHORIZATION.CREATED",
        }[status]
        _later(state, session, (event_type, kind, dict(payment)))
        return 201, order if _representation(request) else _minimal(order)

    return await _once(state, request, body, work, claimed=(key, fp))


def register(app: web.Application, state: SandboxState) -> None:
    """Add the payments API (authorization capture/void, capture refund) and the Vault v3
    setup/payment tokens to the sandbox app."""
    pp = paypal_sandbox(state)

    async def capture(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        try:
            body = await _body(request)
        except PayPalError as exc:
            return exc.response()
        authorization_id = request.match_info["id"]
        where = f"/v2/payments/authorizations/{authorization_id}/capture"

        async def work() -> tuple[int, Any]:
            record = _payment(state, authorization_id, "authorizations")
            status = record.resource["status"]
            if status == "VOIDED":
                raise PayPalError(422, "AUTHORIZATION_VOIDED", where, "It was voided.")
            if status == "CAPTURED":
                raise PayPalError(422, "AUTHORIZATION_ALREADY_CAPTURED", where, "Captured.")
            value = _asked_amount(body, record, "AUTH_CAPTURE_CURRENCY_MISMATCH", where)
            if value > record.remaining:
                raise PayPalError(422, "MAX_CAPTURE_AMOUNT_EXCEEDED", where, "Too much.")
            record.taken += value
            final = bool(body.get("final_capture")) or record.remaining == 0
            record.resource["status"] = "CAPTURED" if final else "PARTIALLY_CAPTURED"
            record.resource["update_time"] = now_iso()
            api = record.session.extra.get("api", "")
            capture_id = paypal_id()
            related = record.resource.get("supplementary_data", {}).get("related_ids", {})
            resource: dict[str, Any] = {
                "id": capture_id,
                "status": pp.capture_status,
                "amount": _money(value, record.session.currency),
                "final_capture": final,
                "supplementary_data": {
                    "related_ids": {**related, "authorization_id": authorization_id}
                },
                "create_time": now_iso(),
                "update_time": now_iso(),
                "links": [
                    {"href": f"{api}/v2/payments/captures/{capture_id}", "rel": "self"},
                    {"href": f"{api}/v2/payments/authorizations/{authorization_id}", "rel": "up"},
                ],
            }
            for name in ("custom_id", "invoice_id"):
                if record.resource.get(name):
                    resource[name] = record.resource[name]
            if pp.capture_status == "PENDING":
                resource["status_details"] = {"reason": "PENDING_REVIEW"}
            pp.remember("captures", resource, record.session)
            event = (
                f"PAYMENT.CAPTURE.{'PENDING' if pp.capture_status == 'PENDING' else 'COMPLETED'}"
            )
            _later(state, record.session, (event, "capture", dict(resource)))
            return 201, resource if _representation(request) else _minimal(resource)

        return await _once(state, request, body, work)

    async def void(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        authorization_id = request.match_info["id"]
        where = f"/v2/payments/authorizations/{authorization_id}/void"

        async def work() -> tuple[int, Any]:
            record = _payment(state, authorization_id, "authorizations")
            status = record.resource["status"]
            if status == "VOIDED":
                raise PayPalError(422, "PREVIOUSLY_VOIDED", where, "Voided already.")
            if status in ("CAPTURED", "PARTIALLY_CAPTURED"):
                raise PayPalError(422, "PREVIOUSLY_CAPTURED", where, "Captured already.")
            record.resource["status"] = "VOIDED"
            record.resource["update_time"] = now_iso()
            resource = dict(record.resource)
            _later(
                state, record.session, ("PAYMENT.AUTHORIZATION.VOIDED", "authorization", resource)
            )
            return (200, resource) if _representation(request) else (204, None)

        return await _once(state, request, {}, work)

    async def refund(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        try:
            body = await _body(request)
        except PayPalError as exc:
            return exc.response()
        capture_id = request.match_info["id"]
        where = f"/v2/payments/captures/{capture_id}/refund"

        async def work() -> tuple[int, Any]:
            record = _payment(state, capture_id, "captures")
            status = record.resource["status"]
            if status == "REFUNDED":
                raise PayPalError(422, "CAPTURE_FULLY_REFUNDED", where, "Refunded already.")
            if status == "PENDING":
                raise PayPalError(422, "PENDING_CAPTURE", where, "The capture is pending.")
            if status not in ("COMPLETED", "PARTIALLY_REFUNDED"):
                raise PayPalError(422, "REFUND_NOT_ALLOWED", where, "Cannot be refunded.")
            value = _asked_amount(body, record, "REFUND_CAPTURE_CURRENCY_MISMATCH", where)
            if value > record.remaining:
                raise PayPalError(422, "REFUND_AMOUNT_EXCEEDED", where, "More than remains.")
            api = record.session.extra.get("api", "")
            refund_id = paypal_id()
            resource: dict[str, Any] = {
                "id": refund_id,
                "status": pp.refund_status,
                "amount": _money(value, record.session.currency),
                "create_time": now_iso(),
                "update_time": now_iso(),
                "links": [
                    {"href": f"{api}/v2/payments/refunds/{refund_id}", "rel": "self"},
                    {"href": f"{api}/v2/payments/captures/{capture_id}", "rel": "up"},
                ],
            }
            for name in ("custom_id", "invoice_id", "note_to_payer"):
                if body.get(name):
                    resource[name] = body[name]
            if pp.refund_status in ("COMPLETED", "PENDING"):
                record.taken += value
                record.resource["status"] = (
                    "REFUNDED" if record.remaining == 0 else "PARTIALLY_REFUNDED"
                )
            pp.refunds.append(refund_id)
            event = {
                "COMPLETED": "PAYMENT.CAPTURE.REFUNDED",
                "PENDING": "PAYMENT.REFUND.PENDING",
            }.get(pp.refund_status, "PAYMENT.REFUND.FAILED")
            _later(state, record.session, (event, "refund", dict(resource)))
            return 201, resource if _representation(request) else _minimal(resource)

        return await _once(state, request, body, work)

    async def setup_token(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        try:
            body = await _body(request)
        except PayPalError as exc:
            return exc.response()
        key = request.headers.get("PayPal-Request-Id")

        async def work() -> tuple[int, Any]:
            wallet = (body.get("payment_source") or {}).get("paypal")
            if not isinstance(wallet, dict):
                raise PayPalError(
                    400,
                    "MISSING_REQUIRED_PARAMETER",
                    "/payment_source/paypal",
                    "The sandbox emulates PayPal wallet setup tokens only.",
                )
            context = wallet.get("experience_context") or {}
            return_url, cancel_url = context.get("return_url"), context.get("cancel_url")
            if not isinstance(return_url, str) or not isinstance(cancel_url, str):
                raise PayPalError(
                    400,
                    "MISSING_REQUIRED_PARAMETER",
                    "/payment_source/paypal/experience_context/return_url",
                    "The sandbox needs return_url and cancel_url.",
                )
            await state.creation_delay(PROVIDER, key)
            token_id = paypal_id(16)
            customer = (body.get("customer") or {}).get("id") or paypal_id(10)
            api = f"{state.public_base(request)}/sandbox/{PROVIDER}"
            token: dict[str, Any] = {
                "id": token_id,
                "customer": {"id": customer},
                "status": "PAYER_ACTION_REQUIRED",
                "payment_source": {
                    "paypal": {k: wallet[k] for k in ("usage_type", "customer_type") if k in wallet}
                },
                "links": [
                    {
                        "href": state.checkout_url(request, PROVIDER, token_id),
                        "rel": "approve",
                        "method": "GET",
                    },
                    {"href": f"{api}/v3/vault/setup-tokens/{token_id}", "rel": "self"},
                ],
            }
            state.add_session(
                SandboxSession(
                    provider=PROVIDER,
                    id=token_id,
                    amount="0",
                    currency="",
                    success_url=_with_query(
                        return_url, approval_token_id=token_id, approval_session_id=paypal_id()
                    ),
                    failure_url=_with_query(cancel_url, approval_token_id=token_id),
                    expires_at=datetime.now(UTC) + _SETUP_LIFETIME,
                    raw_request=body,
                    extra={"setup_token": token, "api": api},
                    saves_only=True,
                )
            )
            return 201, token

        return await _once(state, request, body, work, key_required=True)

    async def payment_token(request: web.Request) -> web.Response:
        refused = _bearer_problem(request, pp)
        if refused is not None:
            return refused
        try:
            body = await _body(request)
        except PayPalError as exc:
            return exc.response()

        async def work() -> tuple[int, Any]:
            source = (body.get("payment_source") or {}).get("token") or {}
            if source.get("type") != "SETUP_TOKEN" or not source.get("id"):
                raise PayPalError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "/payment_source/token/type",
                    "The sandbox makes payment tokens from setup tokens only.",
                )
            session = state.get_session(PROVIDER, str(source["id"]))
            setup = session.extra.get("setup_token") if session is not None else None
            if session is None or setup is None:
                raise _not_found("The setup token does not exist.")
            made = session.extra.get("payment_token")
            if made is not None:  # one payment token per setup token
                return 201, made
            if setup["status"] != "APPROVED":
                raise PayPalError(
                    422,
                    "SETUP_TOKEN_NOT_APPROVED",
                    "/payment_source/token/id",
                    "The payer has not approved the setup token.",
                )
            token_id = paypal_id(10).lower()
            customer = setup["customer"]["id"]
            api = session.extra.get("api", "")
            made = {
                "id": token_id,
                "customer": {"id": customer},
                "payment_source": {
                    "paypal": {
                        "email_address": "payer@example.com",
                        "usage_type": "MERCHANT",
                        "customer_type": "CONSUMER",
                    }
                },
                "links": [{"href": f"{api}/v3/vault/payment-tokens/{token_id}", "rel": "self"}],
            }
            setup["status"] = "VAULTED"
            session.extra["payment_token"] = made
            pp.vault[token_id] = customer
            return 201, made

        return await _once(state, request, body, work, key_required=True)

    base = f"/{PROVIDER}/v2/payments"
    app.router.add_post(f"{base}/authorizations/{{id}}/capture", capture)
    app.router.add_post(f"{base}/authorizations/{{id}}/void", void)
    app.router.add_post(f"{base}/captures/{{id}}/refund", refund)
    app.router.add_post(f"/{PROVIDER}/v3/vault/setup-tokens", setup_token)
    app.router.add_post(f"/{PROVIDER}/v3/vault/payment-tokens", payment_token)
