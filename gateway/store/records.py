"""The values the record stores take and give back (:mod:`gateway.store.base` has the
protocols): a stored answer, the outcome of a claim, an outbox item, an orphan job, the pin of a
create, the page cursor. Those that a store keeps as JSON carry their stored form."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

__all__ = [
    "Begun",
    "Claim",
    "ClaimKind",
    "Completion",
    "CreatePin",
    "OrphanJob",
    "OutboxItem",
    "SessionCursor",
    "StoredResponse",
]


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


@dataclass(frozen=True, slots=True)
class CreatePin:
    """What every provider call made under one Idempotency-Key repeats exactly.

    Fixed by the first attempt and kept with the claim (through a release by
    :meth:`CreationStore.abandon_create` and past a crashed holder's lease), so a retry from
    any process sends each provider the same request under the same derived key and the
    provider replays its first answer. ``sent`` lists the providers an earlier attempt sent a
    create to (in that order); they may hold a session for this key. ``first`` is the provider
    the first attempt was about to call first, written with the claim before any call: an
    attempt that died without giving its claim up recorded no ``sent``, and a retry goes back
    there first (see :meth:`resumed`).
    """

    created_at: datetime
    request_id: str
    sent: tuple[str, ...] = ()
    first: str | None = None

    def to_json(self) -> bytes:
        """The stored form of the fixed part (``sent`` is stored beside it)."""
        data: dict[str, str] = {"at": self.created_at.isoformat(), "rid": self.request_id}
        if self.first is not None:
            data["first"] = self.first
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str, sent: str = "") -> CreatePin:
        """The stored form back, with ``sent`` as kept by the store (comma-separated)."""
        data = orjson.loads(raw)
        providers = tuple(p for p in sent.split(",") if p)
        first = data.get("first")
        return cls(
            datetime.fromisoformat(data["at"]),
            str(data["rid"]),
            providers,
            str(first) if first is not None else None,
        )

    def resumed(self) -> CreatePin:
        """This pin as a retry of an earlier attempt sees it. An attempt that gave its claim up
        recorded in ``sent`` exactly who may hold a session; when nothing is recorded, the
        attempt died before giving up, perhaps in its first provider's call, so ``first`` is
        where the retry goes first."""
        if self.first is None or self.sent:
            return self
        return replace(self, sent=(self.first,))


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
