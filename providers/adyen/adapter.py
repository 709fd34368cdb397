"""The Adyen adapter: hosted Checkout sessions (``POST /v71/sessions``) and standard
notifications verified by their per-item HMAC signature.

Return URL: Adyen's hosted checkout sends the shopper back to one ``returnUrl`` whatever the
outcome (with ``sessionId`` and ``sessionResult`` appended). The adapter gives it the gateway's
return page, which waits briefly for the AUTHORISATION notification and then sends the shopper
to the merchant's success or failure URL.
"""

from __future__ import annotations

import binascii
import contextlib
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from gateway.domain.session import SessionStatus
from providers.adyen.transformers import (
    ADYEN_PAYMENT_METHODS,
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_REFUSED,
    amount_problem,
    build_session_request,
    from_adyen_minor,
    verify_hmac,
)
from providers.base import (
    Capabilities,
    CreateSessionInput,
    FlowNotSupported,
    ProviderEvent,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderSession,
    ProviderUnavailable,
    WebhookAnswer,
    WebhookVerificationError,
)
from providers.http import ProviderHttp
from providers.wire import bounded_key, json_object, parse_datetime

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest
    from gateway.settings import ProviderConfig

__all__ = ["ADYEN_CAPABILITIES", "AdyenAdapter", "event_from_item"]

ADYEN_CAPABILITIES = Capabilities(
    payment_methods=frozenset(ADYEN_PAYMENT_METHODS),
    session_types=frozenset({"one_time", "first_in_series"}),
)

#: (eventCode, success) -> lifecycle status; anything not listed does not move the session.
_STATUS: dict[tuple[str, bool], SessionStatus] = {
    ("AUTHORISATION", True): SessionStatus.COMPLETED,
    ("AUTHORISATION", False): SessionStatus.FAILED,
    ("CANCELLATION", True): SessionStatus.CANCELLED,
    ("TECHNICAL_CANCEL", True): SessionStatus.CANCELLED,
    ("OFFER_CLOSED", True): SessionStatus.EXPIRED,
}


def _text(additional: Mapping[str, Any], *keys: str) -> str | None:
    """The first non-empty string among ``additionalData[key]``."""
    for key in keys:
        value = additional.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _metadata(additional: Mapping[str, Any], key: str) -> str | None:
    """A session metadata value as notifications carry it: ``metadata.<key>`` (or nested)."""
    value = additional.get(f"metadata.{key}")
    if value is None:
        nested = additional.get("metadata")
        value = nested.get(key) if isinstance(nested, Mapping) else None
    return value if isinstance(value, str) and value else None


def event_from_item(item: Mapping[str, Any]) -> ProviderEvent:
    """Map one (already verified) NotificationRequestItem onto the gateway lifecycle.

    AUTHORISATION success -> COMPLETED, failure -> FAILED; CANCELLATION/TECHNICAL_CANCEL ->
    CANCELLED; OFFER_CLOSED -> EXPIRED. Every other code (CAPTURE, REFUND, unknown ones, or a
    failed modification) leaves the status alone (``None``), never reports success.
    """
    code = str(item.get("eventCode", ""))
    success = str(item.get("success", "")).lower() == "true"
    psp = str(item.get("pspReference", ""))
    raw_additional = item.get("additionalData")
    additional: Mapping[str, Any] = raw_additional if isinstance(raw_additional, Mapping) else {}
    extra: dict[str, str] = {"success": "true" if success else "false"}
    amount = item.get("amount")
    money: Decimal | None = None
    currency: str | None = None
    if isinstance(amount, Mapping):
        unit, value = amount.get("currency"), amount.get("value")
        if isinstance(unit, str) and isinstance(value, int) and not isinstance(value, bool):
            currency = unit
            with contextlib.suppress(ValueError):  # unknown currency: keep event, drop amount
                money = from_adyen_minor(value, unit)
                extra["amount"] = str(money)
            extra["currency"] = unit
    for source, target in (
        ("merchantReference", "merchantReference"),
        ("paymentMethod", "paymentMethod"),
        ("originalReference", "originalReference"),
    ):
        if isinstance(item.get(source), str) and item[source]:
            extra[target] = item[source]
    reference = additional.get("checkoutSessionId")
    return ProviderEvent(
        provider="adyen",
        event_id=f"{psp}:{code}",
        event_type=code,
        reference=reference if isinstance(reference, str) and reference else None,
        session_id=_metadata(additional, "gatewaySessionId"),
        status=_STATUS.get((code, success)),
        occurred_at=parse_datetime(item.get("eventDate")),
        failure_reason=str(item.get("reason") or "refused") if not success else None,
        payment_id=psp if code == "AUTHORISATION" and psp else None,
        customer_id=_text(
            additional, "tokenization.shopperReference", "recurring.shopperReference"
        ),
        payment_method_id=_text(
            additional, "tokenization.storedPaymentMethodId", "recurring.recurringDetailReference"
        ),
        extra=extra,
        amount=money,
        currency=currency,
    )


class AdyenAdapter:
    """Adyen Checkout API v71 behind the :class:`providers.base.ProviderAdapter` seam."""

    name = "adyen"
    capabilities = ADYEN_CAPABILITIES

    def __init__(self, config: ProviderConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self._http = ProviderHttp(self.name, http)

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
        headers = {
            "Content-Type": "application/json",
            "X-API-Key": self.config.api_key,
            "Idempotency-Key": bounded_key(data.idempotency_key, IDEMPOTENCY_KEY_MAX),
        }
        try:
            result = await self._http.request(
                "POST",
                f"{self.config.base_url}/v71/sessions",
                timeout=timeout,
                headers=headers,
                data=orjson.dumps(body),
                operation="create_session",
                request_id=data.request_id,
            )
        except ProviderRejected as exc:
            if exc.code == IDEMPOTENCY_REFUSED:
                # "request already processed or in progress": Adyen does not say which
                raise ProviderKeyConflict(self.name, exc.reason, in_flight=False) from exc
            raise
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
        """Verify every item's HMAC signature and map the items to events.

        One bad item rejects the whole call (Adyen then retries it), so a forged item can
        never ride along with genuine ones.
        """
        hex_key = self.config.hmac_key
        if not hex_key:
            raise WebhookVerificationError(self.name, "no HMAC key configured")
        try:
            binascii.a2b_hex(hex_key)
        except (binascii.Error, ValueError):
            raise WebhookVerificationError(self.name, "configured HMAC key is not hex") from None
        try:
            payload = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            raise WebhookVerificationError(self.name, "body is not JSON") from None
        wrappers = payload.get("notificationItems") if isinstance(payload, dict) else None
        if not isinstance(wrappers, list) or not wrappers:
            raise WebhookVerificationError(self.name, "no notificationItems")
        events: list[ProviderEvent] = []
        for index, wrapper in enumerate(wrappers):
            item = wrapper.get("NotificationRequestItem") if isinstance(wrapper, dict) else None
            if not isinstance(item, dict):
                raise WebhookVerificationError(self.name, f"item {index} is malformed")
            if not verify_hmac(item, hex_key):
                raise WebhookVerificationError(self.name, f"item {index}: HMAC signature invalid")
            events.append(event_from_item(item))
        return events

    def webhook_answer(self) -> WebhookAnswer:
        """Adyen expects HTTP 200 with the body ``[accepted]``."""
        return WebhookAnswer(status=200, body=b"[accepted]", content_type="text/plain")
