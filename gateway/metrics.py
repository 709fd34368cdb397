"""Every Prometheus metric of the gateway, defined once.

Naming: ``gateway_`` prefix, counters end in ``_total``, durations are ``_seconds`` histograms.
Labels are bounded: route *templates* (never raw paths), provider names from the rules file,
ISO 4217 currencies, fixed outcome/reason vocabularies. No customer data is ever a label value;
merchant ids appear only through :func:`merchant_label`, which passes through only the ids an
operator listed in ``GATEWAY_METRICS_MERCHANTS`` and folds every other merchant into ``"other"``.

Several worker processes (``gateway serve --workers N``) run in prometheus-client multiprocess
mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set *before* this module (and prometheus_client) is
imported; ``gateway serve`` does that. :func:`render` then aggregates every process's values.
Gauges therefore declare a ``multiprocess_mode``.

Who records what:

================================================  =============================================
``HTTP_REQUESTS`` / ``HTTP_DURATION``             :mod:`gateway.middleware`
``SESSIONS_CREATED``, ``FAILOVERS``,              :mod:`gateway.sessions` (creation counts as
``IDEMPOTENCY``, ``SESSION_CREATE_OVERHEAD``      the transition none -> PENDING, source gateway)
``ORPHAN_SESSIONS``                               :mod:`gateway.orphans` and the webhook path
``ROUTING_*``, ``RULES_*``                        :mod:`gateway.routing.service`
``PROVIDER_REQUESTS`` / ``PROVIDER_DURATION``     :mod:`providers.http`
``ADAPTER_FAULTS``                                :mod:`gateway.adapter_boundary`
``CIRCUIT_STATE``                                 :mod:`gateway.circuit`
``STORE_DURATION`` / ``STORE_ERRORS``             :mod:`gateway.store` (timing wrapper)
``WEBHOOKS_RECEIVED``, ``SESSION_TRANSITIONS``,   the session lifecycle (webhooks, cancel,
``NOTIFICATION_*``, ``AMOUNT_MISMATCHES``         expiry sweeper, notification outbox,
                                                  reconciliation of provider verdicts)
``CONNECTIONS_CUT``                               :mod:`gateway.serving` (read timeouts)
``RATE_LIMITED``                                  :mod:`gateway.ratelimit`
================================================  =============================================
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# no ``*_created`` series (a creation timestamp per counter and histogram child): no panel or
# alert reads them, and they doubled the exposition
disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = [
    "ADAPTER_FAULTS",
    "AMOUNT_MISMATCHES",
    "AUTHORIZATIONS_EXPIRING",
    "CIRCUIT_STATE",
    "CIRCUIT_STATE_VALUES",
    "CONNECTIONS_CUT",
    "CONTENT_TYPE",
    "FAILOVERS",
    "HTTP_DURATION",
    "HTTP_REQUESTS",
    "IDEMPOTENCY",
    "NOTIFICATION_BACKLOG",
    "NOTIFICATION_DELIVERIES",
    "NOTIFICATION_DURATION",
    "NOTIFICATION_FAILURES",
    "ORPHAN_SESSIONS",
    "PAYMENT_OPERATIONS",
    "PROVIDER_DURATION",
    "PROVIDER_REQUESTS",
    "RATE_LIMITED",
    "ROUTING_DECISIONS",
    "ROUTING_DURATION",
    "ROUTING_RULE_MATCHES",
    "ROUTING_SCORE",
    "RULES_INFO",
    "RULES_LAST_RELOAD",
    "RULES_RELOADS",
    "RULES_RELOAD_OK",
    "SESSIONS_CREATED",
    "SESSION_CREATE_OVERHEAD",
    "SESSION_TRANSITIONS",
    "STORE_DURATION",
    "STORE_ERRORS",
    "WEBHOOKS_RECEIVED",
    "configure_merchant_labels",
    "merchant_label",
    "multiprocess_dir",
    "render",
]

#: what :func:`render` produces (legacy-escaped names): the classic text format every
#: Prometheus 2.x and 3.x parses
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Buckets, in seconds. The gateway's own work is sub-millisecond; providers take 100s of ms.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PROVIDER_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FAST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_SCORE_BUCKETS = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)

# --- HTTP ------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "gateway_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "gateway_http_request_duration_seconds",
    "Time from receiving a request to having its response, by route template and method.",
    ["route", "method"],
    buckets=_HTTP_BUCKETS,
)

# --- Sessions ----------------------------------------------------------------------------------
SESSIONS_CREATED = Counter(
    "gateway_sessions_created_total",
    "Checkout sessions created, by the provider that created them, currency and merchant "
    "(merchant is 'other' unless listed in GATEWAY_METRICS_MERCHANTS).",
    ["provider", "currency", "merchant"],
)
SESSION_CREATE_OVERHEAD = Histogram(
    "gateway_session_create_overhead_seconds",
    "The gateway's own time per session create: total time minus time waiting on providers.",
    buckets=_FAST_BUCKETS,
)
FAILOVERS = Counter(
    "gateway_failovers_total",
    "A create attempt at one provider failed and the next ranked provider was tried.",
    ["from_provider", "to_provider", "reason"],
)
IDEMPOTENCY = Counter(
    "gateway_idempotency_requests_total",
    "Idempotency-Key claims by outcome: new, resumed (an earlier attempt's pin), replay, "
    "in_flight (409), mismatch (422).",
    ["outcome"],
)
ORPHAN_SESSIONS = Counter(
    "gateway_orphan_sessions_total",
    "Provider sessions left behind by a failover: recorded, expired (cancelled at the provider), "
    "not_expirable (the provider refused), absent (none held), lapsed (gave up after a day), "
    "left_open (no cancel call), paid (a payment webhook for one).",
    ["provider", "event"],
)
AUTHORIZATIONS_EXPIRING = Counter(
    "gateway_authorizations_expiring_total",
    "AUTHORIZED sessions whose authorization lapses at the provider within a day and that were "
    "not captured or voided yet (each counted once, when the merchant is notified), by provider.",
    ["provider"],
)
PAYMENT_OPERATIONS = Counter(
    "gateway_payment_operations_total",
    "Merchant calls after the checkout made to the provider, by call (capture, void, refund), "
    "provider and outcome (the provider's answer in lower case: completed, processing, "
    "authorized, cancelled, pending, succeeded, failed; or rejected, unknown, timeout, ... when "
    "it raised).",
    ["operation", "provider", "outcome"],
)

# --- Routing -----------------------------------------------------------------------------------
ROUTING_DECISIONS = Counter(
    "gateway_routing_decisions_total",
    "Routing decisions by selected provider ('none' when nothing was eligible) and the first "
    "matched rule ('default' when no rule matched).",
    ["provider", "rule"],
)
ROUTING_RULE_MATCHES = Counter(
    "gateway_routing_rule_matches_total",
    "Routing decisions in which a rule matched, by rule id (a decision can match several).",
    ["rule"],
)
ROUTING_DURATION = Histogram(
    "gateway_routing_decision_duration_seconds",
    "Time the routing engine takes to rank the providers for one request.",
    buckets=_FAST_BUCKETS,
)
ROUTING_SCORE = Histogram(
    "gateway_routing_score",
    "Score (0-100) of every ranked candidate, by provider and rank (1 = selected).",
    ["provider", "rank"],
    buckets=_SCORE_BUCKETS,
)
RULES_RELOADS = Counter(
    "gateway_rules_reloads_total",
    "Routing rules reloads by outcome: success (new rules active), unchanged (same bytes), "
    "error (file unreadable or invalid; the old rules keep routing).",
    ["outcome"],
)
RULES_INFO = Gauge(
    "gateway_rules_info",
    "The active routing rules: 1 for the loaded version and content hash, 0 for replaced ones.",
    ["version", "hash"],
    multiprocess_mode="livemax",
)
RULES_RELOAD_OK = Gauge(
    "gateway_rules_last_reload_success",
    "1 when the last rules (re)load succeeded, 0 while the file on disk is refused (the "
    "previous rules keep routing); min over processes.",
    multiprocess_mode="livemin",
)
RULES_LAST_RELOAD = Gauge(
    "gateway_rules_last_reload_timestamp_seconds",
    "Unix time of the last successful rules load.",
    multiprocess_mode="livemax",
)

# --- Providers ---------------------------------------------------------------------------------
PROVIDER_REQUESTS = Counter(
    "gateway_provider_requests_total",
    "HTTP calls to payment providers by provider, operation and outcome (ok, rejected, "
    "server_error, rate_limited, timeout, connection_error).",
    ["provider", "operation", "outcome"],
)
PROVIDER_DURATION = Histogram(
    "gateway_provider_request_duration_seconds",
    "Latency of HTTP calls to payment providers, by provider and operation.",
    ["provider", "operation"],
    buckets=_PROVIDER_BUCKETS,
)

#: values of ``gateway_circuit_state``
CIRCUIT_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
CIRCUIT_STATE = Gauge(
    "gateway_circuit_state",
    "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open (max over processes).",
    ["provider"],
    multiprocess_mode="livemax",
)

# --- Store -------------------------------------------------------------------------------------
STORE_DURATION = Histogram(
    "gateway_store_operation_duration_seconds",
    "Latency of session/idempotency/circuit store operations, by operation.",
    ["operation"],
    buckets=_FAST_BUCKETS,
)
STORE_ERRORS = Counter(
    "gateway_store_errors_total",
    "Store operations that failed (store unavailable), by operation.",
    ["operation"],
)

# --- Session lifecycle -------------------------------------------------------------------------
ADAPTER_FAULTS = Counter(
    "gateway_adapter_faults_total",
    "Exceptions out of a provider adapter that were not provider errors (a bug on the "
    "gateway's side of the seam), typed at the adapter boundary, by provider and operation "
    "(create_session, cancel_session, complete_approved, parse_webhook).",
    ["provider", "operation"],
)
AMOUNT_MISMATCHES = Counter(
    "gateway_amount_mismatches_total",
    "Provider payment verdicts whose amount or currency differed from the session's (not "
    "applied; recorded on the session, merchant notified), by provider and source (webhook, "
    "or the gateway's own capture / authorize call).",
    ["provider", "source"],
)
WEBHOOKS_RECEIVED = Counter(
    "gateway_webhooks_received_total",
    "Provider webhooks received, by provider, normalised event type and outcome (applied, "
    "duplicate, ignored, amount_mismatch, invalid_signature, malformed, unknown_session, "
    "error).",
    ["provider", "event", "outcome"],
)
SESSION_TRANSITIONS = Counter(
    "gateway_session_transitions_total",
    "Session status changes, by previous status ('none' for a new session), new status and "
    "source (gateway, webhook, merchant, expiry).",
    ["from_status", "to_status", "source"],
)
NOTIFICATION_DELIVERIES = Counter(
    "gateway_notification_deliveries_total",
    "Merchant notifications delivered (2xx from the merchant endpoint), by event type.",
    ["event"],
)
NOTIFICATION_FAILURES = Counter(
    "gateway_notification_failures_total",
    "Failed merchant-notification delivery attempts, by event type and reason (timeout, "
    "connection_error, http_4xx, http_5xx, gave_up).",
    ["event", "reason"],
)
NOTIFICATION_DURATION = Histogram(
    "gateway_notification_delivery_duration_seconds",
    "Duration of merchant-notification delivery attempts.",
    buckets=_PROVIDER_BUCKETS,
)
NOTIFICATION_BACKLOG = Gauge(
    "gateway_notification_backlog",
    "Merchant notifications waiting for delivery, counted up to 10,000 (last value measured by"
    " any live process).",
    multiprocess_mode="livemostrecent",
)

CONNECTIONS_CUT = Counter(
    "gateway_connections_cut_total",
    "Client connections the server closed because a request was read too slowly, by phase "
    "(header, body).",
    ["phase"],
)
RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Requests refused with 429 by a rate limit, by limit (merchant, return_page) and merchant "
    "label (see GATEWAY_METRICS_MERCHANTS; 'none' for the unauthenticated return page).",
    ["limit", "merchant"],
)

# --- Merchant labels ---------------------------------------------------------------------------
_labelled_merchants: frozenset[str] = frozenset()


def configure_merchant_labels(merchant_ids: Iterable[str]) -> None:
    """Merchants whose id may appear as a label value (``GATEWAY_METRICS_MERCHANTS``)."""
    global _labelled_merchants
    _labelled_merchants = frozenset(merchant_ids)


def merchant_label(merchant_id: str) -> str:
    """``merchant_id`` when the operator listed it, else ``"other"`` (keeps cardinality bounded)."""
    return merchant_id if merchant_id in _labelled_merchants else "other"


# --- Exposition --------------------------------------------------------------------------------
def multiprocess_dir() -> str | None:
    """The multiprocess directory in use, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> bytes:
    """The text exposition of every metric, aggregated over all worker processes if needed."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
