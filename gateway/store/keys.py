"""Every Redis key the gateway writes, built in one place from one root prefix.

The root is ``Settings.redis_prefix`` (default ``gw:``), so several gateways (or test runs) can
share one Redis database without touching each other's keys. The record store
(:mod:`gateway.store.redis`, ``GATEWAY_STORE=redis``) writes the idempotency, order, session,
webhook, expiry, outbox and orphan keys; the coordination (``GATEWAY_COORDINATION=redis``:
:mod:`gateway.store.circuits_redis`, :mod:`gateway.routing.stats_redis`,
:mod:`gateway.ratelimit`) the circuit, stats and ratelimit keys. Layout::

    {root}idem:{scope}:{key}                 hash    idempotency record: lease (a pinned create:
                                                     the pin's ttl), then completion.ttl_s
    {root}order:{scope}:{order_ref}          string  order-guard reservation: lease, then
                                                     completion.order_ttl_s
    {root}session:{session_id}               string  SessionRecord JSON, ttl_s
    {root}order_sessions:{merchant}:{ref}    zset    the merchant's session ids of an
                                                     orderReference by createdAt (epoch µs),
                                                     ttl: the newest session's retention
    {root}circuit:{{provider}}               hash    circuit state (state, open_until, failures)
    {root}circuit:{{provider}}:fails         zset    failure timestamps inside the window
    {root}circuit:{{provider}}:probes        zset    half-open probes handed out
    {root}stats:{{provider}}:seg:{kind}:{v}  hash    routing statistics of one segment
    {root}stats:{{provider}}:index           zset    a provider's live segments
    {root}webhook:{provider}:{event_id}      string  webhook event: processing (lease), then done
    {root}expiry                             zset    expirable session ids by expiresAt
    {root}outbox:due                         zset    notification ids by due time (or lease end)
    {root}outbox:items                       hash    id -> notification JSON (payload, attempts)
    {root}outbox:leases                      hash    id -> claim token of the worker holding it
    {root}outbox:dead                        zset    dead-lettered ids by time of death
    {root}outbox:dead_items                  hash    id -> dead-lettered notification JSON
    {root}ratelimit:{limit}:{subject}        hash    token bucket (tokens, last refill), ttl: refill
    {root}{{orphans}}:due                    zset    orphan job ids by due time (or lease end)
    {root}{{orphans}}:items                  hash    id -> orphan job JSON (the create to re-send)
    {root}{{orphans}}:leases                 hash    id -> claim token of the process holding it

Every variable part is escaped (``%``, ``:``, ``{``, ``}`` become ``%25``, ``%3A``, ``%7B``,
``%7D``), so ``scope="a:b", key="c"`` and ``scope="a", key="b:c"`` can never collide. The
circuit keys of one provider share a ``{hash tag}`` so a Lua script touching all three stays
within one Redis Cluster slot.

The orphan queue's keys share a ``{hash tag}``, so its claim and finish scripts touch one slot.

Every key carries a TTL except the durable queues (``expiry``, ``outbox:*``, ``{orphans}:*``):
their entries are removed when handled, and the dead letters are capped in number. A session
update enqueues its notifications (a create: also its orphan jobs) in the same Lua script, so
those scripts need the session and the queues on one Redis node (a single primary, with replicas
or Sentinel; not Redis Cluster).

An ``order_sessions`` index is written by the script that first writes a session, and its TTL
is raised to that session's retention, so it outlives every session it names; it may still name
older sessions that have expired meanwhile: readers skip those and remove them from it.

:data:`CIRCUIT_IDLE_S` bounds how long an idle circuit outlives its
window (memory and Redis circuits share it so both forget a circuit at the same moment).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CIRCUIT",
    "CIRCUIT_IDLE_S",
    "EXPIRY",
    "IDEMPOTENCY",
    "ORDER",
    "ORDER_SESSIONS",
    "ORPHANS",
    "OUTBOX",
    "RATE_LIMIT",
    "ROUTING_STATS",
    "SESSION",
    "WEBHOOK_DEDUP",
    "RedisKeys",
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
ORPHANS = "{orphans}"

#: How long a circuit's keys live past the end of its window / open period when nothing
#: touches them. A half-open circuit nobody probes for this long is forgotten (reads closed).
CIRCUIT_IDLE_S = 300.0

_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def _part(value: str) -> str:
    return value.translate(_ESCAPES)


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

    def idempotency(self, scope: str, key: str) -> str:
        """The idempotency record of ``key`` within ``scope`` (the merchant)."""
        return f"{self.root}{IDEMPOTENCY}{_part(scope)}:{_part(key)}"

    def order(self, scope: str, order_ref: str) -> str:
        """The order-guard reservation of ``order_ref`` within ``scope``."""
        return f"{self.root}{ORDER}{_part(scope)}:{_part(order_ref)}"

    def session(self, session_id: str) -> str:
        """A stored checkout session."""
        return f"{self.root}{SESSION}{_part(session_id)}"

    def order_sessions(self, merchant_id: str, order_ref: str) -> str:
        """The index of ``merchant_id``'s sessions of ``order_ref``: session ids scored by
        ``createdAt`` (epoch microseconds), written with each session."""
        return f"{self.root}{ORDER_SESSIONS}{_part(merchant_id)}:{_part(order_ref)}"

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

    def outbox(self) -> str:
        """The root of the notification outbox keys."""
        return f"{self.root}{OUTBOX}"

    def outbox_due(self) -> str:
        """Notification ids scored by when they are due (or when their lease ends)."""
        return self.outbox() + ":due"

    def outbox_items(self) -> str:
        """Notification payloads by id."""
        return self.outbox() + ":items"

    def outbox_leases(self) -> str:
        """The claim token of each notification a worker is delivering."""
        return self.outbox() + ":leases"

    def outbox_dead(self) -> str:
        """Dead-lettered notification ids scored by time of death."""
        return self.outbox() + ":dead"

    def outbox_dead_items(self) -> str:
        """Dead-lettered notification payloads by id."""
        return self.outbox() + ":dead_items"

    def orphans_due(self) -> str:
        """Orphan job ids scored by when they are due (or when their lease ends)."""
        return f"{self.root}{ORPHANS}:due"

    def orphans_items(self) -> str:
        """Orphan jobs by id."""
        return f"{self.root}{ORPHANS}:items"

    def orphans_leases(self) -> str:
        """The claim token of each orphan job a process is working on."""
        return f"{self.root}{ORPHANS}:leases"

    def expiry_index(self) -> str:
        """Expirable session ids scored by ``expiresAt`` (epoch seconds)."""
        return f"{self.root}{EXPIRY}"

    def rate_limit(self, limit: str, subject: str) -> str:
        """The token bucket of ``subject`` (a merchant id, or ``*``) under ``limit``."""
        return f"{self.root}{RATE_LIMIT}{_part(limit)}:{_part(subject)}"

    def match_all(self) -> str:
        """A ``SCAN MATCH`` pattern for every key under this root, glob characters escaped."""
        return self.root.translate(_GLOB_SPECIAL) + "*"
