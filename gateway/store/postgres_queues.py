"""The lifecycle half of :class:`gateway.store.postgres.PostgresStore`: compare-and-set
session updates, webhook event markers, the expiry schedule, the notification outbox and the
orphan queue.

Workers of any number of processes claim due work with one statement each: the due rows are
found through the ``due`` index and locked with ``FOR UPDATE SKIP LOCKED LIMIT n``, then updated
by ``ctid`` (a TID scan, never a table scan): each row's due time moves to the end of its lease
and it gets a fresh lease token, so two claimers never get the same row and a crashed holder's
rows come back when the lease ends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.domain.session import SessionRecord
from gateway.store.base import BACKLOG_COUNT_LIMIT, OrphanJob, OutboxItem
from gateway.store.postgres_pool import PostgresPool
from gateway.store.postgres_support import from_db_text, to_db_text

__all__ = ["PostgresQueues", "outbox_columns"]

_UPDATE_SESSION = """
WITH updated AS (
    UPDATE sessions SET payload = $2, version = $3
    WHERE session_id = $1 AND version = $4 AND keep_until > now()
    RETURNING session_id
), queued AS (
    INSERT INTO outbox (id, merchant_id, event_type, body, created_at, due)
    SELECT u.id, u.merchant_id, u.event_type, u.body, u.created_at, $5
    FROM unnest($6::text[], $7::text[], $8::text[], $9::bytea[], $10::float8[])
        AS u(id, merchant_id, event_type, body, created_at)
    WHERE EXISTS (SELECT 1 FROM updated)
    ON CONFLICT (id) DO UPDATE
        SET merchant_id = excluded.merchant_id, event_type = excluded.event_type,
            body = excluded.body, created_at = excluded.created_at, due = excluded.due
)
SELECT count(*) FROM updated
"""

_FINISH_EVENT = """
INSERT INTO webhook_events (provider, event_id, state, keep_until)
VALUES ($1, $2, 'done', clock_timestamp() + gateway_ms($3))
ON CONFLICT (provider, event_id) DO UPDATE SET state = 'done', keep_until = excluded.keep_until
"""

_SCHEDULE_EXPIRY = """
INSERT INTO session_expiries (session_id, due) VALUES ($1, $2)
ON CONFLICT (session_id) DO UPDATE SET due = excluded.due
"""

_CLAIM_EXPIRIES = """
WITH picked AS (
    SELECT ctid AS row_id, session_id, due FROM session_expiries WHERE due <= $1
    ORDER BY due LIMIT $3 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE session_expiries SET due = $2
    WHERE ctid = ANY (ARRAY(SELECT row_id FROM picked))
    RETURNING session_id
)
SELECT claimed.session_id, picked.due AS was_due FROM claimed JOIN picked USING (session_id)
"""

_OUTBOX_ADD = """
INSERT INTO outbox (id, merchant_id, event_type, body, created_at, attempts, last_error, due)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::float8[],
                     $6::int[], $7::text[], $8::float8[])
ON CONFLICT (id) DO UPDATE
    SET merchant_id = excluded.merchant_id, event_type = excluded.event_type,
        body = excluded.body, created_at = excluded.created_at, attempts = excluded.attempts,
        last_error = excluded.last_error, due = excluded.due
"""

_OUTBOX_CLAIM = """
WITH picked AS (
    SELECT ctid AS row_id, id, due FROM outbox WHERE due <= $1
    ORDER BY due LIMIT $3 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE outbox SET due = $2, lease = gen_random_uuid()::text
    WHERE ctid = ANY (ARRAY(SELECT row_id FROM picked))
    RETURNING id, merchant_id, event_type, body, created_at, attempts, last_error, lease
)
SELECT claimed.*, picked.due AS was_due FROM claimed JOIN picked USING (id)
"""

_OUTBOX_BACKLOG = "SELECT count(*) FROM (SELECT FROM outbox LIMIT $1) AS waiting"

_OUTBOX_RETRY = """
UPDATE outbox SET attempts = $3, last_error = $4, due = $5, lease = NULL
WHERE id = $1 AND lease = $2
"""

_ORPHAN_CLAIM = """
WITH picked AS (
    SELECT ctid AS row_id, id, due FROM orphan_jobs WHERE due <= $1
    ORDER BY due LIMIT $3 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE orphan_jobs SET due = $2, lease = gen_random_uuid()::text
    WHERE ctid = ANY (ARRAY(SELECT row_id FROM picked))
    RETURNING id, session_id, provider, request, attempts, lease
)
SELECT claimed.*, picked.due AS was_due FROM claimed JOIN picked USING (id)
"""

_ORPHAN_RETRY = """
UPDATE orphan_jobs SET attempts = $3, due = $4, lease = NULL WHERE id = $1 AND lease = $2
"""


def outbox_columns(items: Sequence[OutboxItem]) -> list[list[Any]]:
    """``items`` as the five column arrays (id, merchant, type, body, created) the outbox
    inserts unnest."""
    return [
        [i.id for i in items],
        [to_db_text(i.merchant_id) for i in items],
        [i.event_type for i in items],
        [i.body for i in items],
        [i.created_at for i in items],
    ]


def _error(error: str | None) -> str | None:
    return None if error is None else to_db_text(error)


def _affected(status: str) -> bool:
    """Whether an ``UPDATE``/``DELETE`` command status (``"UPDATE 1"``) touched a row."""
    return not status.endswith(" 0")


def _outbox_item(row: Any) -> OutboxItem:
    return OutboxItem(
        id=row["id"],
        merchant_id=from_db_text(row["merchant_id"]),
        event_type=row["event_type"],
        body=bytes(row["body"]),
        created_at=float(row["created_at"]),
        attempts=int(row["attempts"]),
        last_error=None if row["last_error"] is None else from_db_text(row["last_error"]),
        lease=row.get("lease"),
    )


class PostgresQueues(PostgresPool):
    """Session updates and the work queues (a base of the PostgreSQL store)."""

    async def update_session(
        self, record: SessionRecord, *, expected_version: int, outbox: Sequence[OutboxItem] = ()
    ) -> bool:
        """Compare-and-set on ``version`` (keeping the retention), enqueueing ``outbox`` in the
        same statement."""
        count = await self._fetchval(
            "update_session",
            _UPDATE_SESSION,
            to_db_text(record.sessionId),
            record.model_dump_json(),
            record.version,
            expected_version,
            time.time(),
            *outbox_columns(outbox),
        )
        return bool(count)

    async def claim_event(self, provider: str, event_id: str, *, lease_s: float) -> str:
        """The marker's state, or ``"new"`` with a processing lease (one function call)."""
        state = await self._fetchval(
            "claim_event",
            "SELECT gateway_claim_event($1, $2, $3)",
            to_db_text(provider),
            to_db_text(event_id),
            max(1, int(lease_s * 1000)),
        )
        return str(state)

    async def finish_event(self, provider: str, event_id: str, *, ttl_s: int) -> None:
        """Mark the event done for ``ttl_s``."""
        await self._execute(
            "finish_event", _FINISH_EVENT, to_db_text(provider), to_db_text(event_id), ttl_s * 1000
        )

    async def forget_event(self, provider: str, event_id: str) -> None:
        """Drop an event marker."""
        await self._execute(
            "forget_event",
            "DELETE FROM webhook_events WHERE provider = $1 AND event_id = $2",
            to_db_text(provider),
            to_db_text(event_id),
        )

    async def schedule_expiry(self, session_id: str, at: float) -> None:
        """Index ``session_id`` for the sweeper at ``at``."""
        await self._execute("schedule_expiry", _SCHEDULE_EXPIRY, to_db_text(session_id), at)

    async def drop_expiry(self, session_id: str) -> None:
        """Remove ``session_id`` from the expiry schedule."""
        await self._execute(
            "drop_expiry",
            "DELETE FROM session_expiries WHERE session_id = $1",
            to_db_text(session_id),
        )

    async def claim_expiries(self, *, now: float, lease_s: float, limit: int) -> list[str]:
        """Due session ids in due order, each leased for ``lease_s`` (SKIP LOCKED)."""
        rows = await self._fetch("claim_expiries", _CLAIM_EXPIRIES, now, now + lease_s, limit)
        rows.sort(key=lambda r: (r["was_due"], r["session_id"]))
        return [from_db_text(r["session_id"]) for r in rows]

    # outbox
    async def outbox_add(self, items: Sequence[OutboxItem], *, due: float) -> None:
        """Enqueue ``items`` due at ``due`` (one statement)."""
        if not items:
            return
        await self._execute(
            "outbox_add",
            _OUTBOX_ADD,
            *outbox_columns(items),
            [i.attempts for i in items],
            [_error(i.last_error) for i in items],
            [due] * len(items),
        )

    async def outbox_claim(self, *, now: float, lease_s: float, limit: int) -> list[OutboxItem]:
        """Due items, each leased for ``lease_s`` with a fresh token (SKIP LOCKED)."""
        rows = await self._fetch("outbox_claim", _OUTBOX_CLAIM, now, now + lease_s, limit)
        rows.sort(key=lambda r: (r["was_due"], r["id"]))
        return [_outbox_item(r) for r in rows]

    async def outbox_done(self, item: OutboxItem) -> bool:
        """Remove a delivered item (only with its current lease)."""
        if item.lease is None:
            return False
        status = await self._execute(
            "outbox_done", "DELETE FROM outbox WHERE id = $1 AND lease = $2", item.id, item.lease
        )
        return _affected(status)

    async def outbox_retry(self, item: OutboxItem, *, due: float) -> bool:
        """Store the item's new attempt count and error and make it due at ``due``."""
        if item.lease is None:
            return False
        status = await self._execute(
            "outbox_retry",
            _OUTBOX_RETRY,
            item.id,
            item.lease,
            item.attempts,
            _error(item.last_error),
            due,
        )
        return _affected(status)

    async def outbox_dead(self, item: OutboxItem, *, at: float, keep: int = 10_000) -> bool:
        """Move the item to the dead letters, keeping the newest ``keep``."""
        if item.lease is None:
            return False
        moved = await self._fetchval(
            "outbox_dead",
            "SELECT gateway_outbox_dead($1, $2, $3, $4, $5, $6)",
            item.id,
            item.lease,
            item.attempts,
            _error(item.last_error),
            at,
            keep,
        )
        return bool(moved)

    async def outbox_backlog(self, *, at_most: int = BACKLOG_COUNT_LIMIT) -> int:
        """Items waiting or being delivered, up to ``at_most``: the count stops at ``at_most``
        rows, so a large backlog is never counted by scanning the whole outbox."""
        return int(await self._fetchval("outbox_backlog", _OUTBOX_BACKLOG, at_most))

    async def outbox_dead_letters(self, limit: int = 100) -> list[OutboxItem]:
        """The newest dead letters first."""
        rows = await self._fetch(
            "outbox_dead_letters",
            "SELECT id, merchant_id, event_type, body, created_at, attempts, last_error "
            "FROM outbox_dead ORDER BY died_at DESC, id DESC LIMIT $1",
            limit,
        )
        return [_outbox_item(r) for r in rows]

    # orphan queue
    async def orphan_claim(self, *, now: float, lease_s: float, limit: int) -> list[OrphanJob]:
        """Due jobs, each leased for ``lease_s`` with a fresh token (SKIP LOCKED)."""
        rows = await self._fetch("orphan_claim", _ORPHAN_CLAIM, now, now + lease_s, limit)
        rows.sort(key=lambda r: (r["was_due"], r["id"]))
        return [
            OrphanJob(
                id=r["id"],
                session_id=r["session_id"],
                provider=r["provider"],
                request=bytes(r["request"]),
                attempts=int(r["attempts"]),
                lease=r["lease"],
            )
            for r in rows
        ]

    async def orphan_retry(self, job: OrphanJob, *, due: float) -> bool:
        """Store the job's new attempt count and make it due at ``due`` (with its lease)."""
        if job.lease is None:
            return False
        status = await self._execute(
            "orphan_retry", _ORPHAN_RETRY, job.id, job.lease, job.attempts, due
        )
        return _affected(status)

    async def orphan_done(self, job: OrphanJob) -> bool:
        """Remove a finished job (only with its current lease)."""
        if job.lease is None:
            return False
        status = await self._execute(
            "orphan_done", "DELETE FROM orphan_jobs WHERE id = $1 AND lease = $2", job.id, job.lease
        )
        return _affected(status)
