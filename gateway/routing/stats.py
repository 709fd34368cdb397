"""Learning from outcomes: decayed counters, Bayesian success estimates, latency scores.

Counters are kept per *segment*: a provider overall (``(p, "all", "")``), per currency
(``(p, "currency", "EUR")``) and per billing country (``(p, "country", "NL")``). Every counter
decays with a half-life, so old outcomes fade and a provider that recovered is trusted again.

The success estimate is the posterior mean of a Beta prior: a provider with no data sits at the
prior mean, and ``strength`` pseudo-observations keep a handful of results from swinging it.
A segment is used only when it holds ``min_segment_samples`` (decayed) outcomes, and is itself
shrunk towards the provider's overall estimate. Creation and payment outcomes are estimated
separately and multiplied: the chance a checkout sent there ends paid.

Only the provider's own failures count against it: see :func:`classify_outcome`.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

from gateway.routing.rules import LatencyScoring, Learning, Prior

__all__ = [
    "Counters",
    "Fault",
    "LatencyEstimate",
    "MemoryStatsStore",
    "SegmentKey",
    "StatsSnapshot",
    "StatsStore",
    "SuccessEstimate",
    "beta_mean",
    "classify_outcome",
    "creation_delta",
    "decay",
    "estimate_latency",
    "estimate_success",
    "payment_delta",
    "segments_for",
]

_MEMO_LIMIT = 50_000
#: (provider, kind, value): kind is "all" (value ""), "currency" or "country"
SegmentKey = tuple[str, str, str]


class Fault(StrEnum):
    """Whose fault an outcome was, as far as routing statistics are concerned."""

    SUCCESS = "success"
    PROVIDER = "provider"  # counts as a failure of the provider
    NOT_COUNTED = "not_counted"  # the merchant's, the customer's or ours: ignored


_OUTCOMES: dict[str, Fault] = {
    "created": Fault.SUCCESS,
    "success": Fault.SUCCESS,
    "timeout": Fault.PROVIDER,
    "unavailable": Fault.PROVIDER,
    "rate_limited": Fault.PROVIDER,
    "error": Fault.PROVIDER,
    # an exception out of the adapter: the path to this provider is broken, as in an outage
    "adapter_error": Fault.PROVIDER,
    # a 4xx: the provider refused *our* request (the order's data, our validation)
    "rejected": Fault.NOT_COUNTED,
    "not_supported": Fault.NOT_COUNTED,
    "circuit_open": Fault.NOT_COUNTED,
    "cancelled": Fault.NOT_COUNTED,
}


def classify_outcome(outcome: str) -> Fault:
    """Map an attempt outcome (``ProviderError.outcome`` or ``"created"``) to its fault.

    Unknown outcomes are not counted: a new error kind must never silently punish a provider.
    """
    return _OUTCOMES.get(outcome, Fault.NOT_COUNTED)


@dataclass(frozen=True, slots=True)
class Counters:
    """Decayed counts of one segment. Plain floats: these are counts, never money."""

    creation_ok: float = 0.0
    creation_fail: float = 0.0
    latency_sum: float = 0.0
    latency_n: float = 0.0
    payment_ok: float = 0.0
    payment_fail: float = 0.0

    def as_tuple(self) -> tuple[float, ...]:
        """The six counts in field order."""
        return (
            self.creation_ok,
            self.creation_fail,
            self.latency_sum,
            self.latency_n,
            self.payment_ok,
            self.payment_fail,
        )

    def scaled(self, factor: float) -> Counters:
        """Every count times ``factor``."""
        return Counters(*(v * factor for v in self.as_tuple()))

    def plus(self, other: Counters) -> Counters:
        """Field-wise sum."""
        return Counters(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))


COUNTER_FIELDS = tuple(f.name for f in fields(Counters))


def decay(elapsed_s: float, half_life_s: float) -> float:
    """The weight left after ``elapsed_s`` (1 for no or negative elapsed time)."""
    if elapsed_s <= 0:
        return 1.0
    return float(0.5 ** (elapsed_s / half_life_s))


def creation_delta(outcome: str, latency_ms: float) -> Counters | None:
    """The counter change of one creation attempt, or None when it does not count.

    Latency is learnt from successes and timeouts (a fast refusal says nothing about speed).
    """
    fault = classify_outcome(outcome)
    if fault is Fault.NOT_COUNTED:
        return None
    timed = fault is Fault.SUCCESS or outcome == "timeout"
    lat_sum, lat_n = (max(latency_ms, 0.0), 1.0) if timed else (0.0, 0.0)
    ok = 1.0 if fault is Fault.SUCCESS else 0.0
    return Counters(ok, 1.0 - ok, lat_sum, lat_n)


def payment_delta(success: bool) -> Counters:
    """The counter change of one payment outcome (from a webhook)."""
    return Counters(payment_ok=1.0 if success else 0.0, payment_fail=0.0 if success else 1.0)


def segments_for(provider: str, currency: str | None, country: str | None) -> list[SegmentKey]:
    """The segments one outcome is counted in."""
    out: list[SegmentKey] = [(provider, "all", "")]
    if currency:
        out.append((provider, "currency", currency))
    if country:
        out.append((provider, "country", country))
    return out


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Counters of every segment, decayed to ``as_of``; immutable, swapped whole."""

    segments: Mapping[SegmentKey, Counters] = field(default_factory=lambda: MappingProxyType({}))
    as_of: float = 0.0
    #: estimates derived from these counters, per scoring parameters, filled on first use
    memo: dict[Any, dict[Any, Any]] = field(default_factory=dict, compare=False, repr=False)

    def estimates(self, params: Hashable) -> dict[Any, Any]:
        """The memo table of one set of scoring parameters (bounded)."""
        table = self.memo.get(params)
        if table is None or len(table) > _MEMO_LIMIT:
            if len(self.memo) > 8:
                self.memo.clear()
            table = self.memo[params] = {}
        return table

    @classmethod
    def of(cls, segments: Mapping[SegmentKey, Counters], as_of: float) -> StatsSnapshot:
        """A snapshot over a private copy of ``segments``."""
        return cls(MappingProxyType(dict(segments)), as_of)


EMPTY_SNAPSHOT = StatsSnapshot()


def beta_mean(ok: float, fail: float, prior: Prior) -> float:
    """Posterior mean of Beta(mean*strength, (1-mean)*strength) after ``ok``/``fail``."""
    return (prior.mean * prior.strength + ok) / (prior.strength + ok + fail)


@dataclass(frozen=True, slots=True)
class SuccessEstimate:
    """The success-rate component's input and how it was obtained."""

    rate: float
    creation: float
    payment: float
    samples: float
    segment: str


def _one_rate(
    snap: StatsSnapshot,
    provider: str,
    keys: Sequence[tuple[str, str | None]],
    ok_i: int,
    prior: Prior,
    min_samples: float,
) -> tuple[float, float, str]:
    overall = snap.segments.get((provider, "all", ""))
    ok, fail = (overall.as_tuple()[ok_i], overall.as_tuple()[ok_i + 1]) if overall else (0.0, 0.0)
    base = beta_mean(ok, fail, prior)
    picked: list[tuple[float, float, str]] = []
    for kind, value in keys:
        seg = snap.segments.get((provider, kind, value)) if value else None
        if seg is None:
            continue
        s_ok, s_fail = seg.as_tuple()[ok_i], seg.as_tuple()[ok_i + 1]
        n = s_ok + s_fail
        if n >= min_samples:
            picked.append(
                ((s_ok + prior.strength * base) / (n + prior.strength), n, f"{kind}:{value}")
            )
    if not picked:
        return base, ok + fail, "all"
    rate = sum(p[0] for p in picked) / len(picked)
    return rate, max(p[1] for p in picked), "+".join(p[2] for p in picked)


def estimate_success(
    snap: StatsSnapshot,
    provider: str,
    currency: str | None,
    country: str | None,
    learning: Learning,
) -> SuccessEstimate:
    """Creation success times payment success, each a Beta posterior (segments when rich)."""
    keys = (("currency", currency), ("country", country))
    creation, n, segment = _one_rate(
        snap, provider, keys, 0, learning.creation_prior, learning.min_segment_samples
    )
    payment, _, _ = _one_rate(
        snap, provider, keys, 4, learning.payment_prior, learning.min_segment_samples
    )
    return SuccessEstimate(creation * payment, creation, payment, n, segment)


@dataclass(frozen=True, slots=True)
class LatencyEstimate:
    """Smoothed creation latency and its 0-1 score."""

    ms: float
    samples: float
    score: float


def estimate_latency(snap: StatsSnapshot, provider: str, params: LatencyScoring) -> LatencyEstimate:
    """Mean latency pulled towards the middle of [good, bad] by ``prior_weight`` samples."""
    seg = snap.segments.get((provider, "all", ""))
    total, n = (seg.latency_sum, seg.latency_n) if seg else (0.0, 0.0)
    prior_ms = (params.good_ms + params.bad_ms) / 2
    ms = (prior_ms * params.prior_weight + total) / (params.prior_weight + n)
    score = 1.0 - (ms - params.good_ms) / (params.bad_ms - params.good_ms)
    return LatencyEstimate(ms, n, min(1.0, max(0.0, score)))


class StatsStore(Protocol):
    """Where decayed counters live; Redis shares them across processes."""

    async def add(
        self, segments: Sequence[SegmentKey], delta: Counters, *, now: float, half_life_s: float
    ) -> None:
        """Decay each segment to ``now`` and add ``delta``, atomically per segment."""
        ...

    async def load(
        self, *, providers: Sequence[str], now: float, half_life_s: float
    ) -> dict[SegmentKey, Counters]:
        """Every live segment of ``providers``, decayed to ``now``."""
        ...

    async def close(self) -> None:
        """Release resources this store owns."""
        ...


class MemoryStatsStore:
    """One process's counters; segments idle for ``ttl_s`` are forgotten."""

    def __init__(self, *, ttl_s: float = 7 * 86_400) -> None:
        self._ttl = ttl_s
        self._data: dict[SegmentKey, tuple[float, Counters]] = {}

    async def add(
        self, segments: Sequence[SegmentKey], delta: Counters, *, now: float, half_life_s: float
    ) -> None:
        for key in segments:
            stamp, old = self._data.get(key, (now, Counters()))
            factor = decay(now - stamp, half_life_s)
            self._data[key] = (max(now, stamp), old.scaled(factor).plus(delta))

    async def load(
        self, *, providers: Sequence[str], now: float, half_life_s: float
    ) -> dict[SegmentKey, Counters]:
        for key in [k for k, (t, _) in self._data.items() if now - t > self._ttl]:
            del self._data[key]
        wanted = set(providers)
        return {
            k: c.scaled(decay(now - t, half_life_s))
            for k, (t, c) in self._data.items()
            if k[0] in wanted
        }

    async def close(self) -> None:
        return None


def wall_clock() -> float:
    """Seconds since the epoch: shared by every process, unlike the monotonic clock."""
    return time.time()
