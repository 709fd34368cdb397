"""The one table from a provider's failure to the API's answer, for every call the gateway
makes on a merchant's behalf after the checkout (customer-absent charge, capture, void,
refund) and for the merchant's cancel.

The create path keeps its own failover logic (:mod:`gateway.attempts`): there a failure moves
on to the next provider. Here there is no next provider (the money is at one), so a failure
is answered at once, as this table says:

==========================  ====  ============================  ===========================
provider error              HTTP  code                          the merchant should
==========================  ====  ============================  ===========================
ProviderTimeout             504   PROVIDER_TIMEOUT              retry with the same key
ProviderUnavailable         502   PROVIDER_UNAVAILABLE          retry with the same key
AdapterFault                502   PROVIDER_UNAVAILABLE          retry with the same key
ProviderRateLimited         503   PROVIDER_RATE_LIMITED         retry after Retry-After
ProviderKeyConflict         409   PROVIDER_KEY_CONFLICT         retry after Retry-After
RequestExpired              422   PROVIDER_REJECTED             not retry as is
ProviderRejected            422   PROVIDER_REJECTED             not retry as is
FlowNotSupported            422   FLOW_NOT_SUPPORTED            use another flow
==========================  ====  ============================  ===========================

A timeout or an unavailable provider leaves the outcome unknown: the call carried a derived
idempotency key, so the merchant's retry with the same ``Idempotency-Key`` re-sends the same
provider request and can never move money twice. The body names the provider and its code
(``providerError``), never the provider's raw message (it may hold personal data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.domain.errors import (
    ApiError,
    BadGateway,
    Conflict,
    GatewayTimeout,
    ServiceUnavailable,
    Unprocessable,
)
from providers.base import (
    AdapterFault,
    FlowNotSupported,
    ProviderError,
    ProviderKeyConflict,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = ["ANSWERS", "Answer", "api_error"]


@dataclass(frozen=True, slots=True)
class Answer:
    """How one kind of provider failure is answered."""

    error: type[ApiError]
    code: str
    message: str


#: Most specific first: the first entry whose class matches the error answers it.
ANSWERS: tuple[tuple[type[ProviderError], Answer], ...] = (
    (
        ProviderTimeout,
        Answer(
            GatewayTimeout,
            "PROVIDER_TIMEOUT",
            "The provider did not answer in time; the outcome is unknown. Retry with the same "
            "Idempotency-Key",
        ),
    ),
    (
        ProviderRateLimited,
        Answer(
            ServiceUnavailable,
            "PROVIDER_RATE_LIMITED",
            "The provider is limiting requests; retry after Retry-After",
        ),
    ),
    (
        ProviderKeyConflict,
        Answer(
            Conflict,
            "PROVIDER_KEY_CONFLICT",
            "The provider is still processing an earlier call for this request; retry with "
            "the same Idempotency-Key",
        ),
    ),
    (
        FlowNotSupported,
        Answer(
            Unprocessable,
            "FLOW_NOT_SUPPORTED",
            "The provider that holds this payment cannot do this",
        ),
    ),
    (
        ProviderRejected,
        Answer(Unprocessable, "PROVIDER_REJECTED", "The provider refused the request"),
    ),
    (
        ProviderUnavailable,
        Answer(
            BadGateway,
            "PROVIDER_UNAVAILABLE",
            "The provider could not be reached; retry with the same Idempotency-Key",
        ),
    ),
    (
        AdapterFault,
        Answer(
            BadGateway,
            "PROVIDER_UNAVAILABLE",
            "The provider's answer could not be used; retry with the same Idempotency-Key",
        ),
    ),
    (
        ProviderError,
        Answer(BadGateway, "PROVIDER_ERROR", "The provider call failed"),
    ),
)


def api_error(exc: ProviderError, *, session_id: str | None = None) -> ApiError:
    """The API's answer to ``exc`` per :data:`ANSWERS`."""
    answer = next(a for kind, a in ANSWERS if isinstance(exc, kind))
    provider_error: dict[str, object] = {"provider": exc.provider, "outcome": exc.outcome}
    if isinstance(exc, ProviderRejected):
        provider_error["status"] = exc.status
        if exc.code:
            provider_error["code"] = exc.code
    details: dict[str, object] = {"providerError": provider_error}
    if session_id is not None:
        details["sessionId"] = session_id
    headers: dict[str, str] = {}
    if isinstance(exc, ProviderRateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after or 1)))
    elif isinstance(exc, ProviderKeyConflict):
        headers["Retry-After"] = "2"
    elif answer.error is GatewayTimeout or answer.error is BadGateway:
        headers["Retry-After"] = "1"
    return answer.error(answer.message, code=answer.code, details=details, headers=headers)
