"""The Stripe adapter: hosted Checkout Sessions, the PaymentIntent and Refund calls after the
checkout, and ``Stripe-Signature`` verified webhooks.

Requests are form-encoded with bracketed keys, authenticated with ``Authorization: Bearer``,
pinned to ``Stripe-Version: 2026-09-30.endive`` (the version of the contract in
``tests/specs/``) and carry the gateway's per-provider idempotency key. The adapter is thin: the
wire conversions live in :mod:`providers.stripe.transformers` (hosted sessions),
:mod:`providers.stripe.payments` (charges, captures, cancels, refunds) and
:mod:`providers.stripe.webhooks` (signatures and events); HTTP failures are mapped by
:mod:`providers.http`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from gateway.domain.session import SessionStatus
from providers.answers import vouched, vouched_refund
from providers.base import (
    Capabilities,
    ChargeInput,
    CreateSessionInput,
    FlowNotSupported,
    PaymentOutcome,
    PaymentReference,
    ProviderEvent,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderSession,
    ProviderUnavailable,
    RefundInput,
    RefundOutcome,
    RequestExpired,
    WebhookAnswer,
    WebhookVerificationError,
)
from providers.http import HttpResult, ProviderHttp
from providers.stripe.payments import (
    capture_params,
    charge_params,
    decline_outcome,
    intent_outcome,
    refund_outcome,
    refund_params,
)
from providers.stripe.transformers import (
    AUTOMATIC_CAPTURE_ONLY,
    IDEMPOTENCY_KEY_MAX,
    METHOD_CURRENCIES,
    STRIPE_API_VERSION,
    STRIPE_MAX_MINOR,
    STRIPE_PAYMENT_METHODS,
    amount_problem,
    build_create_params,
    encode_form,
    from_stripe_minor,
    stripe_exponent,
)
from providers.stripe.webhooks import (
    SIGNATURE_TOLERANCE_SECONDS,
    event_from_payload,
    events_from_payload,
    id_of,
    sign_payload,
    verify_signature,
)
from providers.wire import amount_refusal, bounded_key, from_unix, header, path_segment

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

#: Any ISO 4217 currency Stripe's table knows (``None``); per-method limits (iDEAL and SEPA in
#: EUR, Klarna in its markets) are checked by :meth:`StripeAdapter.eligibility_problem`.
#: Authorizations (manual capture) may be captured partially and hold for 7 days.
STRIPE_CAPABILITIES = Capabilities(
    payment_methods=frozenset(STRIPE_PAYMENT_METHODS),
    currencies=None,
    session_types=frozenset({"one_time", "first_in_series", "setup", "next_in_series"}),
    partial_capture=True,
    authorization_days=7,
    cancels_sessions=True,
)

#: gateway methods whose Stripe method can be saved and charged with the customer absent
SAVABLE_METHODS = frozenset({"card", "apple_pay", "google_pay", "sepa_debit"})

#: what a PaymentIntent create may answer besides 200: 402, a card decline (an outcome)
_DECLINE = 402


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
        self._http = ProviderHttp(self.name, http, secrets=(config.api_key, config.webhook_secret))
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
        if request.sessionType in ("setup", "next_in_series") and method not in SAVABLE_METHODS:
            return f"Stripe cannot save {method} for payments without the customer"
        if request.sessionType == "next_in_series" and request.amount.total <= 0:
            return "Stripe charges a saved method only for a positive amount"
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
            result = await self._post(
                "/v1/checkout/sessions",
                params,
                idempotency_key=data.idempotency_key,
                timeout=timeout,
                operation="create_session",
                request_id=data.request_id,
            )
        except ProviderRejected as exc:
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
            expires_at=from_unix(expires),
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
        session = path_segment(reference, self.name)
        await self._http.request(
            "POST",
            f"{self.config.base_url}/v1/checkout/sessions/{session}/expire",
            timeout=timeout,
            headers=self._headers(f"expire:{reference}"),
            data="",
            operation="cancel_session",
        )

    async def parse_webhook(
        self, headers: Mapping[str, str], raw_body: bytes
    ) -> list[ProviderEvent]:
        """Verify ``Stripe-Signature`` over the raw body and map the event
        (:mod:`providers.stripe.webhooks`); a saved method the event only names through its
        PaymentIntent or SetupIntent is looked up."""
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
        return [await self._with_saved_method(event) for event in events_from_payload(payload)]

    async def _with_saved_method(self, event: ProviderEvent) -> ProviderEvent:
        wanted = event.extra.get("saved_method") and event.customer_id
        if not wanted or event.payment_method_id is not None:
            return event
        setup_intent = event.extra.get("setup_intent")
        if setup_intent:
            method = await self._payment_method_of("setup_intents", setup_intent)
        elif event.payment_id:
            method = await self._payment_method_of("payment_intents", event.payment_id)
        else:
            return event
        return replace(event, payment_method_id=method)

    async def _payment_method_of(self, kind: str, intent_id: str) -> str | None:
        """``GET /v1/{payment_intents|setup_intents}/{id}``: the (saved) payment method.

        Checkout Session events name the intent only; a failure here is retryable (the webhook
        answers 503 and Stripe sends it again).
        """
        result = await self._http.request(
            "GET",
            f"{self.config.base_url}/v1/{kind}/{path_segment(intent_id, self.name)}",
            timeout=self.webhook_lookup_timeout,
            headers={
                "Authorization": f"Bearer {self.config.api_key}",
                "Stripe-Version": STRIPE_API_VERSION,
            },
            operation="webhook_lookup",
        )
        return id_of(self._object(result.body, result.status).get("payment_method"))

    # after the checkout (PaymentOperations) ---------------------------------------------------

    async def charge_saved(self, data: ChargeInput, *, timeout: float) -> PaymentOutcome:
        """``POST /v1/payment_intents`` with ``confirm=true, off_session=true``: charge (or,
        with ``captureMethod`` manual, authorize) the saved method; a card decline is a FAILED
        outcome with Stripe's ``decline_code`` (or ``code``)."""
        problem = self.eligibility_problem(data.request)
        if problem:
            raise FlowNotSupported(self.name, problem)
        result = await self._post(
            "/v1/payment_intents",
            charge_params(data),
            idempotency_key=data.idempotency_key,
            timeout=timeout,
            operation="charge_saved",
            request_id=data.request_id,
            expected=(200, _DECLINE),
        )
        payload = self._object(result.body, result.status)
        if result.status == _DECLINE:
            error = payload.get("error")
            outcome = decline_outcome(error) if isinstance(error, dict) else None
            if outcome is None:  # a 402 that is not a card decline: a refusal as any other
                self._http.check(result, (200,))
                raise ProviderUnavailable(self.name, "unreadable 402 answer", result.status)
            return outcome
        # another amount or currency is reported as it is: the gateway reconciles the charge
        # (gateway.series.charge_mismatch); an amount it cannot see must not pass as agreeing
        answered = self._intent(payload, result.status)
        return vouched(answered, unreadable=answered.amount is None)

    async def capture_payment(
        self,
        payment: PaymentReference,
        amount: Decimal,
        *,
        idempotency_key: str,
        timeout: float,
    ) -> PaymentOutcome:
        """``POST /v1/payment_intents/{id}/capture`` with ``amount_to_capture`` (Stripe releases
        the rest of a partial capture)."""
        intent = self._intent_id(payment)
        self._sendable(amount, payment.currency)
        result = await self._post(
            f"/v1/payment_intents/{path_segment(intent, self.name)}/capture",
            capture_params(amount, payment.currency),
            idempotency_key=idempotency_key,
            timeout=timeout,
            operation="capture_payment",
        )
        answered = self._intent(self._object(result.body, result.status), result.status)
        captured = answered.status is SessionStatus.COMPLETED
        return vouched(
            answered,
            payment_id=intent,
            currency=payment.currency,
            amount=amount if captured else None,
            unreadable=answered.amount is None,
        )

    async def void_payment(
        self, payment: PaymentReference, *, idempotency_key: str, timeout: float
    ) -> PaymentOutcome:
        """``POST /v1/payment_intents/{id}/cancel``: release the authorization."""
        intent = self._intent_id(payment)
        result = await self._post(
            f"/v1/payment_intents/{path_segment(intent, self.name)}/cancel",
            {},
            idempotency_key=idempotency_key,
            timeout=timeout,
            operation="void_payment",
        )
        answered = self._intent(self._object(result.body, result.status), result.status)
        return vouched(answered, payment_id=intent, currency=payment.currency)

    async def refund_payment(self, data: RefundInput, *, timeout: float) -> RefundOutcome:
        """``POST /v1/refunds`` of the PaymentIntent, with the gateway's refund and session ids
        in ``metadata`` (the refund webhooks echo them)."""
        intent = self._intent_id(data.payment)
        if data.currency != data.payment.currency:
            raise FlowNotSupported(self.name, "a refund is in the currency of its payment")
        self._sendable(data.amount, data.currency)
        result = await self._post(
            "/v1/refunds",
            refund_params(data),
            idempotency_key=data.idempotency_key,
            timeout=timeout,
            operation="refund_payment",
        )
        payload = self._object(result.body, result.status)
        if not isinstance(payload.get("id"), str):
            raise ProviderUnavailable(self.name, "refund answer lacks an id", result.status)
        answered = from_stripe_minor(payload.get("amount"), payload.get("currency"))
        refunded = id_of(payload.get("payment_intent"))
        return vouched_refund(
            refund_outcome(payload),
            answered=answered,
            amount=data.amount,
            currency=data.currency,
            unreadable=answered is None,
            other_payment=refunded is not None and refunded != intent,
        )

    def _sendable(self, amount: Decimal, currency: str) -> None:
        """Refuse (:class:`FlowNotSupported`) a capture or refund amount Stripe cannot be sent
        exactly, before anything is sent."""
        try:
            places = stripe_exponent(currency)
        except ValueError:
            raise FlowNotSupported(self.name, "unknown currency") from None
        problem = amount_refusal(amount, places, max_minor=STRIPE_MAX_MINOR)
        problem = problem or amount_problem(currency, [amount])
        if problem:
            raise FlowNotSupported(self.name, problem)

    def _intent_id(self, payment: PaymentReference) -> str:
        intent = payment.payment_id or payment.session_reference
        if not intent or not intent.startswith("pi_"):
            raise FlowNotSupported(self.name, "the payment has no Stripe PaymentIntent")
        return intent

    def _intent(self, payload: dict[str, Any], status: int) -> PaymentOutcome:
        if not isinstance(payload.get("id"), str) or not isinstance(payload.get("status"), str):
            raise ProviderUnavailable(self.name, "PaymentIntent answer lacks id or status", status)
        return intent_outcome(payload)

    async def _post(
        self,
        path: str,
        params: Mapping[str, Any],
        *,
        idempotency_key: str,
        timeout: float,
        operation: str,
        request_id: str | None = None,
        expected: tuple[int, ...] = (200,),
    ) -> HttpResult:
        """One form POST under ``idempotency_key``; Stripe's refusals of the key itself are
        :class:`ProviderKeyConflict` (in flight: 409 ``idempotency_key_in_use``)."""
        try:
            return await self._http.request(
                "POST",
                f"{self.config.base_url}{path}",
                timeout=timeout,
                headers=self._headers(idempotency_key),
                data=encode_form(params),
                operation=operation,
                request_id=request_id,
                expected=expected,
            )
        except ProviderRejected as exc:
            if exc.code in ("idempotency_key_in_use", "idempotency_error"):
                in_flight = exc.code == "idempotency_key_in_use"
                raise ProviderKeyConflict(self.name, exc.reason, in_flight=in_flight) from exc
            raise

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
