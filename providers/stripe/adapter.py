"""The Stripe adapter: hosted Checkout Sessions and ``Stripe-Signature`` verified webhooks.

Requests are form-encoded with bracketed keys, authenticated with ``Authorization: Bearer``,
pinned to ``Stripe-Version: 2026-09-30.endive`` (the version of the contract in
``tests/specs/``) and carry the gateway's per-provider idempotency key. The wire conversions live
in :mod:`providers.stripe.transformers`; HTTP failures are mapped by :mod:`providers.http`.

Webhooks: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is
HMAC-SHA256 (key: the endpoint secret) over ``"<t>." + raw body``. Any matching ``v1`` is
accepted; a timestamp more than 300 s away from now is refused (replay protection).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson

from gateway.domain.session import SessionStatus
from providers.base import (
    Capabilities,
    CreateSessionInput,
    FlowNotSupported,
    ProviderEvent,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderSession,
    ProviderUnavailable,
    RequestExpired,
    WebhookAnswer,
    WebhookVerificationError,
)
from providers.http import ProviderHttp
from providers.stripe.transformers import (
    AUTOMATIC_CAPTURE_ONLY,
    IDEMPOTENCY_KEY_MAX,
    METHOD_CURRENCIES,
    STRIPE_API_VERSION,
    STRIPE_PAYMENT_METHODS,
    amount_problem,
    build_create_params,
    encode_form,
    from_stripe_minor,
)
from providers.wire import bounded_key, header

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest
    from gateway.settings import ProviderConfig

__all__ = [
    "SIGNATURE_TOLERANCE_SECONDS",
    "STRIPE_CAPABILITIES",
    "StripeAdapter",
    "event_from_payload",
    "sign_payload",
    "verify_signature",
]

SIGNATURE_TOLERANCE_SECONDS = 300

#: Any ISO 4217 currency Stripe's table knows (``None``); per-method limits (iDEAL and SEPA in
#: EUR, Klarna in its markets) are checked by :meth:`StripeAdapter.eligibility_problem`.
STRIPE_CAPABILITIES = Capabilities(
    payment_methods=frozenset(STRIPE_PAYMENT_METHODS),
    currencies=None,
    session_types=frozenset({"one_time", "first_in_series"}),
    cancels_sessions=True,
)

#: checkout.session event type -> lifecycle status (``completed`` depends on payment_status).
_EVENT_STATUS: dict[str, SessionStatus] = {
    "checkout.session.async_payment_succeeded": SessionStatus.COMPLETED,
    "checkout.session.async_payment_failed": SessionStatus.FAILED,
    "checkout.session.expired": SessionStatus.EXPIRED,
}


def sign_payload(secret: str, timestamp: int, raw_body: bytes) -> str:
    """The hex ``v1`` signature of ``raw_body`` sent at ``timestamp``."""
    signed = str(timestamp).encode() + b"." + raw_body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    signature_header: str,
    raw_body: bytes,
    *,
    now: float,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> int:
    """Check a ``Stripe-Signature`` header against ``raw_body``; returns its timestamp.

    Accepts when any ``v1`` matches (constant-time compare) and the timestamp is within
    ``tolerance`` seconds of ``now`` (either side); raises WebhookVerificationError otherwise.
    """
    timestamp, signatures = _parse_signature_header(signature_header)
    if abs(now - timestamp) > tolerance:
        raise WebhookVerificationError("stripe", "signature timestamp outside tolerance")
    expected = sign_payload(secret, timestamp, raw_body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookVerificationError("stripe", "no matching v1 signature")
    return timestamp


def _id_of(value: Any) -> str | None:
    """An expandable field: an id string, or an expanded object's ``id``."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _status(event_type: str, session: Mapping[str, Any]) -> SessionStatus | None:
    if event_type == "checkout.session.completed":
        # paid = money is there; unpaid (async methods) or no_payment_required stay pending.
        paid = session.get("payment_status") == "paid"
        return SessionStatus.COMPLETED if paid else SessionStatus.PROCESSING
    return _EVENT_STATUS.get(event_type)


def event_from_payload(payload: Mapping[str, Any]) -> ProviderEvent:
    """Map a verified Stripe event onto a :class:`ProviderEvent`."""
    event_id, event_type = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        raise WebhookVerificationError("stripe", "event lacks id or type")
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    obj = obj if isinstance(obj, Mapping) else {}
    is_session = obj.get("object") == "checkout.session"
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)
    intent = obj.get("payment_intent")
    payment_method = _id_of(intent.get("payment_method")) if isinstance(intent, Mapping) else None
    created = payload.get("created")
    extra = {
        key: str(value)
        for key, value in (
            ("payment_status", obj.get("payment_status")),
            ("payment_intent", _id_of(intent)),
            ("order_reference", metadata.get("order_reference")),
            ("saved_method", metadata.get("gateway_saved_method")),
            ("livemode", payload.get("livemode")),
        )
        if value is not None
    }
    failure = "async_payment_failed" if event_type.endswith("async_payment_failed") else None
    money = from_stripe_minor(obj.get("amount_total"), obj.get("currency")) if is_session else None
    return ProviderEvent(
        provider="stripe",
        event_id=event_id,
        event_type=event_type,
        reference=_id_of(obj.get("id")) if is_session else None,
        session_id=str(metadata["gateway_session_id"])
        if isinstance(metadata.get("gateway_session_id"), str)
        else None,
        status=_status(event_type, obj) if is_session else None,
        occurred_at=datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None,
        failure_reason=failure,
        customer_id=_id_of(obj.get("customer")),
        payment_id=_id_of(intent),
        payment_method_id=payment_method,
        extra=extra,
        amount=money[0] if money else None,
        currency=money[1] if money else None,
    )


class StripeAdapter:
    """Stripe Checkout (hosted page) behind the :class:`providers.base.ProviderAdapter` seam."""

    name = "stripe"
    capabilities = STRIPE_CAPABILITIES
    #: bounds the PaymentIntent lookup a saved-method webhook needs
    webhook_lookup_timeout = 10.0

    def __init__(
        self,
        config: ProviderConfig,
        http: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._http = ProviderHttp(self.name, http)
        self._clock = clock

    def _headers(self, idempotency_key: str) -> dict[str, str]:
        if not self.config.api_key:
            raise FlowNotSupported(self.name, "no Stripe API key configured")
        return {
            "Authorization": f"Bearer {self.config.api_key}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Stripe-Version": STRIPE_API_VERSION,
            "Idempotency-Key": bounded_key(idempotency_key, IDEMPOTENCY_KEY_MAX),
        }

    @staticmethod
    def eligibility_problem(request: CheckoutRequest) -> str | None:
        """Why Stripe cannot take ``request`` (checked before any HTTP call), or None."""
        method = request.paymentMethod
        if method not in STRIPE_PAYMENT_METHODS:
            return f"payment method {method!r} is not offered through Stripe"
        allowed = METHOD_CURRENCIES.get(method)
        if allowed is not None and request.currency not in allowed:
            return f"Stripe offers {method} only in {', '.join(sorted(allowed))}"
        if request.captureMethod == "manual" and method in AUTOMATIC_CAPTURE_ONLY:
            return f"Stripe cannot capture {method} payments manually"
        amounts = [request.amount.total, request.amount.shipping, request.amount.tax]
        amounts += [item.unitPrice for item in request.lines]
        return amount_problem(request.currency, amounts)

    async def create_session(
        self,
        data: CreateSessionInput,
        *,
        timeout: float,
    ) -> ProviderSession:
        """``POST /v1/checkout/sessions``; idempotent through ``Idempotency-Key``."""
        problem = self.eligibility_problem(data.request)
        if problem:
            raise FlowNotSupported(self.name, problem)
        now = data.created_at or datetime.fromtimestamp(self._clock(), UTC)
        try:
            params = build_create_params(data, now)
        except ValueError as exc:
            raise FlowNotSupported(self.name, str(exc)) from None
        try:
            result = await self._http.request(
                "POST",
                f"{self.config.base_url}/v1/checkout/sessions",
                timeout=timeout,
                headers=self._headers(data.idempotency_key),
                data=encode_form(params),
                operation="create_session",
                request_id=data.request_id,
            )
        except ProviderRejected as exc:
            if exc.code == "idempotency_key_in_use" or exc.code == "idempotency_error":
                in_flight = exc.code == "idempotency_key_in_use"
                raise ProviderKeyConflict(self.name, exc.reason, in_flight=in_flight) from exc
            if exc.status == 400 and exc.issue == "expires_at":
                raise RequestExpired(self.name, exc.reason, exc.status, exc.code) from exc
            raise
        payload = self._object(result.body, result.status)
        session_id, url = payload.get("id"), payload.get("url")
        if not isinstance(session_id, str) or not isinstance(url, str):
            raise ProviderUnavailable(self.name, "session answer lacks id or url", result.status)
        expires = payload.get("expires_at")
        return ProviderSession(
            provider=self.name,
            reference=session_id,
            checkout_url=url,
            expires_at=datetime.fromtimestamp(expires, UTC) if isinstance(expires, int) else None,
            raw_status=payload.get("status") if isinstance(payload.get("status"), str) else None,
        )

    async def cancel_session(
        self,
        reference: str,
        *,
        timeout: float,
    ) -> None:
        """``POST /v1/checkout/sessions/{id}/expire``: the session can no longer be paid.

        Stripe refuses (400, ProviderRejected) when the session is no longer open.
        """
        await self._http.request(
            "POST",
            f"{self.config.base_url}/v1/checkout/sessions/{quote(reference, safe='')}/expire",
            timeout=timeout,
            headers=self._headers(f"expire:{reference}"),
            data="",
            operation="cancel_session",
        )

    async def parse_webhook(
        self, headers: Mapping[str, str], raw_body: bytes
    ) -> list[ProviderEvent]:
        """Verify ``Stripe-Signature`` over the raw body and map the event."""
        secret = self.config.webhook_secret
        if not secret:
            raise WebhookVerificationError(self.name, "no webhook secret configured")
        value = header(headers, "Stripe-Signature")
        if not value:
            raise WebhookVerificationError(self.name, "missing Stripe-Signature header")
        verify_signature(secret, value, raw_body, now=self._clock())
        try:
            payload = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            raise WebhookVerificationError(self.name, "body is not JSON") from None
        if not isinstance(payload, dict):
            raise WebhookVerificationError(self.name, "body is not a JSON object")
        event = event_from_payload(payload)
        wanted = event.extra.get("saved_method") and event.customer_id
        if wanted and event.payment_method_id is None and event.payment_id:
            method = await self._payment_method_of(event.payment_id)
            event = replace(event, payment_method_id=method)
        return [event]

    async def _payment_method_of(self, intent_id: str) -> str | None:
        """``GET /v1/payment_intents/{id}``: the (saved) payment method of a PaymentIntent.

        Checkout Session events name the PaymentIntent only; a failure here is retryable
        (the webhook answers 503 and Stripe sends it again).
        """
        result = await self._http.request(
            "GET",
            f"{self.config.base_url}/v1/payment_intents/{quote(intent_id, safe='')}",
            timeout=self.webhook_lookup_timeout,
            headers={
                "Authorization": f"Bearer {self.config.api_key}",
                "Stripe-Version": STRIPE_API_VERSION,
            },
        )
        return _id_of(self._object(result.body, result.status).get("payment_method"))

    def webhook_answer(self) -> WebhookAnswer:
        """Stripe only needs a 2xx; it shows the body in the dashboard."""
        return WebhookAnswer(200, b'{"received":true}', "application/json")

    def _object(self, body: bytes, status: int) -> dict[str, Any]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            raise ProviderUnavailable(self.name, "answer is not a JSON object", status)
        return payload


#: a Unix time of at most 12 ASCII digits: int() alone takes 4,000 digits (and Unicode digits),
#: and a number that large cannot be compared with the clock
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-fA-F]{1,128}")


def _parse_signature_header(value: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures; any malformed part is a verification error."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            continue
        item = item.strip()
        if key == "t":
            if not _TIMESTAMP.fullmatch(item):
                raise WebhookVerificationError("stripe", "malformed timestamp")
            timestamp = int(item)
        elif key == "v1" and item:
            if not _HEX.fullmatch(item):
                raise WebhookVerificationError("stripe", "malformed v1 signature")
            signatures.append(item)
    if timestamp is None:
        raise WebhookVerificationError("stripe", "signature header lacks a timestamp")
    if not signatures:
        raise WebhookVerificationError("stripe", "signature header lacks a v1 signature")
    return timestamp, signatures
