"""The PayPal adapter: Orders v2 hosted approval (``POST /v2/checkout/orders``) behind an
OAuth2 client-credentials token, webhooks verified through PayPal's
``POST /v1/notifications/verify-webhook-signature``, and the capture (or authorization) of an
approved order (``POST /v2/checkout/orders/{id}/capture`` | ``/authorize``) that moves the money.

Tokens are cached until shortly before ``expires_in``; concurrent callers share one in-flight
fetch, and a 401 from the API refreshes the token once and retries the call once.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson

from providers.base import (
    AUTHORIZE,
    CAPTURE,
    Capabilities,
    CreateSessionInput,
    FlowNotSupported,
    ProviderEvent,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderSession,
    ProviderTimeout,
    ProviderUnavailable,
    WebhookAnswer,
    WebhookVerificationError,
)
from providers.http import HttpResult, ProviderHttp
from providers.paypal.transformers import (
    DECLINE_ISSUES,
    PAYPAL_CURRENCIES,
    REQUEST_ID_MAX,
    amount_problem,
    build_order_request,
    completion_event,
    declined_event,
    event_from_paypal,
)
from providers.wire import bounded_key, header, json_object

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest
    from gateway.settings import ProviderConfig

__all__ = ["PAYPAL_CAPABILITIES", "TRANSMISSION_HEADERS", "PayPalAdapter", "TokenCache"]

PAYPAL_CAPABILITIES = Capabilities(
    payment_methods=frozenset({"paypal"}),
    currencies=PAYPAL_CURRENCIES,
    #: both through PayPal's vault (``payment_source.paypal.attributes.vault``)
    session_types=frozenset({"one_time", "first_in_series"}),
)

#: Webhook header -> field of the verify-webhook-signature request.
TRANSMISSION_HEADERS = {
    "PAYPAL-AUTH-ALGO": "auth_algo",
    "PAYPAL-CERT-URL": "cert_url",
    "PAYPAL-TRANSMISSION-ID": "transmission_id",
    "PAYPAL-TRANSMISSION-SIG": "transmission_sig",
    "PAYPAL-TRANSMISSION-TIME": "transmission_time",
}

_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]{1,2048}")

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
        self._http = ProviderHttp(self.name, http)
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

    async def create_session(
        self,
        data: CreateSessionInput,
        *,
        timeout: float,
    ) -> ProviderSession:
        """Create an order awaiting the payer's approval; idempotent via ``PayPal-Request-Id``."""
        problem = self.eligibility_problem(data.request)
        if problem:
            raise FlowNotSupported(self.name, problem)
        if not self.config.client_id or not self.config.client_secret:
            raise FlowNotSupported(self.name, "client id and secret are not configured")
        try:
            result = await self._call(
                f"{self.config.base_url}/v2/checkout/orders",
                orjson.dumps(build_order_request(data)),
                {
                    "Content-Type": "application/json",
                    "PayPal-Request-Id": bounded_key(data.idempotency_key, REQUEST_ID_MAX),
                    "Prefer": "return=representation",
                },
                timeout,
                operation="create_session",
                request_id=data.request_id,
            )
        except ProviderRejected as exc:
            if exc.status == 409 or exc.issue == "DUPLICATE_REQUEST_ID":
                in_flight = exc.status == 409
                raise ProviderKeyConflict(self.name, exc.reason, in_flight=in_flight) from exc
            raise
        payload = json_object(result, self.name)
        order_id, url = payload.get("id"), _checkout_url(payload)
        if not isinstance(order_id, str) or not order_id or url is None:
            raise ProviderUnavailable(self.name, "order answer lacks id or approval link", 200)
        status = payload.get("status")
        return ProviderSession(
            provider=self.name,
            reference=order_id,
            checkout_url=url,
            expires_at=None,  # PayPal orders carry no expiry; the gateway keeps its own
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
        the payer approved: the call that moves the money (:class:`providers.base.
        ApprovalCompleter`). ``timeout`` bounds the whole call, an order read included.

        ``PayPal-Request-Id`` is ``idempotency_key`` (a digest when longer than PayPal's 108
        characters): a retry after a timeout or a 5xx gets PayPal's first answer again and never
        captures twice. The answer maps through :func:`completion_event` (capture COMPLETED ->
        COMPLETED, PENDING -> PROCESSING, DECLINED/FAILED -> FAILED; authorization CREATED ->
        COMPLETED). 422s: ORDER_ALREADY_CAPTURED / ORDER_ALREADY_AUTHORIZED (done under another
        request id) reads the order (``GET /v2/checkout/orders/{id}``) and maps the payment it
        holds, None when it holds none; a decline (:data:`DECLINE_ISSUES`) is a FAILED event;
        ORDER_COMPLETION_IN_PROGRESS and a 409 (the same request id still in flight) are
        ProviderUnavailable, to be retried; any other refusal (ORDER_NOT_APPROVED,
        ACTION_DOES_NOT_MATCH_INTENT, ...) is raised as ProviderRejected.
        """
        known = _COMPLETIONS.get(intent)
        if known is None:
            raise FlowNotSupported(self.name, f"unknown completion intent {intent!r}")
        if not self.config.client_id or not self.config.client_secret:
            raise FlowNotSupported(self.name, "client id and secret are not configured")
        action, already = known
        deadline = time.monotonic() + timeout
        request_id = bounded_key(idempotency_key, REQUEST_ID_MAX)
        order_url = f"{self.config.base_url}/v2/checkout/orders/{quote(reference, safe='')}"
        try:
            result = await self._call(
                f"{order_url}/{action}",
                b"{}",
                {
                    "Content-Type": "application/json",
                    "PayPal-Request-Id": request_id,
                    "Prefer": "return=representation",
                },
                timeout,
                operation=f"{action}_order",
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
                order_url,
                None,
                {"Accept": "application/json"},
                max(0.001, deadline - time.monotonic()),
                operation="get_order",
                method="GET",
            )
        return completion_event(
            json_object(result, self.name), intent=intent, request_id=request_id
        )

    async def parse_webhook(
        self, headers: Mapping[str, str], raw_body: bytes
    ) -> list[ProviderEvent]:
        """Verify the call through PayPal's verify-webhook-signature API, then map the event.

        Missing transmission headers fail without a call. A verification answer other than
        SUCCESS, or a verify request PayPal refuses, raises WebhookVerificationError; a
        timeout or an unavailable PayPal raises the retryable ProviderError so PayPal resends.
        """
        fields: dict[str, str] = {}
        for name, field in TRANSMISSION_HEADERS.items():
            value = header(headers, name)
            if not value:
                raise WebhookVerificationError(self.name, f"missing header {name}")
            if not _PRINTABLE_ASCII.fullmatch(value):
                # PayPal sends ids, base64, URLs and times; other bytes cannot be forwarded
                raise WebhookVerificationError(self.name, f"header {name} is not printable ASCII")
            fields[field] = value
        if not self.config.webhook_id:
            raise WebhookVerificationError(self.name, "no webhook id configured")
        try:
            event = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            raise WebhookVerificationError(self.name, "body is not JSON") from None
        if not isinstance(event, dict):
            raise WebhookVerificationError(self.name, "body is not a JSON object")
        fields["webhook_id"] = self.config.webhook_id
        # The event is spliced in byte for byte: re-serialising could change what was signed.
        body = orjson.dumps(fields)[:-1] + b',"webhook_event":' + raw_body.strip() + b"}"
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
        verdict = json_object(result, self.name).get("verification_status")
        if verdict != "SUCCESS":
            raise WebhookVerificationError(self.name, f"verification_status {verdict!r}")
        return [event_from_paypal(event)]

    def webhook_answer(self) -> WebhookAnswer:
        """PayPal only needs a 2xx; the body is empty."""
        return WebhookAnswer(status=200, body=b"", content_type="text/plain")
