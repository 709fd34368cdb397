"""In-memory state of the sandbox providers: sessions, idempotency records, faults, counters.

One :class:`SandboxState` lives on the sandbox application (``SANDBOX_STATE`` app key) and is
shared by every emulated provider module. It is deliberately simple: a single event loop owns it,
so plain dicts are enough and no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from gateway.domain.money import exponent as iso_exponent
from gateway.domain.money import format_major, from_minor
from gateway.settings import SANDBOX_SECRETS

__all__ = [
    "OUTCOMES",
    "SANDBOX_STATE",
    "FaultSettings",
    "IdempotencyRecord",
    "SandboxConfig",
    "SandboxSession",
    "SandboxState",
]

_log = logging.getLogger("providers.sandbox")

#: What a customer (or the clock) can do to a hosted session; ``notify`` receives one of these.
OUTCOMES = ("paid", "declined", "cancelled", "expired")

_T = TypeVar("_T")

#: ``async def notify(state, session, outcome)`` of one emulated provider module.
Notifier = Callable[["SandboxState", "SandboxSession", str], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class FaultSettings:
    """Faults injected into one provider's API (not into the pay page or the admin API).

    ``error_rate`` and ``rate_limit_rate`` are probabilities in ``0..1``; ``timeout`` holds the
    request until the client gives up; ``down`` drops the connection without an answer.
    ``charge_skew`` (minor units, may be negative) makes the provider lie about money: a payer's
    Pay charges the session's amount plus the skew, and every later answer and webhook (Stripe's
    and Adyen's payment webhooks, PayPal's capture/authorization and its webhook) reports that
    amount, in the provider's own well-formed fields. It applies to sessions paid while it is set.
    """

    latency_ms: int = 0
    #: delay *inside* the provider's handler, after its idempotency claim (so a concurrent retry
    #: with the same key meets an in-flight request).
    processing_ms: int = 0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_seconds: int = 1
    timeout: bool = False
    down: bool = False
    charge_skew: int = 0
    #: customer-absent charges (Stripe off-session PaymentIntents, Adyen ContAuth, PayPal vault
    #: charges) are declined by the issuer
    decline_off_session: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultSettings:
        """Build from the admin API's camelCase JSON; raises ValueError on a bad value."""
        allowed = {
            "provider",
            "latencyMs",
            "processingMs",
            "errorRate",
            "rateLimitRate",
            "retryAfter",
            "timeout",
            "down",
            "chargeSkew",
            "declineOffSession",
        }
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(unknown)}")
        settings = cls()
        if "latencyMs" in data:
            settings.latency_ms = _int(data["latencyMs"], "latencyMs", 0, 600_000)
        if "processingMs" in data:
            settings.processing_ms = _int(data["processingMs"], "processingMs", 0, 600_000)
        if "errorRate" in data:
            settings.error_rate = _rate(data["errorRate"], "errorRate")
        if "rateLimitRate" in data:
            settings.rate_limit_rate = _rate(data["rateLimitRate"], "rateLimitRate")
        if "retryAfter" in data:
            settings.retry_after_seconds = _int(data["retryAfter"], "retryAfter", 0, 3600)
        if "chargeSkew" in data:
            settings.charge_skew = _int(data["chargeSkew"], "chargeSkew", -1_000_000, 1_000_000)
        for name in ("timeout", "down"):
            if name in data:
                if not isinstance(data[name], bool):
                    raise ValueError(f"{name} must be a boolean")
                setattr(settings, name, data[name])
        if "declineOffSession" in data:
            if not isinstance(data["declineOffSession"], bool):
                raise ValueError("declineOffSession must be a boolean")
            settings.decline_off_session = data["declineOffSession"]
        return settings

    def to_json(self) -> dict[str, Any]:
        """The admin API representation (camelCase)."""
        return {
            "latencyMs": self.latency_ms,
            "processingMs": self.processing_ms,
            "errorRate": self.error_rate,
            "rateLimitRate": self.rate_limit_rate,
            "retryAfter": self.retry_after_seconds,
            "timeout": self.timeout,
            "down": self.down,
            "chargeSkew": self.charge_skew,
            "declineOffSession": self.decline_off_session,
        }

    def copy(self) -> FaultSettings:
        """An independent copy (the admin API mutates the live settings, never the config's)."""
        return FaultSettings(
            self.latency_ms,
            self.processing_ms,
            self.error_rate,
            self.rate_limit_rate,
            self.retry_after_seconds,
            self.timeout,
            self.down,
            self.charge_skew,
            self.decline_off_session,
        )

    @property
    def active(self) -> bool:
        """True when any fault is set."""
        return bool(
            self.latency_ms
            or self.processing_ms
            or self.error_rate
            or self.rate_limit_rate
            or self.timeout
            or self.down
            or self.charge_skew
        )


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}")
    return value


def _rate(value: Any, name: str) -> float:
    # A probability, not money: a float is the right type here.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in 0..1")
    return float(value)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox reaches the gateway and how it presents itself.

    ``gateway_base_url``: webhooks are POSTed to ``{gateway_base_url}/api/v1/webhooks/{provider}``.
    ``public_url``: the root URL browsers reach the sandbox's host at (without ``/sandbox``);
    checkout URLs are ``{public_url}/sandbox/pay/{provider}/{id}``. ``None`` derives it from the
    incoming request's scheme and host, which suits tests on random ports.
    """

    gateway_base_url: str | None = None
    public_url: str | None = None
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: SANDBOX_SECRETS)
    faults: Mapping[str, FaultSettings] = field(default_factory=dict)
    webhook_timeout_seconds: float = 5.0
    #: how often sessions past their expiry are expired (and their webhook sent); 0 disables.
    expiry_sweep_seconds: float = 5.0
    #: upper bound on how long a ``timeout`` fault holds a request.
    timeout_fault_max_seconds: float = 300.0
    #: seed for the fault dice, for reproducible runs; ``None`` = random.
    random_seed: int | None = None

    def secret(self, provider: str, name: str) -> str:
        """One of the sandbox credentials (``SANDBOX_SECRETS`` layout); KeyError when missing."""
        return self.secrets[provider][name]


@dataclass(slots=True)
class SandboxSession:
    """A hosted checkout session at an emulated provider.

    ``amount`` is what the provider itself takes: integer minor units (Stripe, Adyen) or a decimal
    string (PayPal). ``minor_exponent`` says how to display an integer amount (the provider's own
    table; ISO 4217 when ``None``).
    """

    provider: str
    id: str
    amount: int | str
    currency: str
    success_url: str
    failure_url: str
    expires_at: datetime
    status: str = "open"
    order_reference: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    raw_request: Any = None
    created_at: datetime = field(default_factory=_utcnow)
    minor_exponent: int | None = None
    #: provider-specific extras (e.g. the stored response object of Stripe)
    extra: dict[str, Any] = field(default_factory=dict)
    #: a setup session: saves a payment method and charges nothing (the pay page says "Save")
    saves_only: bool = False

    @property
    def gateway_session_id(self) -> str | None:
        """The gateway's session id the adapter put into the provider's metadata."""
        return self.metadata.get("gateway_session_id") or self.metadata.get("gatewaySessionId")

    def is_expired(self, now: datetime | None = None) -> bool:
        """True when expired explicitly or past ``expires_at`` while still open."""
        if self.status == "expired":
            return True
        return self.status == "open" and (now or _utcnow()) >= self.expires_at

    def display_amount(self) -> str:
        """The amount in major units with the currency's decimals, for the pay page."""
        if isinstance(self.amount, str):
            return self.amount
        exp = self.minor_exponent
        if exp is None:
            try:
                exp = iso_exponent(self.currency.upper())
            except ValueError:
                exp = 2
        return format_major(Decimal(self.amount).scaleb(-exp), exp)


@dataclass(slots=True)
class IdempotencyRecord:
    """A provider-side idempotency key: the request's fingerprint and, once done, its answer."""

    fingerprint: str
    created_at: datetime = field(default_factory=_utcnow)
    in_flight: bool = True
    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


class SandboxState:
    """Everything the emulated providers remember, per provider."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.sessions: dict[str, dict[str, SandboxSession]] = {}
        self.idempotency: dict[str, dict[str, IdempotencyRecord]] = {}
        self.faults: dict[str, FaultSettings] = {}
        self.sessions_created: Counter[str] = Counter()
        self.webhooks_sent: Counter[str] = Counter()
        self.webhooks_failed: Counter[str] = Counter()
        self.rng = random.Random(config.random_seed)  # fault dice, not crypto
        #: the client webhooks are sent with; opened by the sandbox app's cleanup context.
        self.client: aiohttp.ClientSession | None = None
        #: each loaded provider module's ``notify``, registered by the sandbox app.
        self.notifiers: dict[str, Notifier] = {}
        #: an emulator's own state beyond sessions (e.g. PayPal's tokens), keyed by provider.
        self.extensions: dict[str, Any] = {}
        #: work running in the background (webhook deliveries, see :meth:`send_later`).
        self.background: set[asyncio.Task[Any]] = set()
        self.reset_faults()

    # sessions -------------------------------------------------------------------------------

    def _charge(self, session: SandboxSession) -> None:
        """Apply the provider's ``charge_skew`` fault to what a payment of ``session`` takes."""
        fault = self.faults.get(session.provider)
        skew = fault.charge_skew if fault is not None else 0
        if not skew:
            return
        if isinstance(session.amount, int):
            session.amount += skew
            stored = session.extra.get("object")  # Stripe's checkout.session object
            if isinstance(stored, dict) and isinstance(stored.get("amount_total"), int):
                session.extra["object"] = {**stored, "amount_total": stored["amount_total"] + skew}
            return
        amount = Decimal(session.amount)  # a decimal string (PayPal): skew its last place
        places = max(0, -int(amount.as_tuple().exponent))
        session.amount = format_major(amount + from_minor(skew, places), places)

    def add_session(self, session: SandboxSession) -> None:
        """Store a newly created session and count it."""
        self.sessions.setdefault(session.provider, {})[session.id] = session
        self.sessions_created[session.provider] += 1

    def get_session(self, provider: str, session_id: str) -> SandboxSession | None:
        """The session, or ``None``."""
        return self.sessions.get(provider, {}).get(session_id)

    async def finish(self, session: SandboxSession, outcome: str) -> bool:
        """Move an open session to ``outcome`` and send the provider's webhook.

        Returns False (and changes nothing) when the session is no longer open. A failing
        webhook is logged and counted, never raised: the customer's redirect must not break.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        if session.status != "open":
            return False
        if outcome == "paid":
            self._charge(session)
        session.status = outcome
        notify = self.notifiers.get(session.provider)
        if notify is None:
            return True
        try:
            async with asyncio.timeout(self.config.webhook_timeout_seconds):
                await notify(self, session, outcome)
        except Exception as exc:
            self.webhooks_failed[session.provider] += 1
            _log.warning(
                "sandbox webhook failed provider=%s session=%s outcome=%s error=%s",
                session.provider,
                session.id,
                outcome,
                type(exc).__name__,
            )
        return True

    def send_later(
        self, provider: str, send: Callable[[], Awaitable[None]], delay: float = 0.0
    ) -> None:
        """Run ``send`` (webhook deliveries) in the background after ``delay`` seconds, the way
        a provider notifies some time after answering the API call that caused the events.

        Failures are logged and counted like :meth:`finish`'s; the sandbox app's cleanup
        cancels deliveries still pending.
        """

        async def run() -> None:
            try:
                await asyncio.sleep(delay)
                async with asyncio.timeout(self.config.webhook_timeout_seconds):
                    await send()
            except Exception as exc:
                self.webhooks_failed[provider] += 1
                _log.warning(
                    "sandbox webhook failed provider=%s error=%s", provider, type(exc).__name__
                )

        task = asyncio.get_running_loop().create_task(run(), name=f"sandbox-{provider}-webhook")
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def detached(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` (a create under a claimed idempotency key) to its end even when the
        caller hangs up: a provider does not stop creating a session because its client timed
        out, and a later retry with the key gets the saved answer."""
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    def due_for_expiry(self, now: datetime | None = None) -> list[SandboxSession]:
        """Open sessions whose ``expires_at`` has passed."""
        moment = now or _utcnow()
        return [
            s
            for by_id in self.sessions.values()
            for s in by_id.values()
            if s.status == "open" and moment >= s.expires_at
        ]

    # idempotency ----------------------------------------------------------------------------

    def idempotency_get(self, provider: str, key: str) -> IdempotencyRecord | None:
        """The record of ``key`` at ``provider``, or ``None``."""
        return self.idempotency.get(provider, {}).get(key)

    def idempotency_begin(self, provider: str, key: str, fingerprint: str) -> IdempotencyRecord:
        """Claim ``key`` for a request now executing."""
        record = IdempotencyRecord(fingerprint=fingerprint)
        self.idempotency.setdefault(provider, {})[key] = record
        return record

    def idempotency_finish(
        self,
        provider: str,
        key: str,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Save the answer of a claimed key; later retries replay it."""
        record = self.idempotency.get(provider, {}).get(key)
        if record is not None:
            record.in_flight = False
            record.status = status
            record.body = body
            record.headers = dict(headers or {})

    def idempotency_abandon(self, provider: str, key: str) -> None:
        """Forget a claimed key whose request saved no result (e.g. failed validation)."""
        self.idempotency.get(provider, {}).pop(key, None)

    # faults ---------------------------------------------------------------------------------

    def fault(self, provider: str) -> FaultSettings:
        """The fault settings of ``provider`` (a no-fault default when none are set)."""
        return self.faults.get(provider) or FaultSettings()

    def set_fault(self, provider: str, settings: FaultSettings) -> None:
        """Replace the faults of ``provider``."""
        self.faults[provider] = settings

    async def processing_delay(self, provider: str) -> None:
        """Sleep for the provider's ``processing_ms`` fault; emulators call it mid-request."""
        fault = self.faults.get(provider)
        if fault is not None and fault.processing_ms:
            await asyncio.sleep(fault.processing_ms / 1000)

    async def creation_delay(self, provider: str, key: str | None) -> None:
        """:meth:`processing_delay` inside a create claimed under ``key``: a create that does
        not get past it gives its idempotency key up again."""
        try:
            await self.processing_delay(provider)
        except BaseException:
            if key is not None:
                self.idempotency_abandon(provider, key)
            raise

    def reset_faults(self) -> None:
        """Back to the faults given at start-up (``SandboxConfig.faults``)."""
        self.faults = {name: f.copy() for name, f in self.config.faults.items()}

    # webhooks -------------------------------------------------------------------------------

    async def send_webhook(self, provider: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST a signed webhook to the gateway; returns the (2xx) HTTP status.

        Raises ``RuntimeError`` when no gateway URL or client is configured or the gateway does
        not answer 2xx, and lets aiohttp/timeout errors through; :meth:`finish` logs them.
        """
        url = self.webhook_url(provider)
        if url is None:
            raise RuntimeError("no gateway_base_url configured for sandbox webhooks")
        if self.client is None:
            raise RuntimeError("the sandbox app is not running (no webhook client)")
        timeout = aiohttp.ClientTimeout(total=self.config.webhook_timeout_seconds)
        async with self.client.post(
            url, data=body, headers=dict(headers), timeout=timeout
        ) as response:
            await response.read()
            status = response.status
        if not 200 <= status < 300:
            raise RuntimeError(f"gateway answered HTTP {status}")
        self.webhooks_sent[provider] += 1
        return status

    # views ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The admin stats document."""
        return {
            "sessionsCreated": dict(self.sessions_created),
            "webhooksSent": dict(self.webhooks_sent),
            "webhooksFailed": dict(self.webhooks_failed),
        }

    def public_base(self, request: web.Request) -> str:
        """Where browsers reach the sandbox host (no trailing slash, no ``/sandbox``)."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    def checkout_url(self, request: web.Request, provider: str, session_id: str) -> str:
        """The hosted pay page URL of a session."""
        return f"{self.public_base(request)}/sandbox/pay/{provider}/{session_id}"

    def webhook_url(self, provider: str) -> str | None:
        """Where the gateway takes this provider's webhooks, or ``None`` when not configured."""
        if not self.config.gateway_base_url:
            return None
        return f"{self.config.gateway_base_url.rstrip('/')}/api/v1/webhooks/{provider}"


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a detached task's failure as seen (its caller may have gone)."""
    if not task.cancelled() and task.exception() is not None:
        _log.warning("sandbox request failed after its caller left: %r", task.exception())


SANDBOX_STATE: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)
