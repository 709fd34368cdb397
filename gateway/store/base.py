"""What the gateway keeps as records (:class:`RecordStore`). Memory, Redis and PostgreSQL
implement it; one contract suite (``tests/store``) runs against all three. The coordination
state (circuits, routing statistics, rate limits) is not here: :mod:`gateway.store.coordination`.

Every record has a TTL; every claim is atomic (the first writer wins, everyone else learns who
did); a claim held by a crashed process expires with its lease. The values the protocols take
and give back are in :mod:`gateway.store.records` (and may be imported from here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import ValidationError

from gateway.domain.session import SessionRecord
from gateway.store.records import (
    Begun,
    Claim,
    ClaimKind,
    Completion,
    CreatePin,
    OrphanJob,
    OutboxItem,
    SessionCursor,
    StoredResponse,
)

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
