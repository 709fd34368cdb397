"""The PayPal adapter: Orders v2 hosted approval (``POST /v2/checkout/orders``) and Vault v3
setup tokens (``POST /v3/vault/setup-tokens``) behind an OAuth2 client-credentials token, webhooks
verified through PayPal's ``POST /v1/notifications/verify-webhook-signature``
(:mod:`providers.paypal.webhooks`), the completion of an approval (the order's capture or
authorization, or the payment token of a setup token) and the calls after the checkout
(:mod:`providers.paypal.payments`): vaulted charges, authorization capture and void, refunds.

Manual capture: PayPal honours an authorization for 3 days and lets it be captured (after a
reauthorization where needed) for 29 days, so ``authorization_days`` is 29; partial captures are
allowed (``final_capture`` releases the rest).

Tokens are cached until shortly before ``expires_in``; concurrent callers share one in-flight
fetch, and a 401 from the API refreshes the token once and retries the call once.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from gateway.domain.money import MAX_AMOUNT, to_minor
from gateway.domain.session import SessionStatus
from providers.base import (
    AUTHORIZE,
    CAPTURE,
    VAULT,
    Capabilities,
    ChargeInput,
    CreateSessionInput,
    FlowNotSupported,
    PaymentOutcome,
    PaymentReference,
    ProviderError,
    ProviderEvent,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderSession,
    ProviderTimeout,
    ProviderUnavailable,
    RefundInput,
    RefundOutcome,
    WebhookAnswer,
    WebhookVerificationError,
)
from providers.http import HttpResult, ProviderHttp
from providers.paypal.payments import (
    VOID_DONE,
    capture_outcome,
    capture_refused,
    capture_request,
    charge_intent,
    charge_outcome,
    completion_event,
    declined_event,
    payment_token_request,
    refund_outcome,
    refund_refused,
    refund_request,
    vault_event,
    vault_order_request,
    void_outcome,
)
from providers.paypal.transformers import (
    DECLINE_ISSUES,
    PAYPAL_CURRENCIES,
    REQUEST_ID_MAX,
    amount_problem,
    build_order_request,
    build_setup_token_request,
    paypal_decimals,
)
from providers.paypal.webhooks import (
    TRANSMISSION_HEADERS,
    event_from_paypal,
    verification_body,
    verified,
)
from providers.wire import amount_refusal, bounded_key, json_object, path_segment

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest
    from gateway.settings import ProviderConfig

__all__ = ["PAYPAL_CAPABILITIES", "TRANSMISSION_HEADERS", "PayPalAdapter", "TokenCache"]

PAYPAL_CAPABILITIES = Capabilities(
    payment_methods=frozenset({"paypal"}),
    currencies=PAYPAL_CURRENCIES,
    #: first_in_series through the order's vault attributes, setup through Vault v3 setup
    #: tokens, next_in_series as an order paid by the vault id
    session_types=frozenset({"one_time", "first_in_series", "setup", "next_in_series"}),
    partial_capture=True,
    #: honoured for 3 days, capturable (reauthorized) for 29
    authorization_days=29,
)

#: completion intent -> the Orders v2 action and the 422 issue saying it was done already
_COMPLETIONS = {
    CAPTURE: ("capture", "ORDER_ALREADY_CAPTURED"),
    AUTHORIZE: ("authorize", "ORDER_ALREADY_AUTHORIZED"),
}


class TokenCache:
    """An OAuth2 client-credentials access token, fetched once and shared until it expires.

    The token is refreshed ``min(300 s, 10 % of its lifetime)`` before ``expires_in``.
    Concurrent callers wait on one lock, so only one fetch is ever in flight.
    """

    def __init__(
        self,
        http: ProviderHttp,
        url: str,
        client_id: str,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._url = url
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
        self._authorization = f"Basic {basic}"
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def _current(self) -> str | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def get(self, timeout: float) -> str:
        """A valid access token, fetching one when none is cached (at most one fetch at once)."""
        token = self._current()
        if token is not None:
            return token
        started = self._clock()
        try:
            async with asyncio.timeout(timeout):
                await self._lock.acquire()
        except TimeoutError:
            raise ProviderTimeout(self._http.provider, "waiting for an access token") from None
        try:
            token = self._current()
            if token is not None:
                return token
            remaining = max(0.001, timeout - (self._clock() - started))
            return await self._fetch(remaining)
        finally:
            self._lock.release()

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after the API refused it (a newer token is kept)."""
        if self._token == token:
            self._token = None

    async def _fetch(self, timeout: float) -> str:
        result = await self._http.request(
            "POST",
            self._url,
            timeout=timeout,
            headers={
                "Authorization": self._authorization,
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            data=b"grant_type=client_credentials",
            operation="access_token",
        )
        payload = json_object(result, self._http.provider)
        token, expires_in = payload.get("access_token"), payload.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise ProviderUnavailable(self._http.provider, "token answer is malformed", 200)
        lifetime = float(max(expires_in, 0))
        self._token = token
        self._refresh_at = self._clock() + lifetime - min(300.0, lifetime * 0.1)
        return token


def _checkout_url(payload: Mapping[str, Any]) -> str | None:
    links = payload.get("links")
    by_rel = {
        link.get("rel"): link.get("href")
        for link in (links if isinstance(links, list) else [])
        if isinstance(link, Mapping)
    }
    for rel in ("payer-action", "approve"):
        href = by_rel.get(rel)
        if isinstance(href, str) and href:
            return href
    return None


class PayPalAdapter:
    """PayPal Orders v2 behind the :class:`providers.base.ProviderAdapter` seam.

    Only the PayPal wallet is offered: cards through PayPal need Advanced Card Processing,
    which is not a hosted-redirect flow. ``verify_timeout`` bounds the webhook verification
    call (``parse_webhook`` has no per-call budget of its own).
    """

    name = "paypal"
    capabilities = PAYPAL_CAPABILITIES

    def __init__(
        self, config: ProviderConfig, http: aiohttp.ClientSession, *, verify_timeout: float = 10.0
    ) -> None:
        self.config = config
        self.verify_timeout = verify_timeout
        secrets = [config.client_secret]
        if config.client_id and config.client_secret:
            basic = f"{config.client_id}:{config.client_secret}".encode()
            secrets.append(base64.b64encode(basic).decode("ascii"))
        self._http = ProviderHttp(self.name, http, secrets=secrets)
        self._tokens = TokenCache(
            self._http,
            f"{config.base_url}/v1/oauth2/token",
            config.client_id or "",
            config.client_secret or "",
        )

    @staticmethod
    def eligibility_problem(request: CheckoutRequest) -> str | None:
        """Why this adapter cannot take ``request`` (checked before any HTTP call), or None."""
        if request.paymentMethod != "paypal":
            return f"payment method {request.paymentMethod!r} is not offered through PayPal"
        return amount_problem(request)

    async def _call(
        self,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        *,
        operation: str,
        request_id: str | None = None,
        method: str = "POST",
    ) -> HttpResult:
        """Call with a bearer token; on a 401 refresh the token once and retry once."""
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProviderTimeout(self.name, f"no answer within {timeout:.3g}s")
            return left

        for attempt in (1, 2):
            token = await self._tokens.get(remaining())
            try:
                return await self._http.request(
                    method,
                    url,
                    timeout=remaining(),
                    headers={**headers, "Authorization": f"Bearer {token}"},
                    data=body,
                    operation=operation,
                    request_id=request_id,
                )
            except ProviderRejected as exc:
                if exc.status != 401 or attempt == 2:
                    raise
                self._tokens.invalidate(token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _configured(self) -> None:
        if not self.config.client_id or not self.config.client_secret:
            raise FlowNotSupported(self.name, "client id and secret are not configured")

    async def _post(
        self,
        path: str,
        body: Mapping[str, Any] | None,
        timeout: float,
        *,
        operation: str,
        idempotency_key: str | None,
        request_id: str | None = None,
    ) -> HttpResult:
        """POST a JSON body (none at all for ``body`` None) with ``PayPal-Request-Id`` (a
        digest when longer than PayPal's 108 characters) when a key is given."""
        headers: dict[str, str] = {"Prefer": "return=representation"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["PayPal-Request-Id"] = bounded_key(idempotency_key, REQUEST_ID_MAX)
        return await self._call(
            f"{self.config.base_url}{path}",
            None if body is None else orjson.dumps(body),
            headers,
            timeout,
            operation=operation,
            request_id=request_id,
        )

    def _key_conflict(self, exc: ProviderRejected) -> ProviderError | None:
        """The same request id still running (409) or used with another body."""
        if exc.status == 409 or exc.issue == "DUPLICATE_REQUEST_ID":
            return ProviderKeyConflict(self.name, exc.reason, in_flight=exc.status == 409)
        return None

    async def create_session(
        self,
        data: CreateSessionInput,
        *,
        timeout: float,
    ) -> ProviderSession:
        """Create an order awaiting the payer's approval (a setup session: a Vault v3 setup
        token); idempotent via ``PayPal-Request-Id``."""
        problem = self.eligibility_problem(data.request)
        if problem:
            raise FlowNotSupported(self.name, problem)
        self._configured()
        setup = data.request.sessionType == "setup"
        try:
            result = await self._post(
                "/v3/vault/setup-tokens" if setup else "/v2/checkout/orders",
                build_setup_token_request(data) if setup else build_order_request(data),
                timeout,
                operation="create_setup_token" if setup else "create_session",
                idempotency_key=data.idempotency_key,
                request_id=data.request_id,
            )
        except ProviderRejected as exc:
            raise (self._key_conflict(exc) or exc) from exc
        payload = json_object(result, self.name)
        reference, url = payload.get("id"), _checkout_url(payload)
        if not isinstance(reference, str) or not reference or url is None:
            raise ProviderUnavailable(self.name, "answer lacks id or approval link", 200)
        status = payload.get("status")
        return ProviderSession(
            provider=self.name,
            reference=reference,
            checkout_url=url,
            expires_at=None,  # orders and setup tokens carry no expiry; the gateway keeps its own
            raw_status=status if isinstance(status, str) else None,
        )

    async def cancel_session(
        self,
        reference: str,
        *,
        timeout: float,
    ) -> None:
        """PayPal orders cannot be cancelled before approval: always raises FlowNotSupported.

        An unapproved order simply lapses; the gateway marks the session cancelled locally.
        """
        raise FlowNotSupported(self.name, "PayPal has no call to cancel an unapproved order")

    async def complete_approved(
        self, reference: str, *, intent: str, idempotency_key: str, timeout: float
    ) -> ProviderEvent | None:
        """Capture (intent ``capture``) or authorize (``authorize``) the order ``reference``
        the payer approved, or vault (``vault``) the wallet of the approved setup token
        ``reference``: the call that moves the money or saves the method
        (:class:`providers.base.ApprovalCompleter`). ``timeout`` bounds the whole call, an
        order read included.

        ``PayPal-Request-Id`` is ``idempotency_key`` (a digest when longer than PayPal's 108
        characters): a retry after a timeout or a 5xx gets PayPal's first answer again and never
        captures twice. The answer maps through :func:`~providers.paypal.payments.
        completion_event` (capture COMPLETED -> COMPLETED, PENDING -> PROCESSING,
        DECLINED/FAILED -> FAILED; authorization CREATED -> AUTHORIZED with ``payment_id`` the
        authorization). 422s: ORDER_ALREADY_CAPTURED / ORDER_ALREADY_AUTHORIZED (done under
        another request id) reads the order (``GET /v2/checkout/orders/{id}``) and maps the
        payment it holds, None when it holds none; a decline (:data:`DECLINE_ISSUES`) is a
        FAILED event; ORDER_COMPLETION_IN_PROGRESS and a 409 (the same request id still in
        flight) are ProviderUnavailable, to be retried; any other refusal (ORDER_NOT_APPROVED,
        ACTION_DOES_NOT_MATCH_INTENT, ...) is raised as ProviderRejected.
        """
        if intent == VAULT:
            self._configured()
            return await self._vault(reference, idempotency_key=idempotency_key, timeout=timeout)
        known = _COMPLETIONS.get(intent)
        if known is None:
            raise FlowNotSupported(self.name, f"unknown completion intent {intent!r}")
        self._configured()
        action, already = known
        deadline = time.monotonic() + timeout
        request_id = bounded_key(idempotency_key, REQUEST_ID_MAX)
        order_path = f"/v2/checkout/orders/{path_segment(reference, self.name)}"
        try:
            result = await self._post(
                f"{order_path}/{action}",
                {},
                timeout,
                operation=f"{action}_order",
                idempotency_key=idempotency_key,
            )
        except ProviderRejected as exc:
            if exc.status == 409 or exc.issue == "ORDER_COMPLETION_IN_PROGRESS":
                raise ProviderUnavailable(
                    self.name, f"{action} still in progress at PayPal: {exc.reason}", exc.status
                ) from exc
            if exc.issue in DECLINE_ISSUES:
                return declined_event(
                    reference, intent=intent, issue=exc.issue or "", request_id=request_id
                )
            if exc.issue != already:
                raise
            result = await self._call(
                f"{self.config.base_url}{order_path}",
                None,
                {"Accept": "application/json"},
                max(0.001, deadline - time.monotonic()),
                operation="get_order",
                method="GET",
            )
        return completion_event(
            json_object(result, self.name),
            intent=intent,
            request_id=request_id,
            reference=reference,
        )

    async def _vault(
        self, setup_token_id: str, *, idempotency_key: str, timeout: float
    ) -> ProviderEvent | None:
        """Create the payment token of an approved setup token (``POST
        /v3/vault/payment-tokens``): COMPLETED with the token and its customer. A 409 (the
        same request id in flight) is retryable; any other refusal is raised."""
        try:
            result = await self._post(
                "/v3/vault/payment-tokens",
                payment_token_request(setup_token_id),
                timeout,
                operation="create_payment_token",
                idempotency_key=idempotency_key,
            )
        except ProviderRejected as exc:
            if exc.status == 409:
                raise ProviderUnavailable(
                    self.name, f"payment token still in progress: {exc.reason}", 409
                ) from exc
            raise
        return vault_event(json_object(result, self.name), setup_token_id=setup_token_id)

    # after the checkout ---------------------------------------------------------------------

    async def charge_saved(self, data: ChargeInput, *, timeout: float) -> PaymentOutcome:
        """Charge the vaulted wallet ``data.payment_method_id`` with the payer absent: an order
        paid by its ``vault_id`` (``custom_id`` the gateway session id), which PayPal captures
        (or, for a manual capture, authorizes) at once. A decline (a DECLINED capture, or a 422
        with one of :data:`DECLINE_ISSUES`) is a FAILED outcome."""
        problem = amount_problem(data.request)
        if problem:
            raise FlowNotSupported(self.name, problem)
        self._configured()
        intent = charge_intent(data)
        try:
            result = await self._post(
                "/v2/checkout/orders",
                vault_order_request(data),
                timeout,
                operation="charge_saved",
                idempotency_key=data.idempotency_key,
                request_id=data.request_id,
            )
        except ProviderRejected as exc:
            conflict = self._key_conflict(exc)
            if conflict is not None:
                raise conflict from exc
            if exc.issue in DECLINE_ISSUES:
                return PaymentOutcome(
                    provider=self.name,
                    status=SessionStatus.FAILED,
                    failure_reason=exc.issue,
                    raw_status=exc.issue,
                )
            raise
        # another amount or currency is reported as it is: the gateway reconciles the charge
        return charge_outcome(json_object(result, self.name), intent=intent)

    async def capture_payment(
        self,
        payment: PaymentReference,
        amount: Decimal,
        *,
        idempotency_key: str,
        timeout: float,
    ) -> PaymentOutcome:
        """Capture ``amount`` of the authorization ``payment.payment_id`` (``final_capture``:
        the rest of a partial capture is released). COMPLETED with ``capture_id``, PENDING ->
        PROCESSING; a refusal in :data:`~providers.paypal.payments.CAPTURE_DECLINES` is an
        outcome (FAILED, or CANCELLED for an expired or voided authorization)."""
        authorization_id = self._authorization(payment)
        self._sendable(amount, payment.currency)
        self._configured()
        try:
            result = await self._post(
                f"/v2/payments/authorizations/{path_segment(authorization_id, self.name)}/capture",
                capture_request(amount, payment.currency),
                timeout,
                operation="capture_payment",
                idempotency_key=idempotency_key,
            )
        except ProviderRejected as exc:
            conflict = self._key_conflict(exc)
            if conflict is not None:
                raise conflict from exc
            refused = capture_refused(exc.issue or "", authorization_id=authorization_id)
            if refused is None:
                raise
            return refused
        return capture_outcome(
            json_object(result, self.name),
            authorization_id=authorization_id,
            currency=payment.currency,
            amount=amount,
        )

    async def void_payment(
        self, payment: PaymentReference, *, idempotency_key: str, timeout: float
    ) -> PaymentOutcome:
        """Void the authorization ``payment.payment_id``: CANCELLED. PayPal's void takes no
        ``PayPal-Request-Id`` (``idempotency_key`` is not sent); it is naturally idempotent:
        a repeat answers 422 PREVIOUSLY_VOIDED, which is CANCELLED too."""
        authorization_id = self._authorization(payment)
        self._configured()
        try:
            result = await self._post(
                f"/v2/payments/authorizations/{path_segment(authorization_id, self.name)}/void",
                None,
                timeout,
                operation="void_payment",
                idempotency_key=None,
            )
        except ProviderRejected as exc:
            if exc.issue in VOID_DONE:
                return void_outcome(None, authorization_id=authorization_id)
            raise
        answer = json_object(result, self.name) if result.body.strip() else None
        return void_outcome(answer, authorization_id=authorization_id)

    async def refund_payment(self, data: RefundInput, *, timeout: float) -> RefundOutcome:
        """Refund ``data.amount`` of the capture (``capture_id``, else ``payment_id``):
        ``invoice_id`` the gateway refund id and ``custom_id`` the session id, echoed by the
        refund webhooks. COMPLETED -> SUCCEEDED, PENDING -> PENDING, FAILED/CANCELLED ->
        FAILED; a refusal in :data:`~providers.paypal.payments.REFUND_DECLINES` is FAILED."""
        capture_id = data.payment.capture_id or data.payment.payment_id
        if not capture_id:
            raise FlowNotSupported(self.name, "the payment has no capture to refund")
        if data.currency != data.payment.currency:
            raise FlowNotSupported(self.name, "a refund is in the currency of its payment")
        self._sendable(data.amount, data.currency)
        self._configured()
        try:
            result = await self._post(
                f"/v2/payments/captures/{path_segment(capture_id, self.name)}/refund",
                refund_request(data),
                timeout,
                operation="refund_payment",
                idempotency_key=data.idempotency_key,
            )
        except ProviderRejected as exc:
            conflict = self._key_conflict(exc)
            if conflict is not None:
                raise conflict from exc
            refused = refund_refused(exc.issue or "")
            if refused is None:
                raise
            return refused
        return refund_outcome(
            json_object(result, self.name), amount=data.amount, currency=data.currency
        )

    def _sendable(self, amount: Decimal, currency: str) -> None:
        """Refuse (:class:`FlowNotSupported`) a capture or refund amount PayPal cannot be sent
        exactly (at most ``999999999999999`` major units), before anything is sent."""
        if currency not in PAYPAL_CURRENCIES:
            raise FlowNotSupported(self.name, f"PayPal does not accept {currency}")
        places = paypal_decimals(currency)
        largest = to_minor(MAX_AMOUNT, places) - 1
        problem = amount_refusal(amount, places, max_minor=largest)
        if problem:
            raise FlowNotSupported(self.name, problem)

    def _authorization(self, payment: PaymentReference) -> str:
        if not payment.payment_id:
            raise FlowNotSupported(self.name, "the payment has no PayPal authorization id")
        return payment.payment_id

    # webhooks -------------------------------------------------------------------------------

    async def parse_webhook(
        self, headers: Mapping[str, str], raw_body: bytes
    ) -> list[ProviderEvent]:
        """Verify the call through PayPal's verify-webhook-signature API, then map the event
        (:mod:`providers.paypal.webhooks`).

        Missing transmission headers fail without a call. A verification answer other than
        SUCCESS, or a verify request PayPal refuses, raises WebhookVerificationError; a
        timeout or an unavailable PayPal raises the retryable ProviderError so PayPal resends.
        """
        body = verification_body(headers, raw_body, self.config.webhook_id)
        try:
            result = await self._call(
                f"{self.config.base_url}/v1/notifications/verify-webhook-signature",
                body,
                {"Content-Type": "application/json"},
                self.verify_timeout,
                operation="verify_webhook",
            )
        except ProviderRejected as exc:
            raise WebhookVerificationError(
                self.name, f"verification refused: {exc.reason}"
            ) from exc
        return [event_from_paypal(verified(json_object(result, self.name), raw_body))]

    def webhook_answer(self) -> WebhookAnswer:
        """PayPal only needs a 2xx; the body is empty."""
        return WebhookAnswer(status=200, body=b"", content_type="text/plain")
