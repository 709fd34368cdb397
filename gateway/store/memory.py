"""The embedded default record store: one process, zero set-up, same semantics as Redis.

Its coordination counterpart (circuits) is :mod:`gateway.store.circuits_memory`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from gateway.domain.session import SessionRecord
from gateway.store.base import (
    BACKLOG_COUNT_LIMIT,
    ORDER_CLAIM_PREFIX,
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
from gateway.store.ttl_dict import TTLDict

__all__ = ["MemoryStore"]


def _order_slot(merchant_id: str, order_reference: str) -> str:
    """One key per merchant and orderReference (length-prefixed: no two pairs collide)."""
    return f"{len(merchant_id)}:{merchant_id}:{order_reference}"


@dataclass(slots=True)
class _IdemRecord:
    fingerprint: str
    token: str | None
    response: StoredResponse | None
    #: a pinned record outlives its lease, which ends at ``lease_until`` (monotonic)
    pin: CreatePin | None = None
    lease_until: float | None = None


class MemoryStore:
    """All state in this process's memory. Operations never await, so each one is atomic."""

    name = "memory"

    def __init__(self) -> None:
        self._idem = TTLDict()
        self._orders = TTLDict()
        self._sessions = TTLDict()
        #: merchant and orderReference -> {session id: createdAt}, kept as long as its sessions
        self._by_order = TTLDict()
        self._events = TTLDict()
        self._expiries: dict[str, float] = {}
        self._outbox_due: dict[str, float] = {}
        self._outbox_items: dict[str, OutboxItem] = {}
        self._outbox_leases: dict[str, str] = {}
        self._orphans: dict[str, tuple[float, OrphanJob]] = {}
        self._orphan_leases: dict[str, str] = {}
        self._dead: dict[str, tuple[float, OutboxItem]] = {}

    async def ping(self) -> None:
        return None

    async def purge(self, *, now: float, limit: int) -> int:
        """Nothing to do: every record carries its own TTL and expires by itself."""
        return 0

    async def close(self) -> None:
        return None

    # the create path's steps (private: production calls begin_create/commit_create)
    def _claim(self, scope: str, key: str, fingerprint: str, *, token: str, lease_ms: int) -> Claim:
        slot = f"{scope}\x00{key}"
        record: _IdemRecord | None = self._idem.get(slot)
        if record is None:
            self._idem.set(slot, _IdemRecord(fingerprint, token, None), lease_ms / 1000)
            return Claim(ClaimKind.CLAIMED, token=token)
        if record.fingerprint != fingerprint:
            return Claim(ClaimKind.MISMATCH)
        if record.response is not None:
            return Claim(ClaimKind.REPLAY, response=record.response)
        until = record.lease_until if record.lease_until is not None else self._idem.expires(slot)
        remaining = max(1, int((until - time.monotonic()) * 1000))
        return Claim(ClaimKind.IN_FLIGHT, retry_after_ms=remaining)

    def _complete(
        self, scope: str, key: str, token: str, response: StoredResponse, *, ttl_s: int
    ) -> bool:
        slot = f"{scope}\x00{key}"
        record: _IdemRecord | None = self._idem.get(slot)
        if record is None or record.token != token:
            return False
        self._idem.set(slot, _IdemRecord(record.fingerprint, None, response), ttl_s)
        return True

    async def release(self, scope: str, key: str, token: str) -> None:
        slot = f"{scope}\x00{key}"
        record: _IdemRecord | None = self._idem.get(slot)
        if record is not None and record.token == token:
            self._idem.pop(slot)

    # order guard
    def _reserve_order(
        self, scope: str, order_ref: str, token: str, *, lease_ms: int
    ) -> str | None:
        slot = f"{scope}\x00{order_ref}"
        current: str | None = self._orders.get(slot)
        if current is not None:
            return current
        self._orders.set(slot, ORDER_CLAIM_PREFIX + token, lease_ms / 1000)
        return None

    async def replace_order(
        self, scope: str, order_ref: str, expected: str, token: str, *, lease_ms: int
    ) -> bool:
        slot = f"{scope}\x00{order_ref}"
        if self._orders.get(slot) != expected:
            return False
        self._orders.set(slot, ORDER_CLAIM_PREFIX + token, lease_ms / 1000)
        return True

    def _bind_order(
        self, scope: str, order_ref: str, token: str, session_id: str, *, ttl_s: int
    ) -> None:
        slot = f"{scope}\x00{order_ref}"
        if self._orders.get(slot) == ORDER_CLAIM_PREFIX + token:
            self._orders.set(slot, session_id, ttl_s)

    async def release_order(self, scope: str, order_ref: str, token: str) -> None:
        slot = f"{scope}\x00{order_ref}"
        if self._orders.get(slot) == ORDER_CLAIM_PREFIX + token:
            self._orders.pop(slot)

    # sessions
    def _put_session(
        self,
        record: SessionRecord,
        *,
        ttl_s: int,
        expires_at: float | None = None,
        outbox: Sequence[OutboxItem] = (),
    ) -> None:
        self._sessions.set(record.sessionId, record, ttl_s)
        if expires_at is not None:
            self._expiries[record.sessionId] = expires_at
        self._enqueue(outbox, due=time.time())

    # the create path: no await suspends between the steps, so each call is atomic
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
        resumed = False
        if pin is None:
            claim = self._claim(scope, key, fingerprint, token=token, lease_ms=lease_ms)
        else:
            claim, pin, resumed = self._claim_pinned(
                f"{scope}\x00{key}", fingerprint, token, lease_ms, pin, pin_ttl_ms
            )
        if claim.kind is not ClaimKind.CLAIMED:
            return Begun(claim)
        holder = None
        if order_ref is not None:
            holder = self._reserve_order(scope, order_ref, token, lease_ms=lease_ms)
        return Begun(claim, holder, pin, resumed)

    def _claim_pinned(
        self, slot: str, fingerprint: str, token: str, lease_ms: int, pin: CreatePin, ttl_ms: int
    ) -> tuple[Claim, CreatePin, bool]:
        now = time.monotonic()
        lease_until = now + lease_ms / 1000
        record: _IdemRecord | None = self._idem.get(slot)
        if record is None:
            fresh = _IdemRecord(fingerprint, token, None, pin, lease_until)
            self._idem.set(slot, fresh, max(ttl_ms, lease_ms) / 1000)
            return Claim(ClaimKind.CLAIMED, token=token), pin, False
        if record.fingerprint != fingerprint:
            return Claim(ClaimKind.MISMATCH), pin, False
        if record.response is not None:
            return Claim(ClaimKind.REPLAY, response=record.response), pin, False
        if record.token is not None:
            until = record.lease_until
            if until is None:
                until = self._idem.expires(slot)
            if until > now:
                remaining = max(1, int((until - now) * 1000))
                return Claim(ClaimKind.IN_FLIGHT, retry_after_ms=remaining), pin, False
        resumed = record.pin is not None
        record.pin = record.pin or pin
        record.token, record.lease_until = token, lease_until
        self._idem.extend(slot, lease_until)
        return Claim(ClaimKind.CLAIMED, token=token), record.pin, resumed

    async def abandon_create(
        self, scope: str, key: str, token: str, *, sent: Sequence[str]
    ) -> None:
        slot = f"{scope}\x00{key}"
        record: _IdemRecord | None = self._idem.get(slot)
        if record is None or record.token != token:
            return
        if record.pin is None:
            self._idem.pop(slot)
            return
        merged = record.pin.sent + tuple(p for p in sent if p not in record.pin.sent)
        record.pin = replace(record.pin, sent=merged)
        record.token, record.lease_until = None, None

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
        c = completion
        if self._sessions.get(record.sessionId) is None:  # never overwrite an earlier attempt's
            self._put_session(record, ttl_s=ttl_s, expires_at=expires_at, outbox=outbox)
            self._index_order(record, ttl_s)
            now = time.time()
            for job in orphans:
                self._orphans[job.id] = (now, replace(job, lease=None))
        if c.order_ref is not None:
            self._bind_order(c.scope, c.order_ref, c.token, record.sessionId, ttl_s=c.order_ttl_s)
        return self._complete(c.scope, c.key, c.token, c.response, ttl_s=c.ttl_s)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        record: SessionRecord | None = self._sessions.get(session_id)
        return record

    def _index_order(self, record: SessionRecord, ttl_s: int) -> None:
        slot = _order_slot(record.merchantId, record.orderReference)
        index: dict[str, datetime] = self._by_order.get(slot) or {}
        index[record.sessionId] = record.createdAt
        self._by_order.keep(slot, index, ttl_s)

    async def find_sessions(
        self,
        merchant_id: str,
        order_reference: str,
        *,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        index: dict[str, datetime] | None = self._by_order.get(
            _order_slot(merchant_id, order_reference)
        )
        if not index:
            return []
        newest_first = sorted(((at, sid) for sid, at in index.items()), reverse=True)
        if before is not None:
            cut = (before.created_at, before.session_id)
            newest_first = [entry for entry in newest_first if entry < cut]
        found: list[SessionRecord] = []
        for _, session_id in newest_first:
            if len(found) >= limit:
                break
            record: SessionRecord | None = self._sessions.get(session_id)
            if record is None:  # past its retention
                del index[session_id]
            else:
                found.append(record)
        return found

    # lifecycle
    async def update_session(
        self, record: SessionRecord, *, expected_version: int, outbox: Sequence[OutboxItem] = ()
    ) -> bool:
        current: SessionRecord | None = self._sessions.get(record.sessionId)
        if current is None or current.version != expected_version:
            return False
        self._sessions.replace(record.sessionId, record)
        await self.outbox_add(outbox, due=time.time())
        return True

    async def claim_event(self, provider: str, event_id: str, *, lease_s: float) -> str:
        slot = f"{provider}\x00{event_id}"
        state: str | None = self._events.get(slot)
        if state is not None:
            return state
        self._events.set(slot, "processing", lease_s)
        return "new"

    async def finish_event(self, provider: str, event_id: str, *, ttl_s: int) -> None:
        self._events.set(f"{provider}\x00{event_id}", "done", ttl_s)

    async def forget_event(self, provider: str, event_id: str) -> None:
        self._events.pop(f"{provider}\x00{event_id}")

    async def schedule_expiry(self, session_id: str, at: float) -> None:
        self._expiries[session_id] = at

    async def drop_expiry(self, session_id: str) -> None:
        self._expiries.pop(session_id, None)

    async def claim_expiries(self, *, now: float, lease_s: float, limit: int) -> list[str]:
        due = sorted((at, sid) for sid, at in self._expiries.items() if at <= now)[:limit]
        for _, session_id in due:
            self._expiries[session_id] = now + lease_s
        return [session_id for _, session_id in due]

    # outbox
    async def outbox_add(self, items: Sequence[OutboxItem], *, due: float) -> None:
        self._enqueue(items, due=due)

    def _enqueue(self, items: Sequence[OutboxItem], *, due: float) -> None:
        for item in items:
            self._outbox_items[item.id] = replace(item, lease=None)
            self._outbox_due[item.id] = due

    async def outbox_claim(self, *, now: float, lease_s: float, limit: int) -> list[OutboxItem]:
        due = sorted((at, i) for i, at in self._outbox_due.items() if at <= now)[:limit]
        claimed: list[OutboxItem] = []
        for _, item_id in due:
            token = uuid.uuid4().hex
            self._outbox_due[item_id] = now + lease_s
            self._outbox_leases[item_id] = token
            claimed.append(replace(self._outbox_items[item_id], lease=token))
        return claimed

    def _holds(self, item: OutboxItem) -> bool:
        return item.lease is not None and self._outbox_leases.get(item.id) == item.lease

    def _remove(self, item_id: str) -> None:
        self._outbox_due.pop(item_id, None)
        self._outbox_items.pop(item_id, None)
        self._outbox_leases.pop(item_id, None)

    async def outbox_done(self, item: OutboxItem) -> bool:
        if not self._holds(item):
            return False
        self._remove(item.id)
        return True

    async def outbox_retry(self, item: OutboxItem, *, due: float) -> bool:
        if not self._holds(item):
            return False
        self._outbox_items[item.id] = replace(item, lease=None)
        self._outbox_due[item.id] = due
        del self._outbox_leases[item.id]
        return True

    async def outbox_dead(self, item: OutboxItem, *, at: float, keep: int = 10_000) -> bool:
        if not self._holds(item):
            return False
        self._remove(item.id)
        self._dead[item.id] = (at, replace(item, lease=None))
        if len(self._dead) > keep:
            oldest = sorted(self._dead, key=lambda i: self._dead[i][0])
            for item_id in oldest[: len(self._dead) - keep]:
                del self._dead[item_id]
        return True

    # orphan queue
    async def orphan_claim(self, *, now: float, lease_s: float, limit: int) -> list[OrphanJob]:
        due = sorted((at, i) for i, (at, _) in self._orphans.items() if at <= now)[:limit]
        claimed: list[OrphanJob] = []
        for _, job_id in due:
            token = uuid.uuid4().hex
            job = self._orphans[job_id][1]
            self._orphans[job_id] = (now + lease_s, job)
            self._orphan_leases[job_id] = token
            claimed.append(replace(job, lease=token))
        return claimed

    def _holds_orphan(self, job: OrphanJob) -> bool:
        return job.lease is not None and self._orphan_leases.get(job.id) == job.lease

    async def orphan_retry(self, job: OrphanJob, *, due: float) -> bool:
        if not self._holds_orphan(job):
            return False
        del self._orphan_leases[job.id]
        self._orphans[job.id] = (due, replace(job, lease=None))
        return True

    async def orphan_done(self, job: OrphanJob) -> bool:
        if not self._holds_orphan(job):
            return False
        del self._orphan_leases[job.id]
        del self._orphans[job.id]
        return True

    async def outbox_backlog(self, *, at_most: int = BACKLOG_COUNT_LIMIT) -> int:
        return min(len(self._outbox_due), at_most)

    async def outbox_dead_letters(self, limit: int = 100) -> list[OutboxItem]:
        newest = sorted(self._dead.values(), key=lambda entry: entry[0], reverse=True)
        return [item for _, item in newest[:limit]]
