"""What the gateway keeps as records (:class:`RecordStore`). Memory, Redis and PostgreSQL
implement it; one contract suite (``tests/store``) runs against all three. The coordination
state (circuits, routing statistics, rate limits) is not here: :mod:`gateway.store.coordination`.

Every record has a TTL; every claim is atomic (the first writer wins, everyone else learns who
did); a claim held by a crashed process expires with its lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from gateway.domain.session import SessionRecord

__all__ = [
    "BACKLOG_COUNT_LIMIT",
    "ORDER_CLAIM_PREFIX",
    "Begun",
    "Claim",
    "ClaimKind",
    "Completion",
    "CreatePin",
    "CreationStore",
    "LifecycleStore",
    "OrphanJob",
    "OrphanQueueStore",
    "OutboxItem",
    "OutboxStore",
    "RecordStore",
    "RetentionStore",
    "SessionCursor",
    "SessionLifecycleStore",
    "SessionStore",
    "StoreUnavailable",
    "StoredResponse",
    "stored_session",
]


#: how an order reservation held by a running create names its holder: this prefix and the
#: create's token (:attr:`Begun.order_holder`); a finished create's holder is its session id
ORDER_CLAIM_PREFIX = "claim:"

#: how far :meth:`OutboxStore.outbox_backlog` counts by default
BACKLOG_COUNT_LIMIT = 10_000


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error (maps to 503)."""


def stored_session(payload: bytes | str, what: str) -> SessionRecord:
    """The session a store kept as ``payload`` (its JSON); :class:`StoreUnavailable` naming
    ``what`` when the stored form does not read back (a corrupted or foreign record)."""
    try:
        return SessionRecord.model_validate_json(payload)
    except ValidationError as exc:
        raise StoreUnavailable(f"session {what} is unreadable: {exc}") from exc


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A finished answer kept for idempotent replay, byte for byte."""

    status: int
    body: bytes
    location: str | None = None


class ClaimKind(StrEnum):
    """What claiming an Idempotency-Key found."""

    CLAIMED = "claimed"  # this caller owns the key now and must complete or release it
    REPLAY = "replay"  # finished earlier with the same fingerprint: answer ``response``
    IN_FLIGHT = "in_flight"  # another caller holds the lease
    MISMATCH = "mismatch"  # the key was used with a different request body


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of a claim: ``token`` when CLAIMED, ``response`` for a REPLAY,
    ``retry_after_ms`` while IN_FLIGHT."""

    kind: ClaimKind
    token: str | None = None
    response: StoredResponse | None = None
    retry_after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One merchant notification waiting in the outbox.

    ``body`` is the exact JSON that is signed and POSTed; the URL and signing secret are looked
    up at delivery time (never stored). ``lease`` is set on the copies :meth:`OutboxStore.
    outbox_claim` hands out: only the holder of the current lease can finish the item.
    """

    id: str
    merchant_id: str
    event_type: str
    body: bytes
    created_at: float
    attempts: int = 0
    last_error: str | None = None
    lease: str | None = None

    def to_json(self) -> bytes:
        """The stored form (without the lease)."""
        data: dict[str, Any] = {
            "id": self.id,
            "merchant": self.merchant_id,
            "type": self.event_type,
            "body": self.body.decode(),
            "created": self.created_at,
            "attempts": self.attempts,
            "error": self.last_error,
        }
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str, lease: str | None = None) -> OutboxItem:
        """The stored form back, carrying ``lease`` when handed out by a claim."""
        data = orjson.loads(raw)
        return cls(
            id=data["id"],
            merchant_id=data["merchant"],
            event_type=data["type"],
            body=data["body"].encode(),
            created_at=float(data["created"]),
            attempts=int(data["attempts"]),
            last_error=data.get("error"),
            lease=lease,
        )

    def failed(self, error: str) -> OutboxItem:
        """This item after one more failed delivery."""
        return replace(self, attempts=self.attempts + 1, last_error=error[:500])


@dataclass(frozen=True, slots=True)
class SessionCursor:
    """Where a page of :meth:`SessionStore.find_sessions` ended: the last session it held."""

    created_at: datetime
    session_id: str


class SessionStore(Protocol):
    """Reading sessions back."""

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None when unknown or past its retention."""
        ...

    async def find_sessions(
        self,
        merchant_id: str,
        order_reference: str,
        *,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """The merchant's sessions of ``order_reference``, newest first (``createdAt``, then
        ``sessionId``, both descending), at most ``limit``; with ``before``, only those that
        come after that cursor in this order. Sessions past their retention are left out."""
        ...


class LifecycleStore(Protocol):
    """Moving sessions through their lifecycle from several processes at once."""

    async def update_session(
        self, record: SessionRecord, *, expected_version: int, outbox: Sequence[OutboxItem] = ()
    ) -> bool:
        """Compare-and-set: write ``record`` (keeping the session's TTL) only when the stored
        one still has ``expected_version``, and enqueue ``outbox`` with it; False otherwise
        (changed meanwhile, or gone)."""
        ...

    async def claim_event(self, provider: str, event_id: str, *, lease_s: float) -> str:
        """Start processing a provider webhook event: ``"new"`` (claimed for ``lease_s``),
        ``"processing"`` (another call holds the lease) or ``"done"`` (already applied).
        A process that dies while holding the lease frees the event when it runs out."""
        ...

    async def finish_event(self, provider: str, event_id: str, *, ttl_s: int) -> None:
        """The event was applied: remember it as done for ``ttl_s``."""
        ...

    async def forget_event(self, provider: str, event_id: str) -> None:
        """Drop the marker again (processing failed, the provider's retry must run)."""
        ...

    async def schedule_expiry(self, session_id: str, at: float) -> None:
        """(Re-)index a session for the expiry sweeper at ``at`` (epoch seconds)."""
        ...

    async def drop_expiry(self, session_id: str) -> None:
        """Remove a session from the expiry index."""
        ...

    async def claim_expiries(self, *, now: float, lease_s: float, limit: int) -> list[str]:
        """Up to ``limit`` session ids due at ``now``, each pushed ``lease_s`` into the future
        so no other sweeper takes it meanwhile (a crashed sweeper's ids come back)."""
        ...


class OutboxStore(Protocol):
    """The durable notification outbox: at-least-once, leased, with dead letters."""

    async def outbox_add(self, items: Sequence[OutboxItem], *, due: float) -> None:
        """Enqueue ``items``, due at ``due`` (epoch seconds)."""
        ...

    async def outbox_claim(self, *, now: float, lease_s: float, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` due items, each leased for ``lease_s`` (copies carry the lease)."""
        ...

    async def outbox_done(self, item: OutboxItem) -> bool:
        """Delivered: remove the item if ``item.lease`` still holds it."""
        ...

    async def outbox_retry(self, item: OutboxItem, *, due: float) -> bool:
        """Store ``item`` (its new attempts and error) and make it due at ``due``."""
        ...

    async def outbox_dead(self, item: OutboxItem, *, at: float, keep: int = 10_000) -> bool:
        """Move ``item`` to the dead letters (the newest ``keep`` are kept)."""
        ...

    async def outbox_backlog(self, *, at_most: int = BACKLOG_COUNT_LIMIT) -> int:
        """Items waiting or in delivery, counted up to ``at_most``: a larger backlog reads as
        ``at_most``, so counting costs the same however far behind delivery is."""
        ...

    async def outbox_dead_letters(self, limit: int = 100) -> list[OutboxItem]:
        """The newest dead letters, newest first."""
        ...


@dataclass(frozen=True, slots=True)
class OrphanJob:
    """One orphan provider session to make unpayable, waiting in the durable orphan queue.

    ``request`` is the exact create the gateway sent the provider under the derived key
    (:mod:`gateway.orphans` encodes and decodes it): re-sent, the provider replays the session
    it holds for the key. ``id`` is ``<session id>:<provider>``. ``lease`` is set on the copies
    :meth:`OrphanQueueStore.orphan_claim` hands out: only its holder can finish the job.
    """

    id: str
    session_id: str
    provider: str
    request: bytes
    attempts: int = 0
    lease: str | None = None

    def to_json(self) -> bytes:
        """The stored form (without the lease)."""
        return orjson.dumps(
            {
                "id": self.id,
                "session": self.session_id,
                "provider": self.provider,
                "request": self.request.decode(),
                "attempts": self.attempts,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str, lease: str | None = None) -> OrphanJob:
        """The stored form back, carrying ``lease`` when handed out by a claim."""
        data = orjson.loads(raw)
        return cls(
            id=str(data["id"]),
            session_id=str(data["session"]),
            provider=str(data["provider"]),
            request=str(data["request"]).encode(),
            attempts=int(data["attempts"]),
            lease=lease,
        )


class OrphanQueueStore(Protocol):
    """The durable queue of orphan provider sessions to expire: leased, retried by any
    process. Jobs are enqueued by :meth:`CreationStore.commit_create`, with their session."""

    async def orphan_claim(self, *, now: float, lease_s: float, limit: int) -> list[OrphanJob]:
        """Up to ``limit`` due jobs, each leased for ``lease_s`` (a crashed holder's job comes
        back when its lease ends)."""
        ...

    async def orphan_retry(self, job: OrphanJob, *, due: float) -> bool:
        """Store ``job`` (its new attempt count) and make it due at ``due``, if ``job.lease``
        still holds it."""
        ...

    async def orphan_done(self, job: OrphanJob) -> bool:
        """Remove the finished ``job`` if ``job.lease`` still holds it."""
        ...


@dataclass(frozen=True, slots=True)
class CreatePin:
    """What every provider call made under one Idempotency-Key repeats exactly.

    Fixed by the first attempt and kept with the claim (through a release by
    :meth:`CreationStore.abandon_create` and past a crashed holder's lease), so a retry from
    any process sends each provider the same request under the same derived key and the
    provider replays its first answer. ``sent`` lists the providers an earlier attempt sent a
    create to (in that order); they may hold a session for this key.
    """

    created_at: datetime
    request_id: str
    sent: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """The stored form of the fixed part (``sent`` is stored beside it)."""
        return orjson.dumps({"at": self.created_at.isoformat(), "rid": self.request_id})

    @classmethod
    def from_json(cls, raw: bytes | str, sent: str = "") -> CreatePin:
        """The stored form back, with ``sent`` as kept by the store (comma-separated)."""
        data = orjson.loads(raw)
        providers = tuple(p for p in sent.split(",") if p)
        return cls(datetime.fromisoformat(data["at"]), str(data["rid"]), providers)


@dataclass(frozen=True, slots=True)
class Begun:
    """The outcome of :meth:`CreationStore.begin_create`.

    ``order_holder`` is set when the caller got the idempotency claim but the order reference
    is reserved by someone else (a session id, or ``claim:<token>``); the caller still holds
    its claim and must release it if it gives up. ``pin`` is the pin in force once claimed:
    an earlier attempt's (``resumed``) or the one the caller proposed.
    """

    claim: Claim
    order_holder: str | None = None
    pin: CreatePin | None = None
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    """What :meth:`CreationStore.commit_create` finishes besides writing the session."""

    scope: str
    key: str
    token: str
    response: StoredResponse
    ttl_s: int
    order_ref: str | None = None
    order_ttl_s: int = 0


class CreationStore(Protocol):
    """The create path in two round trips: one before the provider call, one after."""

    async def begin_create(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        *,
        token: str,
        lease_ms: int,
        order_ref: str | None,
        pin: CreatePin | None = None,
        pin_ttl_ms: int = 0,
    ) -> Begun:
        """Atomically claim ``key`` for ``fingerprint`` with a lease of ``lease_ms``; when
        claimed and ``order_ref`` is given, reserve the order (one unexpired PENDING session
        per merchant and orderReference) for the same token.

        With ``pin``, the record keeps the fingerprint and a pin for ``pin_ttl_ms`` (the lease
        is held beside it): a key whose holder's lease ran out, or that was given up through
        :meth:`abandon_create`, is claimed again with the *stored* pin (``resumed``) by a
        request with the same fingerprint, and answers MISMATCH to any other."""
        ...

    async def abandon_create(
        self, scope: str, key: str, token: str, *, sent: Sequence[str]
    ) -> None:
        """Give up the claim held by ``token`` after provider calls whose outcome is unknown:
        the lease is dropped, the fingerprint and pin stay, ``sent`` is added to the pin's
        providers. Without a pin this is :meth:`release`."""
        ...

    async def commit_create(
        self,
        record: SessionRecord,
        completion: Completion,
        *,
        ttl_s: int,
        expires_at: float | None,
        outbox: Sequence[OutboxItem] = (),
        orphans: Sequence[OrphanJob] = (),
    ) -> bool:
        """Atomically: unless the session is stored already (an earlier attempt of the key
        whose completion was lost: it is never overwritten), write the session (kept for
        ``ttl_s``), index it for expiry at ``expires_at`` (epoch seconds) when given, enqueue
        ``outbox`` and ``orphans`` (due now); then point the order reservation held by the
        token at the session (kept for ``completion.order_ttl_s``) and store the final answer
        for replay (kept for ``completion.ttl_s``) if the token still holds the claim. False
        when the idempotency lease was lost (the session and its jobs are written regardless).
        """
        ...

    async def release(self, scope: str, key: str, token: str) -> None:
        """Drop the claim held by ``token`` (nothing was created) so a retry runs again."""
        ...

    async def replace_order(
        self, scope: str, order_ref: str, expected: str, token: str, *, lease_ms: int
    ) -> bool:
        """Take the order reservation over from ``expected`` (a session that is no longer
        pending) for ``token``, leased for ``lease_ms``; False when someone else holds it."""
        ...

    async def release_order(self, scope: str, order_ref: str, token: str) -> None:
        """Drop the order reservation held by ``token``."""
        ...


class RetentionStore(Protocol):
    """Removing what is past its retention, in bounded batches."""

    async def purge(self, *, now: float, limit: int) -> int:
        """Delete at most ``limit`` records (sessions, finished keys, order reservations,
        webhook markers) whose retention ended before ``now`` (epoch seconds); the number
        deleted. Stores whose records expire by themselves (memory, Redis TTLs) return 0."""
        ...


class SessionLifecycleStore(SessionStore, LifecycleStore, Protocol):
    """Reading sessions and moving them through their lifecycle (the lifecycle service, owed
    completions, the expiry sweeper)."""


class RecordStore(
    CreationStore,
    SessionStore,
    LifecycleStore,
    OutboxStore,
    OrphanQueueStore,
    RetentionStore,
    Protocol,
):
    """The records of the gateway (the system of record): memory, Redis or PostgreSQL.
    Opened and closed by the application; each consumer takes the narrow protocol it uses."""

    name: str

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
