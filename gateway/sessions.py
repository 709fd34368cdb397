"""Creating and reading checkout sessions: the one straight path of DESIGN.md.

claim the Idempotency-Key -> guard the order reference -> route -> try providers in rank order
(circuit- and deadline-aware) -> store the session -> complete the key. Every exit either
completes the claim with the final answer or gives it up, so no key is left blocked and no
retry can create a second provider session: each provider call carries a key derived from
(merchant, Idempotency-Key, provider), and everything else that could differ between tries
(the creation time the expiry derives from, the request id) is pinned with the claim by the
first attempt (:class:`~gateway.store.base.CreatePin`), so a retry from any process re-sends
the same request and the provider replays its first answer. A claim given up after provider
calls keeps its pin and the providers it called; the retry tries those first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson

from gateway.attempts import Attempts, ProviderAttempts, RouterLike, no_candidate_error, prefer
from gateway.auth import Merchant
from gateway.authorizations import warning_at
from gateway.background import drain
from gateway.circuit import CircuitBreakers
from gateway.domain.errors import (
    Conflict,
    Unprocessable,
)
from gateway.domain.lifecycle import EXPIRABLE
from gateway.domain.models import CheckoutRequest
from gateway.domain.session import (
    FINAL_STATUSES,
    OrphanSession,
    RoutingSummary,
    SessionAmount,
    SessionRecord,
    SessionStatus,
    Transition,
    isoformat,
    utcnow,
)
from gateway.idempotency import (
    RecentDurations,
    derived_provider_key,
    fingerprint,
    in_flight_retry_after,
    session_id_for,
)
from gateway.lifecycle import LifecycleService
from gateway.metrics import (
    IDEMPOTENCY,
    SESSION_CREATE_OVERHEAD,
    SESSION_TRANSITIONS,
    SESSIONS_CREATED,
    merchant_label,
)
from gateway.notifications.events import UPDATED
from gateway.orphans import OrphanCleanup, OrphanCleanupStore
from gateway.routing.decision import RoutingDecision
from gateway.series import (
    Charged,
    Mandate,
    SeriesCharges,
    find_mandate,
    report_mismatch,
    settled,
)
from gateway.settings import Settings
from gateway.store.base import (
    ORDER_CLAIM_PREFIX,
    ClaimKind,
    Completion,
    CreatePin,
    CreationStore,
    OrphanJob,
    OutboxItem,
    SessionCursor,
    StoredResponse,
    StoreUnavailable,
)
from providers.base import (
    ChargeInput,
    CreateSessionInput,
    ProviderAdapter,
    ProviderSession,
)

__all__ = ["CreateOutcome", "SessionService", "SessionServiceStore"]

log = logging.getLogger("gateway.sessions")
#: how long a failed create waits to give its claim up even past its deadline: a store that
#: answers does it in milliseconds, so a retry right after the answer finds the key free
_GIVE_UP_GRACE_S = 0.25
#: the share of the claim's lease a create must have left to write its session: past it, its
#: order reservation may have lapsed and been taken over by another key (no store can refuse
#: the late session: it lies elsewhere than the reservation), so it answers 503 instead
_COMMIT_LEASE_MARGIN = 0.1
#: how many of an order's sessions a customer-absent charge counts for its provider key
_ORDER_SESSIONS_SEEN = 100


#: pauses between the attempts to give a failed create's claim up while the store does not
#: answer: a Redis failover or a database restart takes seconds, and every attempt only drops
#: what the request's own token still holds. A claim not given up by then (7.5 s) is kept
#: until its lease ends, and the merchant's retry answers 409 meanwhile.
_GIVE_UP_PAUSES_S = (0.5, 1.0, 2.0, 4.0)


async def _persist(step: Callable[[], Awaitable[None]], failure: str) -> None:
    """``step()`` (giving a claim up: safe to repeat), again after each pause of
    :data:`_GIVE_UP_PAUSES_S` while the store is unavailable; ``failure`` is logged at the end
    (or when cancelled: the process is stopping)."""
    for pause in (*_GIVE_UP_PAUSES_S, None):
        try:
            await asyncio.shield(step())
            return
        except StoreUnavailable:
            if pause is None:
                break
            try:
                await asyncio.sleep(pause)
            except asyncio.CancelledError:
                break
        except asyncio.CancelledError:
            break
    log.warning(failure)


@dataclass(frozen=True, slots=True)
class _Routed:
    """A routing decision, the providers the circuits kept out of it, the time it took."""

    decision: RoutingDecision
    unavailable: dict[str, str]
    seconds: float


@dataclass(slots=True)
class CreateOutcome:
    """The HTTP answer to a create call, plus what the access log wants to know."""

    status: int
    body: bytes
    location: str | None = None
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    provider: str | None = None
    decision_id: str | None = None
    attempts: int = 0
    #: seconds spent waiting on providers (the rest of a create is the gateway's own time)
    provider_wait_s: float = 0.0


class SessionServiceStore(CreationStore, OrphanCleanupStore, Protocol):
    """What creating and reading sessions needs of the records: the create path, the
    sessions, and the orphan queue its clean-up works through."""


class SessionService:
    """Creates and reads sessions; owns no HTTP and no Redis, only the seams."""

    def __init__(
        self,
        settings: Settings,
        store: SessionServiceStore,
        router: RouterLike,
        adapters: dict[str, ProviderAdapter],
        circuits: CircuitBreakers,
        lifecycle: LifecycleService | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.router = router
        self.adapters = adapters
        self.circuits = circuits
        self.attempts = ProviderAttempts(
            adapters,
            circuits,
            router,
            provider_timeout_s=settings.provider_timeout_seconds,
            failover_on_rejection=settings.failover_on_rejection,
        )
        #: expiry on read and the ``payment_session.created`` notification (None: neither)
        self.lifecycle = lifecycle
        #: next_in_series: the one charge at the mandate's provider
        self.series = SeriesCharges(
            adapters,
            circuits,
            self.attempts.boundary,
            provider_timeout_s=settings.provider_timeout_seconds,
        )
        self.orphans = OrphanCleanup(
            store,
            adapters,
            boundary=self.attempts.boundary,
            timeout_s=settings.provider_timeout_seconds,
        )
        self._lease_ms = settings.idempotency_lease_seconds * 1000
        self._create_durations = RecentDurations()
        self._giving_up: set[asyncio.Task[None]] = set()

    async def create(
        self,
        merchant: Merchant,
        idempotency_key: str,
        request: CheckoutRequest,
        *,
        request_id: str,
    ) -> CreateOutcome:
        """Create a session, or replay / refuse per the idempotency rules."""
        started = time.perf_counter()
        # measured from before the claim, so the leases (on the store's clock) end later
        commit_by = time.monotonic() + self._lease_ms / 1000 * (1 - _COMMIT_LEASE_MARGIN)
        scope = merchant.merchant_id
        token = os.urandom(16).hex()  # unique per attempt: only its holder completes or releases
        guarded = request.orderReference if self.settings.order_reference_guard else None
        # routed before the claim, so the claim records where the first call will go: if this
        # process dies mid-call, a retry goes back there and the provider replays its session
        # (not counted in the decision metrics unless acted on: a replay acts on none)
        mandate = None
        if request.sessionType == "next_in_series":
            mandate = await find_mandate(self.store, scope, request)
        routed = await self._decide(merchant, request, mandate)
        first = routed.decision.ranked[0].provider if routed.decision.ranked else None
        proposed = CreatePin(created_at=utcnow(), request_id=request_id, first=first)
        begun = await self.store.begin_create(
            scope,
            idempotency_key,
            fingerprint(request),
            token=token,
            lease_ms=self._lease_ms,
            order_ref=guarded,
            pin=proposed,
            pin_ttl_ms=self.settings.idempotency_ttl_seconds * 1000,
        )
        claim = begun.claim
        if claim.kind is ClaimKind.REPLAY:
            IDEMPOTENCY.labels("replay").inc()
            assert claim.response is not None
            stored = claim.response
            return CreateOutcome(stored.status, stored.body, stored.location, replayed=True)
        if claim.kind is ClaimKind.MISMATCH:
            IDEMPOTENCY.labels("mismatch").inc()
            raise Unprocessable.idempotency_mismatch()
        if claim.kind is ClaimKind.IN_FLIGHT:
            IDEMPOTENCY.labels("in_flight").inc()
            retry = in_flight_retry_after(
                claim.retry_after_ms or 1000,
                lease_s=self._lease_ms / 1000,
                deadline_s=self.settings.request_deadline_seconds,
                typical_s=self._create_durations.p95(),
            )
            raise Conflict(
                details="A request with this Idempotency-Key is still being processed",
                headers={"Retry-After": str(retry)},
            )
        IDEMPOTENCY.labels("resumed" if begun.resumed else "new").inc()
        pin = begun.pin or proposed
        if begun.resumed:
            pin = pin.resumed()
        self.router.count(routed.decision, routed.seconds)
        tries = Attempts()
        try:
            if begun.resumed:
                acknowledged = await self._acknowledged(merchant, idempotency_key, token, guarded)
                if acknowledged is not None:
                    return acknowledged
            if begun.order_holder is not None:
                await self._take_over_order(
                    scope, request.orderReference, begun.order_holder, token
                )
            if mandate is not None:
                outcome = await self._charge_saved(
                    merchant,
                    idempotency_key,
                    request,
                    token,
                    pin,
                    tries,
                    routed,
                    mandate,
                    commit_by,
                )
            else:
                outcome = await self._route_and_create(
                    merchant, idempotency_key, request, token, pin, tries, routed, commit_by
                )
        except BaseException:
            # a provider may hold this key's parameters: keep the pin for the retry
            keep_pin = begun.resumed or bool(tries.held)
            left = self.settings.request_deadline_seconds - (time.perf_counter() - started)
            await self._give_up(scope, idempotency_key, token, guarded, keep_pin, tries, left)
            raise
        elapsed = time.perf_counter() - started
        self._create_durations.add(elapsed)
        SESSION_CREATE_OVERHEAD.observe(max(0.0, elapsed - outcome.provider_wait_s))
        return outcome

    async def _acknowledged(
        self, merchant: Merchant, key: str, token: str, order_ref: str | None
    ) -> CreateOutcome | None:
        """The 201 an earlier attempt of ``key`` answered, when it stored its session but lost
        its claim before completing the key (its lease lapsed and another retry took the key
        over): the session exists, so this is answered from it, byte for byte what the
        earlier attempt answered, and completes the key. None when there is no such session.
        Only a resumed claim can be in that state: the one extra read is paid by retries only."""
        scope = merchant.merchant_id
        session_id = session_id_for(scope, key)
        record = await self.store.get_session(session_id)
        if record is None:
            return None
        response = StoredResponse(201, _created_body(record), f"/api/v1/sessions/{session_id}")
        # the session is stored already: commit_create leaves it as it is (and its expiry and
        # notifications were enqueued with it); it binds the order and completes the key
        await self.store.commit_create(
            record,
            Completion(
                scope=scope,
                key=key,
                token=token,
                response=response,
                ttl_s=self.settings.idempotency_ttl_seconds,
                order_ref=order_ref,
                order_ttl_s=self.settings.session_retention_seconds,
            ),
            ttl_s=self.settings.session_retention_seconds,
            expires_at=None,
        )
        log.warning(
            "answered a create from the session an earlier attempt stored without completing",
            extra={"session_id": session_id},
        )
        return CreateOutcome(201, response.body, response.location, provider=record.provider)

    async def _give_up(
        self,
        scope: str,
        key: str,
        token: str,
        guarded: str | None,
        keep_pin: bool,
        tries: Attempts,
        left_s: float,
    ) -> None:
        """Release the order and the key (or keep its pin) after a failed create, waiting at
        most what is left of the request's deadline (at least :data:`_GIVE_UP_GRACE_S`): a
        store that does not answer must not hold the failure's answer back. What is not done
        by then goes on in the background; a claim never given up frees when its lease ends."""

        async def steps() -> None:
            if guarded is not None:
                await self._release_order_quietly(scope, guarded, token)
            if keep_pin:
                await self._abandon_quietly(scope, key, token, tries.held)
            else:
                await self._release_quietly(scope, key, token)

        task = asyncio.ensure_future(steps())
        self._giving_up.add(task)
        task.add_done_callback(self._giving_up.discard)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), max(_GIVE_UP_GRACE_S, left_s))

    async def close(self, timeout: float) -> None:
        """Let claims still being given up (and orphan clean-ups) finish for up to
        ``timeout`` seconds, then cancel the rest."""
        await drain(list(self._giving_up), timeout)
        await self.orphans.close(timeout)

    async def _release_quietly(self, scope: str, key: str, token: str) -> None:
        await _persist(
            lambda: self.store.release(scope, key, token),
            "could not release an idempotency claim; its lease will expire",
        )

    async def _abandon_quietly(self, scope: str, key: str, token: str, sent: list[str]) -> None:
        await _persist(
            lambda: self.store.abandon_create(scope, key, token, sent=sent),
            "could not give up an idempotency claim; its lease will expire",
        )

    async def _release_order_quietly(self, scope: str, order_ref: str, token: str) -> None:
        await _persist(
            lambda: self.store.release_order(scope, order_ref, token),
            "could not release an order reservation; its lease will expire",
        )

    async def _take_over_order(self, scope: str, order_ref: str, holder: str, token: str) -> None:
        """The order is reserved by ``holder``: a request in flight or an earlier session.
        Conflict while that session can still be paid, is being paid or was paid; after a
        failure, expiry or cancel take the reservation over (the order may be retried)."""
        if holder.startswith(ORDER_CLAIM_PREFIX):
            raise Conflict(
                details="Another request is creating a session for this orderReference",
                headers={"Retry-After": "1"},
            )
        existing = await self.store.get_session(holder)
        if existing is not None and _holds_order(existing, utcnow()):
            raise Conflict(
                details="Resource already exists", extra={"sessionId": existing.sessionId}
            )
        if not await self.store.replace_order(
            scope, order_ref, holder, token, lease_ms=self._lease_ms
        ):
            raise Conflict(
                details="Another request is creating a session for this orderReference",
                headers={"Retry-After": "1"},
            )

    async def _route_and_create(
        self,
        merchant: Merchant,
        idempotency_key: str,
        request: CheckoutRequest,
        token: str,
        pin: CreatePin,
        tries: Attempts,
        routed: _Routed,
        commit_by: float,
    ) -> CreateOutcome:
        settings = self.settings
        started = time.monotonic()
        deadline = started + settings.request_deadline_seconds
        decision, unavailable = prefer(routed.decision, pin.sent), routed.unavailable
        if not decision.ranked:
            raise no_candidate_error(decision, unavailable, self.circuits)
        session_id = session_id_for(merchant.merchant_id, idempotency_key)
        created_at = pin.created_at
        expires_at = created_at + timedelta(seconds=request.expiresIn)

        def inputs(provider: str) -> CreateSessionInput:
            return CreateSessionInput(
                session_id=session_id,
                merchant_id=merchant.merchant_id,
                idempotency_key=derived_provider_key(
                    merchant.merchant_id, idempotency_key, provider
                ),
                request=request,
                expires_at=expires_at,
                request_id=pin.request_id,
                return_url=f"{settings.base_url}/api/v1/sessions/{session_id}/return",
                created_at=created_at,
            )

        await self.attempts.run(decision, inputs, request, deadline, tries, sent=pin.sent)
        if tries.created is None or tries.chosen is None:
            raise tries.failure(decision, deadline)
        orphans = _orphans(tries, pin)
        jobs = self.orphans.jobs(session_id, orphans, inputs)
        if time.monotonic() > commit_by:
            # stalled (a pause of the process): the order may have another session by now.
            # The key keeps its pin and providers: a retry replays this provider session.
            log.error(
                "a create outlived its lease before writing its session; answered 503",
                extra={"merchant": merchant.merchant_id, "session_id": session_id},
            )
            raise StoreUnavailable("the create outlived its claim's lease before its commit")
        outcome = await self._finish(
            merchant,
            request,
            idempotency_key,
            token,
            decision,
            tries.chosen.score,
            tries.created,
            tries,
            session_id,
            created_at,
            expires_at,
            orphans,
            jobs,
        )
        if orphans:
            self.orphans.start(session_id, orphans)
        return outcome

    async def _decide(
        self, merchant: Merchant, request: CheckoutRequest, mandate: Mandate | None = None
    ) -> _Routed:
        """The routing decision for ``request`` (a dry run: :meth:`create` counts it once it
        acts on it), and the providers its circuits kept out; a next payment in a series goes
        to its mandate's provider only."""
        await self.circuits.refresh()
        started = time.perf_counter()
        unavailable = self.circuits.unavailable()
        decision = self.router.decide(
            request,
            merchant.merchant_id,
            unavailable=unavailable,
            dry_run=True,
            held_by=mandate.provider if mandate is not None else None,
        )
        return _Routed(decision, unavailable, time.perf_counter() - started)

    async def _finish(
        self,
        merchant: Merchant,
        request: CheckoutRequest,
        idempotency_key: str,
        token: str,
        decision: RoutingDecision,
        score: float,
        result: ProviderSession,
        tries: Attempts,
        session_id: str,
        created_at: Any,
        expires_at: Any,
        orphans: list[OrphanSession],
        jobs: list[OrphanJob],
    ) -> CreateOutcome:
        record = _pending(
            merchant, request, decision, score, tries, session_id, created_at, expires_at
        ).model_copy(
            update={
                "provider": result.provider,
                "providerSessionId": result.reference,
                "checkoutUrl": result.checkout_url,
                "orphans": orphans,
            }
        )
        outbox = self.lifecycle.creation_outbox(record) if self.lifecycle else []
        return await self._commit(
            merchant, request, idempotency_key, token, decision, tries, record, outbox, jobs
        )

    async def _commit(
        self,
        merchant: Merchant,
        request: CheckoutRequest,
        idempotency_key: str,
        token: str,
        decision: RoutingDecision,
        tries: Attempts,
        record: SessionRecord,
        outbox: list[OutboxItem],
        jobs: list[OrphanJob],
    ) -> CreateOutcome:
        """Store the new session with its notifications and jobs, bind the order and
        complete the key with the 201 (:func:`_created_body`)."""
        session_id = record.sessionId
        body = _created_body(record)
        location = f"/api/v1/sessions/{session_id}"
        guarded = self.settings.order_reference_guard
        completed = await self.store.commit_create(
            record,
            Completion(
                scope=merchant.merchant_id,
                key=idempotency_key,
                token=token,
                response=StoredResponse(201, body, location),
                ttl_s=self.settings.idempotency_ttl_seconds,
                order_ref=request.orderReference if guarded else None,
                order_ttl_s=self.settings.session_retention_seconds,
            ),
            ttl_s=self.settings.session_retention_seconds,
            expires_at=_sweep_at(record),
            outbox=outbox,
            orphans=jobs,
        )
        if not completed:
            log.error(
                "idempotency lease lost before completion",
                extra={"merchant": merchant.merchant_id, "session_id": session_id},
            )
        SESSIONS_CREATED.labels(
            record.provider, request.currency, merchant_label(merchant.merchant_id)
        ).inc()
        SESSION_TRANSITIONS.labels("none", SessionStatus.PENDING.value, "gateway").inc()
        return CreateOutcome(
            201,
            body,
            location=location,
            provider=record.provider,
            decision_id=decision.decision_id,
            attempts=len(tries.made),
            provider_wait_s=tries.waited_s,
        )

    async def _charge_key(
        self, merchant_id: str, idempotency_key: str, request: CheckoutRequest, begun: datetime
    ) -> str:
        """What the provider key of a customer-absent charge derives from. With the order
        guard: the order and how many of its sessions created before this create ``begun``
        (its pin's time: the same on every retry of the key) ended without holding it (a
        decline frees the order for a new charge). A create that died in its charge leaves no
        session and its order reservation lapses; a create under another key for the same
        order then sends the same provider key with another body, and the provider refuses it
        (409 PROVIDER_KEY_CONFLICT) rather than charge the order twice, while the dead
        create's own retry is replayed. Without the guard: the merchant's key."""
        if not self.settings.order_reference_guard:
            return idempotency_key
        earlier = await self.store.find_sessions(
            merchant_id, request.orderReference, limit=_ORDER_SESSIONS_SEEN
        )
        now = utcnow()
        ended = sum(
            1 for session in earlier if session.createdAt < begun and not _holds_order(session, now)
        )
        return f"order\x00{request.orderReference}\x00{ended}"

    async def _charge_saved(
        self,
        merchant: Merchant,
        idempotency_key: str,
        request: CheckoutRequest,
        token: str,
        pin: CreatePin,
        tries: Attempts,
        routed: _Routed,
        mandate: Mandate,
        commit_by: float,
    ) -> CreateOutcome:
        """A next payment in a series (:mod:`gateway.series`): one charge at the mandate's
        provider, stored with its outcome as the session's status."""
        deadline = time.monotonic() + self.settings.request_deadline_seconds
        session_id = session_id_for(merchant.merchant_id, idempotency_key)
        created_at = pin.created_at
        charge_key = await self._charge_key(
            merchant.merchant_id, idempotency_key, request, created_at
        )

        def inputs(provider: str) -> ChargeInput:
            return ChargeInput(
                session_id=session_id,
                merchant_id=merchant.merchant_id,
                idempotency_key=derived_provider_key(merchant.merchant_id, charge_key, provider),
                request=request,
                customer_id=mandate.customer_id,
                payment_method_id=mandate.payment_method_id,
                mandate_payment_id=mandate.payment_id,
                request_id=pin.request_id,
                created_at=created_at,
            )

        decision = routed.decision
        charged: Charged = await self.series.charge(
            decision, routed.unavailable, inputs, deadline, tries
        )
        if time.monotonic() > commit_by:
            # as in _route_and_create: the key keeps its pin, a retry replays this charge
            log.error(
                "a charge outlived its lease before writing its session; answered 503",
                extra={"merchant": merchant.merchant_id, "session_id": session_id},
            )
            raise StoreUnavailable("the create outlived its claim's lease before its commit")
        pending = _pending(
            merchant,
            request,
            decision,
            charged.candidate.score,
            tries,
            session_id,
            created_at,
            created_at + timedelta(seconds=request.expiresIn),
        ).model_copy(
            update={
                "provider": charged.candidate.provider,
                "mandateSessionId": mandate.session_id,
                "customerId": mandate.customer_id,
                "paymentMethodId": mandate.payment_method_id,
            }
        )
        adapter = self.adapters[charged.candidate.provider]
        record = settled(
            pending,
            charged.outcome,
            max(utcnow(), created_at),
            authorization_days=adapter.capabilities.authorization_days,
        )
        outbox: list[OutboxItem] = []
        if self.lifecycle is not None:
            notifier = self.lifecycle.notifier
            outbox = self.lifecycle.creation_outbox(pending) + notifier.items(
                record, UPDATED, at=record.updatedAt, previous=SessionStatus.PENDING
            )
        outcome = await self._commit(
            merchant, request, idempotency_key, token, decision, tries, record, outbox, []
        )
        SESSION_TRANSITIONS.labels(SessionStatus.PENDING.value, record.status.value, "api").inc()
        report_mismatch(record)
        if record.status in (SessionStatus.COMPLETED, SessionStatus.FAILED):
            await self.router.record_payment(
                record.provider,
                record.status is SessionStatus.COMPLETED,
                record.currency,
                record.billingCountry,
            )
        return outcome

    async def returning(
        self, session_id: str, provider_session_id: str, *, wait: bool = True
    ) -> str | None:
        """Where the customer coming back from the provider's page goes: the merchant's
        success URL once the session is COMPLETED, its failure URL once it FAILED, EXPIRED or
        was CANCELLED. The outcome usually arrives (by webhook) before the customer does; the
        page waits up to ``return_wait_seconds`` for it, then sends a still-open session to the
        success URL, whose page must read the session's status (ambiguous is never success).
        None when the session is unknown or the provider's session id does not match.
        ``wait=False``: answer from the current state at once."""
        deadline = time.monotonic() + (self.settings.return_wait_seconds if wait else 0.0)
        while True:
            record = await self.store.get_session(session_id)
            if record is None or record.providerSessionId != provider_session_id:
                return None
            if self.lifecycle is not None:
                record = await self.lifecycle.expire_if_due(record)
            success = record.successUrl
            failure = record.failureUrl or success
            if success is None or failure is None:
                return None
            if record.status is SessionStatus.COMPLETED:
                return success
            if record.status in FINAL_STATUSES:
                return failure
            if time.monotonic() >= deadline:
                return success
            await asyncio.sleep(0.1)

    async def get(self, merchant: Merchant, session_id: str) -> SessionRecord | None:
        """The merchant's own session, or None (another merchant's reads as unknown)."""
        record = await self.store.get_session(session_id)
        if record is None or record.merchantId != merchant.merchant_id:
            return None
        if self.lifecycle is not None:
            record = await self.lifecycle.expire_if_due(record)
        return record

    async def find(
        self,
        merchant: Merchant,
        order_reference: str,
        *,
        limit: int,
        before: SessionCursor | None = None,
    ) -> tuple[list[SessionRecord], bool]:
        """The merchant's sessions of ``order_reference``, newest first, at most ``limit``
        after ``before``, each read as :meth:`get` reads it (expired on read); and whether
        more follow."""
        found = await self.store.find_sessions(
            merchant.merchant_id, order_reference, limit=limit + 1, before=before
        )
        page = found[:limit]
        if self.lifecycle is not None:
            page = [await self.lifecycle.expire_if_due(record) for record in page]
        return page, len(found) > limit


def _created_body(record: SessionRecord) -> bytes:
    """The 201 body of a create, a function of the stored session alone: the status the create
    stored it in (PENDING, or a next payment's outcome), whatever happened to it since."""
    return orjson.dumps(
        {
            "sessionId": record.sessionId,
            "checkoutUrl": record.checkoutUrl,
            "status": _created_status(record).value,
            "routing": record.routing.model_dump(mode="json"),
            "expiresAt": isoformat(record.expiresAt),
            "createdAt": isoformat(record.createdAt),
        }
    )


def _created_status(record: SessionRecord) -> SessionStatus:
    """The status ``record`` was created in: a next payment's first move (the charge's
    outcome, made by the create itself), PENDING for every other session."""
    if record.sessionType == "next_in_series" and len(record.transitions) > 1:
        return record.transitions[1].status
    return SessionStatus.PENDING


def _pending(
    merchant: Merchant,
    request: CheckoutRequest,
    decision: RoutingDecision,
    score: float,
    tries: Attempts,
    session_id: str,
    created_at: datetime,
    expires_at: datetime,
) -> SessionRecord:
    """The new session as routing left it, PENDING, before any provider reference is set."""
    routing = RoutingSummary(
        selectedProvider=tries.chosen.provider if tries.chosen else "",
        score=round(score, 2),
        rulesVersion=decision.rules_version,
        decisionId=decision.decision_id,
        attempts=tries.made,
        matchedRules=list(decision.matched_rules),
    )
    return SessionRecord(
        sessionId=session_id,
        merchantId=merchant.merchant_id,
        orderReference=request.orderReference,
        status=SessionStatus.PENDING,
        provider=routing.selectedProvider,
        providerSessionId="",
        checkoutUrl=None,
        currency=request.currency,
        amount=SessionAmount(
            total=request.amount.total, shipping=request.amount.shipping, tax=request.amount.tax
        ),
        paymentMethod=request.paymentMethod,
        captureMethod=request.captureMethod,
        routing=routing,
        createdAt=created_at,
        updatedAt=created_at,
        expiresAt=expires_at,
        transitions=[Transition(status=SessionStatus.PENDING, at=created_at, source="gateway")],
        billingCountry=request.billing_country,
        sessionType=request.sessionType,
        savePaymentMethod=request.saves_payment_method,
        customerReference=request.customerReference,
        successUrl=request.redirectUrls.success if request.redirectUrls else None,
        failureUrl=request.redirectUrls.failure if request.redirectUrls else None,
    )


def _orphans(tries: Attempts, pin: CreatePin) -> list[OrphanSession]:
    """Sessions other providers may hold for the key: this create's ambiguous tries, and
    providers an earlier attempt called that this one did not end at."""
    chosen = tries.created.provider if tries.created is not None else None
    outcomes = {a.provider: a.outcome for a in tries.made}
    held = tries.may_hold() + [p for p in pin.sent if p != chosen and p not in tries.held]
    return [
        OrphanSession(provider=p, outcome=outcomes.get(p, "earlier_attempt"))
        for p in dict.fromkeys(held)
    ]


_PAID_OR_PAYING = frozenset(
    {SessionStatus.PROCESSING, SessionStatus.AUTHORIZED, SessionStatus.COMPLETED}
)
_OPEN = frozenset({SessionStatus.PENDING, SessionStatus.REQUIRES_ACTION})


def _holds_order(session: SessionRecord, now: datetime) -> bool:
    """Does ``session`` keep its order from getting another session? While it can still be
    paid (open, or cancelled at the gateway while the provider's page still takes money until
    ``payableUntil``), and for good once a payment is under way or done, or a provider reported
    a payment of another amount: one order is paid at most once."""
    if session.status in _PAID_OR_PAYING or session.amountMismatch is not None:
        return True
    if session.payableUntil is not None and session.payableUntil > now:
        return True
    return session.status in _OPEN and session.expiresAt > now


def _sweep_at(record: SessionRecord) -> float | None:
    """When the expiry sweeper must look at a new session: at its expiry while it may still
    expire, a day before its authorization lapses when it was authorized at once (a
    customer-absent charge with manual capture), else never."""
    if record.status in EXPIRABLE:
        return record.expiresAt.timestamp()
    warn = warning_at(record)
    return warn.timestamp() if warn is not None else None
