"""The adapter seam every payment provider implements, and the one error tree they raise.

Errors are mapped once, at the adapter boundary, from aiohttp/asyncio failures::

    ProviderError                     (provider: str)
     ├── ProviderTimeout              no answer within the per-call timeout
     ├── ProviderUnavailable          connection refused/reset, or a 5xx answer
     ├── ProviderRateLimited          429; ``retry_after`` seconds when the provider said so
     ├── ProviderRejected             4xx: the provider refused *our* request (``code``, and
     │    │                           ``issue`` when the provider gives a finer reason)
     │    └── RequestExpired          the pinned request is too old for the provider now; it
     │                                holds no session for the key and never will
     ├── ProviderKeyConflict          the idempotency key is in use by a request still running
     │                                there (``in_flight``) or was used with other parameters
     ├── FlowNotSupported             the adapter cannot do what was asked
     ├── AdapterFault                 the adapter itself failed: any other exception out of it
     │                                (a transformer's TypeError, a parser's KeyError)
     └── WebhookVerificationError     a webhook whose signature or form is not valid

Timeouts, unavailability, rate limits and adapter faults are *retryable at another provider*; a
rejection is not (the request is wrong), unless the gateway is configured otherwise. An
:class:`AdapterFault` is made at one boundary only, where the gateway calls the adapter
(:func:`adapter_fault`); adapters never raise it themselves.

After the checkout (``sessionType`` setup / next_in_series, ``captureMethod`` manual, refunds)
every adapter also implements :class:`PaymentOperations`: charge a saved method with the customer
absent, capture or void an authorization, refund a captured payment. Those calls answer a
:class:`PaymentOutcome` or :class:`RefundOutcome`; a provider's *decline* is an outcome
(``FAILED`` with ``failure_reason``), never an exception. Refund webhooks come back as a
:class:`ProviderEvent` with ``refund`` set.

Most providers charge the payer during their hosted checkout. Some only record the payer's
*approval* there and move no money until the merchant's server asks (PayPal Orders v2: capture
or authorize the approved order). Their adapters also implement the optional
:class:`ApprovalCompleter`; the gateway calls it after an event with ``awaits_completion``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.domain.models import CheckoutRequest
    from gateway.domain.session import RefundStatus, SessionStatus

__all__ = [
    "AUTHORIZE",
    "CAPTURE",
    "VAULT",
    "AdapterFault",
    "ApprovalCompleter",
    "Capabilities",
    "ChargeInput",
    "CreateSessionInput",
    "EligibilityCheck",
    "FlowNotSupported",
    "PaymentOperations",
    "PaymentOutcome",
    "PaymentReference",
    "ProviderAdapter",
    "ProviderError",
    "ProviderEvent",
    "ProviderKeyConflict",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderSession",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RefundInput",
    "RefundOutcome",
    "RefundUpdate",
    "RequestExpired",
    "WebhookAnswer",
    "WebhookVerificationError",
    "adapter_fault",
]


class ProviderError(Exception):
    """Base of every error an adapter raises."""

    retryable: bool = False
    outcome: str = "error"

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.reason = message


class ProviderTimeout(ProviderError):
    retryable, outcome = True, "timeout"


class ProviderUnavailable(ProviderError):
    retryable, outcome = True, "unavailable"

    def __init__(self, provider: str, message: str, status: int | None = None) -> None:
        super().__init__(provider, message)
        self.status = status


class ProviderRateLimited(ProviderError):
    retryable, outcome = True, "rate_limited"

    def __init__(self, provider: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(provider, message)
        self.retry_after = retry_after


class ProviderRejected(ProviderError):
    retryable, outcome = False, "rejected"

    def __init__(
        self,
        provider: str,
        message: str,
        status: int,
        code: str | None = None,
        issue: str | None = None,
    ) -> None:
        super().__init__(provider, message)
        self.status = status
        self.code = code
        #: the provider's finer reason beside ``code`` (PayPal: ``details[0].issue``, Stripe:
        #: ``error.param``)
        self.issue = issue


class RequestExpired(ProviderRejected):
    """The provider refuses a pinned create because time moved past what the request pins
    (Stripe: an ``expires_at`` less than 30 minutes ahead). A refused request is not saved
    under the idempotency key, and the first request, had it arrived later, would have been
    refused the same way: the provider holds no session for the key and never will."""

    outcome = "request_expired"


class ProviderKeyConflict(ProviderError):
    """The provider refused the idempotency key itself, not the request: an earlier request
    with the key is still running there (``in_flight``: its answer comes on a later retry), or
    the key was used with other parameters (the provider may hold a session for it that this
    call cannot return). Neither says anything about the provider's health."""

    retryable, outcome = False, "key_conflict"

    def __init__(self, provider: str, message: str, *, in_flight: bool) -> None:
        super().__init__(provider, message)
        self.in_flight = in_flight


class FlowNotSupported(ProviderError):
    retryable, outcome = False, "not_supported"


class AdapterFault(ProviderError):
    """An exception out of an adapter that is not a :class:`ProviderError`: a bug on our side
    of the seam. It fails over and counts against the provider's circuit like an outage."""

    retryable, outcome = True, "adapter_error"

    def __init__(self, provider: str, exception_type: str) -> None:
        super().__init__(provider, f"adapter failed ({exception_type})")
        #: the class name of the original exception; its message is never kept (it may hold
        #: request data)
        self.exception_type = exception_type


def adapter_fault(provider: str, exc: BaseException) -> ProviderError:
    """``exc`` (raised by ``provider``'s adapter) as a :class:`ProviderError`: itself when it
    already is one, an :class:`AdapterFault` naming its type otherwise."""
    if isinstance(exc, ProviderError):
        return exc
    return AdapterFault(provider, type(exc).__name__)


class WebhookVerificationError(ProviderError):
    outcome = "bad_signature"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an adapter can take. ``None`` means "any"."""

    payment_methods: frozenset[str]
    currencies: frozenset[str] | None = None
    countries: frozenset[str] | None = None
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None
    capture_methods: frozenset[str] = frozenset({"automatic", "manual"})
    #: ``one_time``, ``first_in_series``, ``setup`` (save a method, charge nothing) and
    #: ``next_in_series`` (charge a saved method, customer absent: :class:`PaymentOperations`)
    session_types: frozenset[str] = frozenset({"one_time"})
    #: a manual-capture authorization may be captured for less than it holds
    partial_capture: bool = True
    #: days an authorization stays capturable at the provider (the gateway warns before)
    authorization_days: int = 7
    #: :meth:`ProviderAdapter.cancel_session` makes an open session unpayable (Stripe's expire)
    cancels_sessions: bool = False


@dataclass(frozen=True, slots=True)
class CreateSessionInput:
    """Everything an adapter needs to open a hosted checkout session."""

    session_id: str
    merchant_id: str
    #: derived from (merchant, Idempotency-Key, provider): the same on every retry.
    idempotency_key: str
    request: CheckoutRequest
    expires_at: datetime
    request_id: str | None = None
    #: when the first attempt under ``idempotency_key`` began: the adapter's "now" for anything
    #: it derives from the clock, so every retry sends the same parameters
    created_at: datetime | None = None
    #: the gateway's own return page for providers with a single return URL whatever the
    #: outcome (Adyen); it sends the customer on to the merchant's success or failure URL
    return_url: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderSession:
    """The provider's answer to a create call."""

    provider: str
    reference: str
    checkout_url: str
    expires_at: datetime | None = None
    raw_status: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified provider webhook event mapped onto the gateway's lifecycle.

    ``status`` is ``None`` when the event does not move the session; an ambiguous provider
    status maps to ``PENDING``/``PROCESSING``, never to ``COMPLETED``. Adapters convert the
    provider's amount exactly (minor units with the provider's own exponent table, or a
    decimal string) with :mod:`gateway.domain.money`.
    """

    provider: str
    event_id: str
    event_type: str
    reference: str | None
    session_id: str | None
    status: SessionStatus | None
    occurred_at: datetime | None = None
    failure_reason: str | None = None
    customer_id: str | None = None
    #: the saved payment method (or mandate / recurring detail) the provider reports
    payment_method_id: str | None = None
    #: the provider's reference of the payment itself (PaymentIntent, pspReference, capture id)
    payment_id: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    #: the amount (major units, exact) and ISO 4217 currency the provider reports for the
    #: payment; ``None`` when the event carries none (the gateway reconciles them against the
    #: session before it lets a payment complete it: :mod:`gateway.reconciliation`)
    amount: Decimal | None = None
    currency: str | None = None
    #: the payer approved, but no money moves until the gateway completes the approval through
    #: :meth:`ApprovalCompleter.complete_approved` (PayPal's ``CHECKOUT.ORDER.APPROVED``)
    awaits_completion: bool = False
    #: the provider's reference of a capture of the payment, when it has its own (PayPal
    #: capture id, Adyen capture pspReference): refunds of it name it
    capture_id: str | None = None
    #: a refund's progress (``status`` is then None: a refund moves no session status)
    refund: RefundUpdate | None = None


@dataclass(frozen=True, slots=True)
class RefundUpdate:
    """What a provider's webhook says about one refund.

    The gateway finds its refund by ``refund_id`` (its own id, which the adapter sent with the
    refund call and the provider echoes: metadata, merchant reference or custom id) or else by
    ``provider_refund_id``. ``amount`` is exact (major units) when the event carries one.
    """

    status: RefundStatus
    provider_refund_id: str | None = None
    refund_id: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentReference:
    """The provider's handles on one payment, as the gateway stored them on the session."""

    #: the provider session the payment came from (Checkout Session, Adyen session, PayPal
    #: order); for a customer-absent charge the payment itself
    session_reference: str
    #: the payment: Stripe PaymentIntent, Adyen pspReference, PayPal authorization (manual
    #: capture) or capture (automatic) id
    payment_id: str | None
    #: the capture of it, when the provider gives captures their own id (PayPal, Adyen)
    capture_id: str | None
    currency: str
    #: what the payment holds (authorized or charged), major units, exact
    amount: Decimal
    #: the gateway session the payment belongs to: adapters send it with captures and voids
    #: where the provider's notification of the outcome names nothing else (Adyen's
    #: modification ``reference``)
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChargeInput:
    """A customer-absent charge of a saved payment method (``sessionType: next_in_series``)."""

    session_id: str
    merchant_id: str
    #: derived from (merchant, Idempotency-Key, provider): the same on every retry
    idempotency_key: str
    request: CheckoutRequest
    #: the provider's customer and saved method (or mandate / recurring detail / vault token)
    #: from the mandate session
    customer_id: str | None
    payment_method_id: str
    #: the mandate session's own provider payment (Adyen: the first payment's pspReference as
    #: ``networkTxReference`` source; Stripe/PayPal ignore it)
    mandate_payment_id: str | None = None
    request_id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """The provider's answer to a charge, capture or void.

    ``status``: ``COMPLETED`` (captured), ``AUTHORIZED`` (held for a manual capture),
    ``PROCESSING`` (the provider has not decided; its webhook will), ``FAILED`` (declined:
    ``failure_reason`` says why, never card data), ``CANCELLED`` (voided).
    """

    provider: str
    status: SessionStatus
    payment_id: str | None = None
    capture_id: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    failure_reason: str | None = None
    raw_status: str | None = None
    #: the provider session a customer-absent charge made, when the provider has one beside
    #: the payment (PayPal: the order; its webhooks name it as their ``reference``)
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class RefundInput:
    """One refund of a captured payment."""

    payment: PaymentReference
    #: the gateway's own refund id: sent along so the provider's webhooks name it
    refund_id: str
    session_id: str
    amount: Decimal
    currency: str
    reason: str | None
    #: derived from (merchant, session, Idempotency-Key, provider)
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """The provider's answer to a refund call (most decide later, by webhook)."""

    provider: str
    status: RefundStatus
    provider_refund_id: str | None = None
    failure_reason: str | None = None
    raw_status: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What the gateway answers a provider's webhook call, in the form the provider expects."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


@runtime_checkable
class EligibilityCheck(Protocol):
    """What an adapter can take beyond its :class:`Capabilities` (per-method currencies,
    decimal places, amount bounds): the one source of truth for routing and creation.

    The router excludes the provider with this reason before ranking (so ``POST
    /routing/simulate`` and the create path agree), and ``create_session`` raises
    :class:`FlowNotSupported` with the same reason. Pure: no I/O, no instance state, so the
    offline tools can call it on the class.
    """

    def eligibility_problem(self, request: CheckoutRequest) -> str | None:
        """Why this adapter cannot take ``request``, or None."""
        ...


@runtime_checkable
class ProviderAdapter(Protocol):
    """One payment provider behind the gateway."""

    name: str
    capabilities: Capabilities

    async def create_session(self, data: CreateSessionInput, *, timeout: float) -> ProviderSession:
        """Open a hosted checkout session; idempotent on ``data.idempotency_key``."""
        ...

    async def cancel_session(self, reference: str, *, timeout: float) -> None:
        """Expire/cancel the provider's session so it can no longer be paid."""
        ...

    async def parse_webhook(
        self, headers: Mapping[str, str], raw_body: bytes
    ) -> list[ProviderEvent]:
        """Verify a webhook call and map it to events; raises WebhookVerificationError."""
        ...

    def webhook_answer(self) -> WebhookAnswer:
        """The acknowledgement body this provider expects."""
        ...


#: :meth:`ApprovalCompleter.complete_approved` intents: take the money now (``captureMethod``
#: automatic), or only reserve it for a later capture by the merchant (``captureMethod`` manual).
CAPTURE = "capture"
AUTHORIZE = "authorize"
#: the intent of a setup session's approval: vault the approved method (PayPal: create the
#: payment token from the approved setup token); the event reports it COMPLETED with
#: ``customer_id`` and ``payment_method_id``
VAULT = "vault"


@runtime_checkable
class ApprovalCompleter(Protocol):
    """Optional: an adapter whose provider moves no money on the payer's approval alone.

    Only adapters that need it implement it (PayPal); the gateway checks with ``isinstance`` and
    calls it once a verified event says ``awaits_completion``. Stripe and Adyen charge during
    their hosted checkout and do not implement it.
    """

    async def complete_approved(
        self, reference: str, *, intent: str, idempotency_key: str, timeout: float
    ) -> ProviderEvent | None:
        """Capture (:data:`CAPTURE`) or authorize (:data:`AUTHORIZE`) the approved payment of
        the provider session ``reference``, or vault the approved method of a setup session
        (:data:`VAULT`).

        Idempotent on ``idempotency_key``: a retry with the same key never moves money twice.
        Returns the outcome as an event (``COMPLETED``; ``PROCESSING`` while the provider's
        status is pending or ambiguous, never success; ``FAILED`` when declined), or ``None``
        when the answer settles nothing and the provider's webhooks will. Raises the
        :class:`ProviderError` tree: a retryable error means "retry later with the same key",
        a rejection that the call cannot succeed as asked.
        """
        ...


@runtime_checkable
class PaymentOperations(Protocol):
    """The calls after the checkout. Every method is idempotent on its ``idempotency_key``
    (a retry never moves money twice) and raises only the :class:`ProviderError` tree; a
    decline is a ``FAILED`` outcome, not an exception. An adapter whose provider cannot do one
    of them raises :class:`FlowNotSupported` naming what is missing."""

    async def charge_saved(self, data: ChargeInput, *, timeout: float) -> PaymentOutcome:
        """Charge (or, with ``captureMethod`` manual, authorize) the saved method of
        ``data`` with the customer absent."""
        ...

    async def capture_payment(
        self,
        payment: PaymentReference,
        amount: Decimal,
        *,
        idempotency_key: str,
        timeout: float,
    ) -> PaymentOutcome:
        """Capture ``amount`` (at most ``payment.amount``; less is a partial capture and the
        rest of the authorization is released) of an authorized payment."""
        ...

    async def void_payment(
        self, payment: PaymentReference, *, idempotency_key: str, timeout: float
    ) -> PaymentOutcome:
        """Release an authorization that was not captured (``CANCELLED``)."""
        ...

    async def refund_payment(self, data: RefundInput, *, timeout: float) -> RefundOutcome:
        """Refund ``data.amount`` of a captured payment."""
        ...
