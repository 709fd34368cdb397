"""Every Redis key the gateway writes, built in one place from one root prefix.

The root is ``Settings.redis_prefix`` (default ``gw:``), so several gateways (or test runs) can
share one Redis database without touching each other's keys. The record store
(:mod:`gateway.store.redis`, ``GATEWAY_STORE=redis``) writes the idempotency, order, session,
webhook, expiry, outbox and orphan keys; the coordination (``GATEWAY_COORDINATION=redis``:
:mod:`gateway.store.circuits_redis`, :mod:`gateway.routing.stats_redis`,
:mod:`gateway.ratelimit`) the circuit, stats and ratelimit keys.

Every script and transaction touches keys of one Redis Cluster slot, chosen by a ``{hash tag}``.
A session's records are tagged by its *bucket*, ``{s<n>}`` with ``n =`` :func:`bucket` of the
session id (one of :data:`QUEUE_BUCKETS`); the queues (expiry, outbox, orphans) have one set of
keys per bucket. So a create's claim, its session, its expiry entry, its notifications, its orphan
jobs and its key completion all share a slot (the idempotency record is tagged by the bucket of
:func:`gateway.idempotency.session_id_for` of its merchant and key: the id its session gets).
Layout (``n``: a bucket, 0..15)::

    {root}{s<n>}:idem:{scope}:{key}          hash    idempotency record: lease (a pinned create:
                                                     the pin's ttl), then completion.ttl_s; a
                                                     completed create's order binding calls
                                                     (``ob``) until its first replay
    {root}{s<n>}:session:{session_id}        string  SessionRecord JSON, ttl_s
    {root}{s<n>}:expiry                      zset    expirable session ids by expiresAt
    {root}{s<n>}:outbox:due                  zset    notification ids by due time (or lease end)
    {root}{s<n>}:outbox:items                hash    id -> notification JSON (payload, attempts)
    {root}{s<n>}:outbox:leases               hash    id -> claim token of the worker holding it
    {root}{s<n>}:outbox:dead                 zset    dead-lettered ids by time of death
    {root}{s<n>}:outbox:dead_items           hash    id -> dead-lettered notification JSON
    {root}{s<n>}:orphans:due                 zset    orphan job ids by due time (or lease end)
    {root}{s<n>}:orphans:items               hash    id -> orphan job JSON (the create to re-send)
    {root}{s<n>}:orphans:leases              hash    id -> claim token of the process holding it
    {root}order:{{scope}:{order_ref}}        string  order-guard reservation (below), then the
                                                     session id, completion.order_ttl_s
    {root}order:{{scope}:{order_ref}}:next:{token}
                                             string  the session id a create taking a lapsed
                                                     reservation over will write, its lease
    {root}order_sessions:{{merchant}:{ref}}  zset    the merchant's session ids of an
                                                     orderReference by createdAt (epoch µs),
                                                     ttl: the newest session's retention
    {root}circuit:{{provider}}               hash    circuit state (state, open_until, failures)
    {root}circuit:{{provider}}:fails         zset    failure timestamps inside the window
    {root}circuit:{{provider}}:probes        zset    half-open probes handed out
    {root}stats:{{provider}}:seg:{kind}:{v}  hash    routing statistics of one segment
    {root}stats:{{provider}}:index           zset    a provider's live segments
    {root}webhook:{provider}:{event_id}      string  webhook event: processing (lease), then done
    {root}ratelimit:{limit}:{subject}        hash    token bucket (tokens, last refill), ttl: refill

Every variable part is escaped (``%``, ``:``, ``{``, ``}`` become ``%25``, ``%3A``, ``%7B``,
``%7D``), so ``scope="a:b", key="c"`` and ``scope="a", key="b:c"`` can never collide and no
part can open or close a hash tag. An order's reservation and its sessions index share the tag
``{scope:order_ref}`` (the merchant is the scope), so a commit binds one and indexes into the
other in one script; the circuit and statistics keys of one provider share ``{provider}``.

:data:`QUEUE_BUCKETS` is fixed for good: a different count would strand what the queues hold
(items would sit in buckets nobody scans) and move every session's idempotency record. A
worker's claim peeks at every bucket (one pipelined read) and claims the earliest due across
them with one script per bucket holding some; a lease token names its bucket
(``"<n>:<hex><i>"``), so finishing an item touches that bucket only. A queue item without a
session (:meth:`~gateway.store.redis.RedisStore.outbox_add`) goes to the bucket of its id.

The order reservation of a running create is ``claim:<token>|<session id>|<lease end, ms on
the Redis clock>``, kept as long as a bound reservation (the session's retention), so it does
not lapse while the session it guards exists: the create writes its session first, then binds
the reservation, and a crash in between leaves a claim whose lease ends and then reads as that
session id. A plain value is a bound session id. A lapsed claim whose session is not written is
taken over; so a create must not write its session after its lease: it answers 503 instead
once 90% of the lease has passed (:mod:`gateway.sessions`), and its retry finds the order taken.

Every key carries a TTL except the durable queues (``expiry``, ``outbox:*``, ``orphans:*``):
their entries are removed when handled, and the dead letters are capped in number (across the
buckets: the oldest beyond the cap go after each new one). No key is ever listed with
``KEYS``, and no command spans two slots.

An ``order_sessions`` index entry is written after its session (by the second script of a
commit), and its TTL is raised to that session's retention, so it outlives every session it
names; it may still name older sessions that have expired meanwhile: readers skip those and
remove them from it.

:data:`CIRCUIT_IDLE_S` bounds how long an idle circuit outlives its
window (memory and Redis circuits share it so both forget a circuit at the same moment).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from gateway.idempotency import session_id_for

__all__ = [
    "CIRCUIT",
    "CIRCUIT_IDLE_S",
    "EXPIRY",
    "IDEMPOTENCY",
    "ORDER",
    "ORDER_SESSIONS",
    "ORPHANS",
    "OUTBOX",
    "QUEUE_BUCKETS",
    "RATE_LIMIT",
    "ROUTING_STATS",
    "SESSION",
    "WEBHOOK_DEDUP",
    "RedisKeys",
    "bucket",
    "circuit_ttl_s",
]

IDEMPOTENCY = "idem:"
ORDER = "order:"
ORDER_SESSIONS = "order_sessions:"
SESSION = "session:"
CIRCUIT = "circuit:"
ROUTING_STATS = "stats:"
WEBHOOK_DEDUP = "webhook:"
OUTBOX = "outbox"
EXPIRY = "expiry"
RATE_LIMIT = "ratelimit:"
ORPHANS = "orphans"

#: How many buckets the session records and the queues are spread over. Fixed for good:
#: changing it strands every queued item and moves every idempotency record.
QUEUE_BUCKETS = 16

#: How long a circuit's keys live past the end of its window / open period when nothing
#: touches them. A half-open circuit nobody probes for this long is forgotten (reads closed).
CIRCUIT_IDLE_S = 300.0

_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def _part(value: str) -> str:
    return value.translate(_ESCAPES)


def bucket(value: str) -> int:
    """The bucket of a session id (or of a queue item without a session): a stable hash of its
    UTF-8 bytes, the same in every process and release."""
    return zlib.crc32(value.encode()) % QUEUE_BUCKETS


def circuit_ttl_s(*, now: float, window_s: float, open_until: float | None) -> float:
    """How long a circuit's state must be kept: its open period, then its window, then
    :data:`CIRCUIT_IDLE_S`."""
    remaining_open = max(0.0, open_until - now) if open_until is not None else 0.0
    return remaining_open + window_s + CIRCUIT_IDLE_S


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Builds the keys under one root prefix (``Settings.redis_prefix``)."""

    root: str = "gw:"

    def __post_init__(self) -> None:
        if "{" in self.root or "}" in self.root:
            raise ValueError("the Redis key prefix must not contain '{' or '}' (hash tags)")

    def tagged(self, n: int) -> str:
        """The start of every key of bucket ``n`` (its hash tag ``{s<n>}``)."""
        return f"{self.root}{{s{n}}}:"

    def idempotency(self, scope: str, key: str) -> str:
        """The idempotency record of ``key`` within ``scope`` (the merchant), in the bucket of
        the session the key creates."""
        n = bucket(session_id_for(scope, key))
        return f"{self.tagged(n)}{IDEMPOTENCY}{_part(scope)}:{_part(key)}"

    def _order_tag(self, scope: str, order_ref: str) -> str:
        return f"{{{_part(scope)}:{_part(order_ref)}}}"

    def order(self, scope: str, order_ref: str) -> str:
        """The order-guard reservation of ``order_ref`` within ``scope``."""
        return f"{self.root}{ORDER}{self._order_tag(scope, order_ref)}"

    def order_next(self, scope: str, order_ref: str, token: str) -> str:
        """The session id the create holding ``token`` writes, kept while it takes a lapsed or
        finished reservation of ``order_ref`` over (same slot as :meth:`order`)."""
        return f"{self.order(scope, order_ref)}:next:{_part(token)}"

    def session(self, session_id: str) -> str:
        """A stored checkout session."""
        return f"{self.tagged(bucket(session_id))}{SESSION}{_part(session_id)}"

    def order_sessions(self, merchant_id: str, order_ref: str) -> str:
        """The index of ``merchant_id``'s sessions of ``order_ref``: session ids scored by
        ``createdAt`` (epoch microseconds), written with each session (same slot as the
        reservation of the merchant's ``order_ref``)."""
        return f"{self.root}{ORDER_SESSIONS}{self._order_tag(merchant_id, order_ref)}"

    def circuit(self, provider: str) -> str:
        """The circuit-state hash of ``provider``."""
        return f"{self.root}{CIRCUIT}{{{_part(provider)}}}"

    def circuit_failures(self, provider: str) -> str:
        """The sliding window of failure timestamps of ``provider``."""
        return self.circuit(provider) + ":fails"

    def circuit_probes(self, provider: str) -> str:
        """The half-open probes handed out for ``provider``."""
        return self.circuit(provider) + ":probes"

    def routing_stats(self, provider: str) -> str:
        """The base of ``provider``'s routing statistics keys (hash-tagged: one Lua script
        updates all of a provider's segments); :mod:`gateway.routing.stats_redis` appends
        ``:seg:{kind}:{value}`` and ``:index``."""
        return f"{self.root}{ROUTING_STATS}{{{_part(provider)}}}"

    def webhook_dedup(self, provider: str, event_id: str) -> str:
        """A webhook event marker: leased while it is applied, then done."""
        return f"{self.root}{WEBHOOK_DEDUP}{_part(provider)}:{_part(event_id)}"

    def outbox(self, n: int) -> str:
        """The root of bucket ``n``'s notification outbox keys."""
        return f"{self.tagged(n)}{OUTBOX}"

    def outbox_due(self, n: int) -> str:
        """Notification ids scored by when they are due (or when their lease ends)."""
        return self.outbox(n) + ":due"

    def outbox_items(self, n: int) -> str:
        """Notification payloads by id."""
        return self.outbox(n) + ":items"

    def outbox_leases(self, n: int) -> str:
        """The claim token of each notification a worker is delivering."""
        return self.outbox(n) + ":leases"

    def outbox_dead(self, n: int) -> str:
        """Dead-lettered notification ids scored by time of death."""
        return self.outbox(n) + ":dead"

    def outbox_dead_items(self, n: int) -> str:
        """Dead-lettered notification payloads by id."""
        return self.outbox(n) + ":dead_items"

    def orphans_due(self, n: int) -> str:
        """Orphan job ids scored by when they are due (or when their lease ends)."""
        return f"{self.tagged(n)}{ORPHANS}:due"

    def orphans_items(self, n: int) -> str:
        """Orphan jobs by id."""
        return f"{self.tagged(n)}{ORPHANS}:items"

    def orphans_leases(self, n: int) -> str:
        """The claim token of each orphan job a process is working on."""
        return f"{self.tagged(n)}{ORPHANS}:leases"

    def expiry_index(self, n: int) -> str:
        """Expirable session ids of bucket ``n`` scored by ``expiresAt`` (epoch seconds)."""
        return f"{self.tagged(n)}{EXPIRY}"

    def rate_limit(self, limit: str, subject: str) -> str:
        """The token bucket of ``subject`` (a merchant id, or ``*``) under ``limit``."""
        return f"{self.root}{RATE_LIMIT}{_part(limit)}:{_part(subject)}"

    def match_all(self) -> str:
        """A ``SCAN MATCH`` pattern for every key under this root, glob characters escaped."""
        return self.root.translate(_GLOB_SPECIAL) + "*"
