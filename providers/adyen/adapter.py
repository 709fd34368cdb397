"""The Adyen adapter: hosted Checkout sessions (``POST /v71/sessions``), the calls after the
checkout (``/payments`` with a stored method, ``/captures``, ``/cancels``, ``/refunds``:
:mod:`providers.adyen.payments`) and standard notifications verified by their per-item HMAC
signature (:mod:`providers.adyen.webhooks`).

Return URL: Adyen's hosted checkout sends the shopper back to one ``returnUrl`` whatever the
outcome (with ``sessionId`` and ``sessionResult`` appended). The adapter gives it the gateway's
return page, which waits briefly for the AUTHORISATION notification and then sends the shopper
to the merchant's success or failure URL.

Session types: ``setup`` is a zero-value session that stores the card under the shopper
(``storePaymentMethodMode`` enabled, ``recurringProcessingModel`` Subscription); its
AUTHORISATION reports the token. ``next_in_series`` charges the token through ``/payments``
(cards and card wallets only). Manual capture: an authorization stays capturable for 7 days
(Adyen's default for cards; other methods differ), and may be captured partially.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from providers.adyen import payments
from providers.adyen.transformers import (
    ADYEN_MAX_MINOR,
    ADYEN_PAYMENT_METHODS,
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_REFUSED,
    adyen_exponent,
    amount_problem,
    build_session_request,
)
from providers.adyen.webhooks import event_from_item, parse_notification
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
    WebhookAnswer,
)
from providers.http import HttpResult, ProviderHttp
from providers.wire import (
    amount_refusal,
    bounded_key,
    json_object,
    parse_datetime,
    path_segment,
)

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest
    from gateway.settings import ProviderConfig

__all__ = ["ADYEN_CAPABILITIES", "AdyenAdapter", "event_from_item"]

ADYEN_CAPABILITIES = Capabilities(
    payment_methods=frozenset(ADYEN_PAYMENT_METHODS),
    session_types=frozenset({"one_time", "first_in_series", "setup", "next_in_series"}),
    partial_capture=True,
    authorization_days=7,
)


class AdyenAdapter:
    """Adyen Checkout API v71 behind the :class:`providers.base.ProviderAdapter` seam."""

    name = "adyen"
    capabilities = ADYEN_CAPABILITIES

    def __init__(self, config: ProviderConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self._http = ProviderHttp(self.name, http, secrets=(config.api_key, config.hmac_key))

    @staticmethod
    def eligibility_problem(request: CheckoutRequest) -> str | None:
        """Why this adapter cannot take ``request`` (checked before any HTTP call), or None."""
        if request.paymentMethod not in ADYEN_PAYMENT_METHODS:
            return f"payment method {request.paymentMethod!r} is not offered through Adyen"
        return amount_problem(request)

    async def create_session(
        self,
        data: CreateSessionInput,
        *,
        timeout: float,
    ) -> ProviderSession:
        """Create a hosted checkout session; idempotent through the ``Idempotency-Key`` header."""
        problem = self.eligibility_problem(data.request)
        if problem:
            raise FlowNotSupported(self.name, problem)
        if not self.config.api_key or not self.config.merchant_account:
            raise FlowNotSupported(self.name, "API key and merchant account are not configured")
        body = build_session_request(data, self.config.merchant_account)
        result = await self._post(
            "/sessions",
            body,
            data.idempotency_key,
            timeout=timeout,
            operation="create_session",
            request_id=data.request_id,
        )
        payload = json_object(result, self.name)
        session_id, url = payload.get("id"), payload.get("url")
        if not isinstance(session_id, str) or not isinstance(url, str):
            raise ProviderUnavailable(self.name, "session answer lacks id or url", result.status)
        return ProviderSession(
            provider=self.name,
            reference=session_id,
            checkout_url=url,
            expires_at=parse_datetime(payload.get("expiresAt")) or data.expires_at,
            raw_status=payload.get("status") if isinstance(payload.get("status"), str) else None,
        )

    async def cancel_session(
        self,
        reference: str,
        *,
        timeout: float,
    ) -> None:
        """Adyen hosted sessions cannot be cancelled: always raises FlowNotSupported.

        The session simply lapses at its ``expiresAt``; the gateway marks it cancelled locally.
        """
        raise FlowNotSupported(
            self.name, "Adyen checkout sessions have no cancel call; they lapse at expiresAt"
        )

    async def parse_webhook(
        self, headers: Mapping[str, str], raw_body: bytes
    ) -> list[ProviderEvent]:
        """Verify every item's HMAC signature and map the items to events (one bad item
        rejects the whole call: :func:`providers.adyen.webhooks.parse_notification`)."""
        return parse_notification(raw_body, self.config.hmac_key)

    def webhook_answer(self) -> WebhookAnswer:
        """Adyen expects HTTP 200 with the body ``[accepted]``."""
        return WebhookAnswer(status=200, body=b"[accepted]", content_type="text/plain")

    # after the checkout -----------------------------------------------------------------------

    def _credentials(self) -> tuple[str, str]:
        if not self.config.api_key or not self.config.merchant_account:
            raise FlowNotSupported(self.name, "API key and merchant account are not configured")
        return self.config.api_key, self.config.merchant_account

    async def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        idempotency_key: str,
        *,
        timeout: float,
        operation: str,
        request_id: str | None = None,
    ) -> HttpResult:
        """POST ``body`` to ``/v71{path}`` with the API key and the idempotency key.

        Adyen's refusal of a reused key (errorCode 704: "already processed or in progress",
        without saying which) is a :class:`ProviderKeyConflict`; the rest of the error mapping
        is :class:`ProviderHttp`'s.
        """
        api_key, _ = self._credentials()
        headers = {
            "Content-Type": "application/json",
            "X-API-Key": api_key,
            "Idempotency-Key": bounded_key(idempotency_key, IDEMPOTENCY_KEY_MAX),
        }
        try:
            return await self._http.request(
                "POST",
                f"{self.config.base_url}/v71{path}",
                timeout=timeout,
                headers=headers,
                data=orjson.dumps(body),
                operation=operation,
                request_id=request_id,
            )
        except ProviderRejected as exc:
            if exc.code == IDEMPOTENCY_REFUSED:
                raise ProviderKeyConflict(self.name, exc.reason, in_flight=False) from exc
            raise

    def _sendable(self, amount: Decimal, currency: str) -> None:
        """Refuse (:class:`FlowNotSupported`) a capture or refund amount Adyen cannot be sent
        exactly, before anything is sent."""
        try:
            places = adyen_exponent(currency)
        except ValueError:
            raise FlowNotSupported(self.name, "unknown currency") from None
        problem = amount_refusal(amount, places, max_minor=ADYEN_MAX_MINOR)
        if problem:
            raise FlowNotSupported(self.name, problem)

    @staticmethod
    def _payment_path(payment: PaymentReference, action: str) -> str:
        if not payment.payment_id:
            raise FlowNotSupported("adyen", f"no pspReference to {action}: the payment is unknown")
        return f"/payments/{path_segment(payment.payment_id, 'adyen')}/{action}"

    async def charge_saved(self, data: ChargeInput, *, timeout: float) -> PaymentOutcome:
        """Charge the stored method with the shopper absent (``/payments``, ContAuth).

        A refusal answers 200 ``resultCode: Refused``: a FAILED outcome, not an exception.
        """
        request = data.request
        problem = self.eligibility_problem(request)
        if problem is None and request.paymentMethod not in payments.STORED_METHOD_TYPES:
            problem = f"Adyen has no customer-absent charge of {request.paymentMethod!r}"
        if problem:
            raise FlowNotSupported(self.name, problem)
        _, merchant_account = self._credentials()
        result = await self._post(
            "/payments",
            payments.charge_body(data, merchant_account),
            data.idempotency_key,
            timeout=timeout,
            operation="charge_saved",
            request_id=data.request_id,
        )
        return payments.charge_outcome(
            json_object(result, self.name),
            manual=request.captureMethod == "manual",
            currency=request.currency,
        )

    async def capture_payment(
        self,
        payment: PaymentReference,
        amount: Decimal,
        *,
        idempotency_key: str,
        timeout: float,
    ) -> PaymentOutcome:
        """Ask for a (possibly partial) capture: PROCESSING until the CAPTURE notification."""
        self._sendable(amount, payment.currency)
        _, merchant_account = self._credentials()
        result = await self._post(
            self._payment_path(payment, "captures"),
            payments.capture_body(payment, amount, merchant_account),
            idempotency_key,
            timeout=timeout,
            operation="capture_payment",
        )
        return payments.modification_outcome(json_object(result, self.name), payment, amount)

    async def void_payment(
        self, payment: PaymentReference, *, idempotency_key: str, timeout: float
    ) -> PaymentOutcome:
        """Ask to cancel the authorization: PROCESSING until the CANCELLATION notification."""
        _, merchant_account = self._credentials()
        result = await self._post(
            self._payment_path(payment, "cancels"),
            payments.cancel_body(payment, merchant_account),
            idempotency_key,
            timeout=timeout,
            operation="void_payment",
        )
        return payments.modification_outcome(json_object(result, self.name), payment, None)

    async def refund_payment(self, data: RefundInput, *, timeout: float) -> RefundOutcome:
        """Ask for a refund: PENDING until the REFUND (or REFUND_FAILED) notification."""
        if data.currency != data.payment.currency:
            raise FlowNotSupported(self.name, "a refund is in the currency of its payment")
        self._sendable(data.amount, data.currency)
        _, merchant_account = self._credentials()
        result = await self._post(
            self._payment_path(data.payment, "refunds"),
            payments.refund_body(data, merchant_account),
            data.idempotency_key,
            timeout=timeout,
            operation="refund_payment",
        )
        return payments.refund_outcome(json_object(result, self.name))
