"""The system of record on PostgreSQL: :class:`PostgresStore` (asyncpg, a pool).

A create costs two round trips, as on Redis: :meth:`PostgresStore.begin_create` is one call of
the server-side function ``gateway_begin_create`` (claim the Idempotency-Key, reserve the
order), :meth:`PostgresStore.commit_create` one call of ``gateway_commit_create``, which writes
the session, its expiry, notifications, orphan jobs, the order binding and the completed key
in one transaction. Every other operation is one statement. The schema and those functions
ship as numbered SQL files (:mod:`gateway.store.postgres_schema`, ``gateway db upgrade``).

Every record has a ``keep_until`` on the database clock: reads treat a row past it as absent
(as Redis treats an expired key) and :meth:`PostgresStore.purge` deletes such rows in bounded
batches through an index. Errors are mapped once, at this boundary
(:func:`gateway.store.postgres_support.mapped`): an outage becomes
:class:`~gateway.store.base.StoreUnavailable`, a wrong query stays a bug.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from gateway.domain.session import SessionRecord
from gateway.store.base import (
    Begun,
    Claim,
    ClaimKind,
    Completion,
    CreatePin,
    OrphanJob,
    OutboxItem,
    SessionCursor,
    StoredResponse,
    stored_session,
)
from gateway.store.postgres_queues import PostgresQueues, outbox_columns
from gateway.store.postgres_support import PostgresSettings, from_db_text, to_db_text

__all__ = ["PostgresSettings", "PostgresStore"]

_BEGIN = "SELECT * FROM gateway_begin_create($1, $2, $3, $4, $5, $6, $7, $8)"
_COMMIT = (
    "SELECT gateway_commit_create($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,"
    " $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)"
)
_RELEASE = (
    "DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2 AND token = $3"
    " AND keep_until > now()"
)
_REPLACE_ORDER = """
UPDATE order_reservations
SET holder = 'claim:' || $4, keep_until = clock_timestamp() + gateway_ms($5)
WHERE scope = $1 AND order_ref = $2 AND holder = $3 AND keep_until > now()
"""
_RELEASE_ORDER = (
    "DELETE FROM order_reservations WHERE scope = $1 AND order_ref = $2"
    " AND holder = 'claim:' || $3 AND keep_until > now()"
)
_GET = "SELECT payload FROM sessions WHERE session_id = $1 AND keep_until > now()"
_FIND = """
SELECT payload FROM sessions
WHERE merchant_id = $1 AND order_reference = $2 AND keep_until > now()
ORDER BY created_at DESC, session_id DESC LIMIT $3
"""
_FIND_BEFORE = """
SELECT payload FROM sessions
WHERE merchant_id = $1 AND order_reference = $2 AND keep_until > now()
  AND (created_at, session_id) < ($4, $5)
ORDER BY created_at DESC, session_id DESC LIMIT $3
"""


def _ms(seconds: float) -> int:
    """A positive whole number of milliseconds covering ``seconds``."""
    return max(1, math.ceil(seconds * 1000))


class PostgresStore(PostgresQueues):
    """The :class:`~gateway.store.base.RecordStore` on PostgreSQL. Not connected until first
    used (:meth:`warm_up` opens the pool early, best effort); :meth:`close` closes the pool.
    The schema must be current (``gateway db upgrade``)."""

    name = "postgres"

    def __init__(self, conf: PostgresSettings | str) -> None:
        super().__init__(PostgresSettings(conf) if isinstance(conf, str) else conf)

    # the create path
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
        """Claim the key (resuming a pinned one) and reserve the order: one round trip."""
        row = await self._fetchrow(
            "begin_create",
            _BEGIN,
            to_db_text(scope),
            to_db_text(key),
            fingerprint,
            token,
            lease_ms,
            None if order_ref is None else to_db_text(order_ref),
            pin.to_json().decode() if pin is not None else None,
            pin_ttl_ms,
        )
        kind = row["o_kind"]
        if kind == "claimed":
            stored = row["o_pin"]
            pinned = CreatePin.from_json(stored, row["o_sent"] or "") if stored else None
            claim = Claim(ClaimKind.CLAIMED, token=token)
            holder = row["o_holder"]
            holder = None if holder is None else from_db_text(holder)
            return Begun(claim, holder, pinned, bool(row["o_resumed"]))
        if kind == "replay":
            response = StoredResponse(int(row["o_status"]), bytes(row["o_body"]), row["o_location"])
            return Begun(Claim(ClaimKind.REPLAY, response=response))
        if kind == "in_flight":
            return Begun(Claim(ClaimKind.IN_FLIGHT, retry_after_ms=max(1, int(row["o_retry_ms"]))))
        return Begun(Claim(ClaimKind.MISMATCH))

    async def abandon_create(
        self, scope: str, key: str, token: str, *, sent: Sequence[str]
    ) -> None:
        """Drop the lease, keep the pin and add ``sent`` to it: one round trip."""
        await self._execute(
            "abandon_create",
            "SELECT gateway_abandon_create($1, $2, $3, $4)",
            to_db_text(scope),
            to_db_text(key),
            token,
            ",".join(sent),
            finishing=True,
        )

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
        """Session, expiry, notifications, orphan jobs, order binding and the completed key in
        one transaction: one round trip."""
        c = completion
        done = await self._fetchval(
            "commit_create",
            _COMMIT,
            to_db_text(record.sessionId),
            to_db_text(record.merchantId),
            to_db_text(record.orderReference),
            record.createdAt,
            record.version,
            record.model_dump_json(),
            _ms(ttl_s),
            expires_at,
            to_db_text(c.scope),
            to_db_text(c.key),
            c.token,
            c.response.status,
            c.response.body,
            c.response.location,
            _ms(c.ttl_s),
            None if c.order_ref is None else to_db_text(c.order_ref),
            _ms(max(1, c.order_ttl_s)),
            time.time(),
            *outbox_columns(outbox),
            [j.id for j in orphans],
            [j.session_id for j in orphans],
            [j.provider for j in orphans],
            [j.request for j in orphans],
            finishing=True,
        )
        return bool(done)

    async def release(self, scope: str, key: str, token: str) -> None:
        """Drop the claim held by ``token``."""
        await self._execute(
            "release", _RELEASE, to_db_text(scope), to_db_text(key), token, finishing=True
        )

    async def replace_order(
        self, scope: str, order_ref: str, expected: str, token: str, *, lease_ms: int
    ) -> bool:
        """Take the reservation over from ``expected`` (compare-and-set)."""
        status = await self._execute(
            "replace_order",
            _REPLACE_ORDER,
            to_db_text(scope),
            to_db_text(order_ref),
            to_db_text(expected),
            token,
            lease_ms,
        )
        return not status.endswith(" 0")

    async def release_order(self, scope: str, order_ref: str, token: str) -> None:
        """Drop the reservation held by ``token``."""
        await self._execute(
            "release_order",
            _RELEASE_ORDER,
            to_db_text(scope),
            to_db_text(order_ref),
            token,
            finishing=True,
        )

    # sessions
    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None when unknown or past its retention (primary key lookup)."""
        payload = await self._fetchval("get_session", _GET, to_db_text(session_id))
        return None if payload is None else stored_session(payload, repr(session_id))

    async def find_sessions(
        self,
        merchant_id: str,
        order_reference: str,
        *,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """The merchant's sessions of the order, newest first (index ``sessions_by_order``)."""
        args: list[Any] = [to_db_text(merchant_id), to_db_text(order_reference), limit]
        sql = _FIND
        if before is not None:
            sql = _FIND_BEFORE
            args += [before.created_at, to_db_text(before.session_id)]
        rows = await self._fetch("find_sessions", sql, *args)
        return [stored_session(r["payload"], f"of order {order_reference!r}") for r in rows]

    # retention
    async def purge(self, *, now: float, limit: int) -> int:
        """Delete at most ``limit`` rows past their retention (sessions, keys, reservations,
        webhook markers), oldest first, through the ``keep_until`` indexes. A row is past its
        retention when it ended before ``now`` and before the database's clock, on which every
        read decides whether a row is live: a gateway clock running ahead deletes nothing live."""
        deleted = await self._fetchval("purge", "SELECT gateway_purge($1, $2)", now, limit)
        return int(deleted)
