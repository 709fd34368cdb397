"""Trying the ranked providers in order until one creates the session.

A timeout, connection error, 5xx or 429 moves on to the next candidate; a rejection of our
request (4xx) stops, unless the gateway is configured to fail over on rejections too. A
provider refusing the idempotency key itself (:class:`~providers.base.ProviderKeyConflict`)
stops when its first request is still running there (the merchant is told to retry: the
provider's answer comes then) and moves on otherwise; either way the provider may hold a
session for the key, which the create records as a possible orphan. Every call
has its own timeout and all of them share the request's deadline. Circuit breakers keep calls
away from a provider that keeps failing, and every outcome that is the provider's doing feeds
the routing statistics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from gateway.adapter_boundary import AdapterBoundary
from gateway.circuit import CircuitBreakers
from gateway.domain.errors import (
    ApiError,
    BadGateway,
    Conflict,
    GatewayTimeout,
    ServiceUnavailable,
    Unprocessable,
)
from gateway.domain.models import CheckoutRequest
from gateway.domain.session import Attempt
from gateway.metrics import FAILOVERS
from gateway.routing.decision import Candidate, RoutingDecision
from providers.base import (
    CreateSessionInput,
    FlowNotSupported,
    ProviderAdapter,
    ProviderError,
    ProviderKeyConflict,
    ProviderRejected,
    ProviderSession,
    ProviderTimeout,
    ProviderUnavailable,
    RequestExpired,
)

__all__ = ["Attempts", "ProviderAttempts", "RouterLike", "no_candidate_error", "prefer"]

log = logging.getLogger("gateway.sessions")


class RouterLike(Protocol):
    """What the create path needs of :class:`gateway.routing.service.Router`."""

    def decide(
        self,
        request: CheckoutRequest,
        merchant_id: str,
        *,
        unavailable: dict[str, str],
        dry_run: bool = False,
        held_by: str | None = None,
    ) -> RoutingDecision: ...

    def count(self, decision: RoutingDecision, seconds: float) -> None: ...

    async def record_creation(
        self, provider: str, outcome: str, latency_ms: float, request: CheckoutRequest
    ) -> None: ...

    async def record_payment(
        self, provider: str, success: bool, currency: str | None, country: str | None
    ) -> None: ...


@dataclass(slots=True)
class Attempts:
    """Every try of one create, and what came of them."""

    made: list[Attempt] = field(default_factory=list)
    rejected: ProviderRejected | None = None
    timed_out: bool = False
    #: seconds spent waiting on providers
    waited_s: float = 0.0
    created: ProviderSession | None = None
    chosen: Candidate | None = None
    #: the last refusal of the idempotency key itself
    conflict: ProviderKeyConflict | None = None
    #: providers that hold, or may hold, a session for the key after their try (in order)
    held: list[str] = field(default_factory=list)
    #: the last refusal of the pinned request as too old (the provider holds nothing for it)
    expired: RequestExpired | None = None

    def may_hold(self) -> list[str]:
        """Providers other than the chosen one whose try may have left a session there."""
        chosen = self.chosen.provider if self.chosen is not None else None
        return [p for p in self.held if p != chosen]

    def failure(self, decision: RoutingDecision, deadline: float) -> ApiError:
        """409 when a provider refused the idempotency key (its first request may still be
        running: the merchant's retry gets its answer); 422 ``IDEMPOTENCY_KEY_EXPIRED`` when
        every try refused the pinned request as too old (nothing is held anywhere, and a retry
        with the key would be refused the same way); 503 when every candidate's circuit
        refused the call; 504 when the deadline passed or every try timed out; 502 otherwise."""
        details: dict[str, Any] = {
            "decisionId": decision.decision_id,
            "attempts": [a.model_dump(mode="json") for a in self.made],
        }
        if self.conflict is not None:
            details["providerError"] = {"provider": self.conflict.provider, "code": "key_conflict"}
            details["reason"] = (
                "A provider is still processing an earlier attempt with this Idempotency-Key; "
                "retry with the same key and body"
            )
            return Conflict(details=details, headers={"Retry-After": "2"})
        if self.expired is not None and all(a.outcome == "request_expired" for a in self.made):
            return Unprocessable(
                "The first request with this Idempotency-Key is too old to be completed: the "
                "providers it was sent to hold no session for it. Send the order again with a "
                "new Idempotency-Key",
                code="IDEMPOTENCY_KEY_EXPIRED",
                details=details,
            )
        if self.rejected is not None:
            details["providerError"] = {
                "provider": self.rejected.provider,
                "status": self.rejected.status,
                "code": self.rejected.code,
            }
        if self.made and all(a.outcome == "circuit_open" for a in self.made):
            # every candidate's circuit turned the call away (half-open, probes all taken)
            return ServiceUnavailable.providers_down(details, 1)
        timed_out_only = self.timed_out and all(
            a.outcome in ("timeout", "circuit_open") for a in self.made
        )
        if time.monotonic() >= deadline or timed_out_only:
            return GatewayTimeout(details=details)
        return BadGateway(details=details)


def no_candidate_error(
    decision: RoutingDecision, unavailable: Mapping[str, str], circuits: CircuitBreakers
) -> ApiError:
    """Why a decision without candidates is refused: 503 with ``Retry-After`` when a provider
    that could take the request is only down for now (circuit open: the request is fine, the
    providers are not); 422 ``NO_AVAILABLE_PROVIDER`` when no provider could ever take it."""
    down = [e.provider for e in decision.excluded if unavailable.get(e.provider) == e.reason]
    if down:
        return ServiceUnavailable.providers_down(
            decision.exclusion_details(), circuits.retry_after_s(down)
        )
    return Unprocessable.no_available_provider(decision.exclusion_details())


class ProviderAttempts:
    """Runs the failover loop over a routing decision's ranked candidates."""

    def __init__(
        self,
        adapters: Mapping[str, ProviderAdapter],
        circuits: CircuitBreakers,
        router: RouterLike,
        *,
        provider_timeout_s: float,
        failover_on_rejection: bool,
    ) -> None:
        self.adapters = adapters
        self.circuits = circuits
        self.boundary = AdapterBoundary(circuits)
        self.router = router
        self.provider_timeout_s = provider_timeout_s
        self.failover_on_rejection = failover_on_rejection

    async def run(
        self,
        decision: RoutingDecision,
        inputs: Callable[[str], CreateSessionInput],
        request: CheckoutRequest,
        deadline: float,
        tries: Attempts | None = None,
        sent: Sequence[str] = (),
    ) -> Attempts:
        """Try the candidates in rank order; ``created`` is set when one succeeded. ``tries``
        (filled in place) lets the caller see what was sent even when this raises. Once a
        provider refused the pinned request as too old, only the providers an earlier attempt
        sent it to (``sent``: they may replay a session) are tried: any other would open a
        session that expires at once."""
        tries = tries if tries is not None else Attempts()
        for candidate in decision.ranked:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tries.timed_out = True
                break
            provider = candidate.provider
            if tries.expired is not None and provider not in sent:
                continue
            if tries.made:  # the previous candidate produced no session: fail over
                failed = tries.made[-1]
                FAILOVERS.labels(failed.provider, provider, failed.outcome).inc()
            if not await self.circuits.admit(provider):
                tries.made.append(
                    Attempt(provider=provider, outcome="circuit_open", durationMs=0.0)
                )
                continue
            timeout = min(self.provider_timeout_s, remaining)
            created = await self._attempt(
                self.adapters[provider], inputs(provider), timeout, tries, request
            )
            if created is not None:
                tries.created, tries.chosen = created, candidate
                return tries
            if tries.rejected is not None and not self.failover_on_rejection:
                break
            if tries.conflict is not None and tries.conflict.in_flight:
                break
        return tries

    async def _attempt(
        self,
        adapter: ProviderAdapter,
        data: CreateSessionInput,
        timeout: float,
        tries: Attempts,
        request: CheckoutRequest,
    ) -> ProviderSession | None:
        provider = adapter.name
        began = time.perf_counter()
        try:
            result = await self.boundary.call(
                provider, "create_session", lambda: adapter.create_session(data, timeout=timeout)
            )
        except ProviderError as exc:
            tries.waited_s += time.perf_counter() - began
            elapsed = (time.perf_counter() - began) * 1000
            tries.made.append(
                Attempt(
                    provider=provider,
                    outcome=exc.outcome,
                    durationMs=round(elapsed, 2),
                    error=exc.reason[:200],
                )
            )
            if isinstance(exc, ProviderTimeout):
                tries.timed_out = True
            if isinstance(exc, RequestExpired):
                tries.expired = exc
            elif isinstance(exc, ProviderRejected):
                tries.rejected = exc
            if isinstance(exc, ProviderKeyConflict):
                tries.conflict = exc
            if _may_have_created(exc) and provider not in tries.held:
                tries.held.append(provider)
            if not isinstance(exc, FlowNotSupported | ProviderKeyConflict | RequestExpired):
                await self.router.record_creation(provider, exc.outcome, elapsed, request)
            log.warning(
                "provider attempt failed", extra={"provider": provider, "outcome": exc.outcome}
            )
            return None
        tries.waited_s += time.perf_counter() - began
        elapsed = (time.perf_counter() - began) * 1000
        tries.made.append(
            Attempt(provider=provider, outcome="created", durationMs=round(elapsed, 2))
        )
        if provider not in tries.held:
            tries.held.append(provider)
        await self.router.record_creation(provider, "created", elapsed, request)
        return result


def prefer(decision: RoutingDecision, providers: Sequence[str]) -> RoutingDecision:
    """``decision`` with the candidates of ``providers`` moved to the front, in that order:
    an earlier attempt sent them a create under this key, so they may already hold the
    session and replay it."""
    if not providers:
        return decision
    rank = {name: i for i, name in enumerate(providers)}
    first = sorted(
        (c for c in decision.ranked if c.provider in rank), key=lambda c: rank[c.provider]
    )
    rest = [c for c in decision.ranked if c.provider not in rank]
    return replace(decision, ranked=(*first, *rest))


def _may_have_created(exc: ProviderError) -> bool:
    """Did the provider perhaps create the session before this failure? After a timeout (it
    may answer late), a refused key (an earlier request with it ran there), or an answer that
    is a 5xx or unreadable (the provider ran the request, and may have created the session
    before failing: Stripe says so of its 500s): yes, perhaps. A connection that failed without
    an answer, a 429 or a rejection created nothing to go back for."""
    if isinstance(exc, ProviderUnavailable):
        return exc.status is not None
    return isinstance(exc, ProviderTimeout | ProviderKeyConflict)
