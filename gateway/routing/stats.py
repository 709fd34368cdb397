"""Learning from outcomes: decayed counters, Bayesian success estimates, latency scores.

Counters are kept per *segment*: a provider overall (``(p, "all", "")``), per currency
(``(p, "currency", "EUR")``), per billing country (``(p, "country", "NL")``), per payment method
(``(p, "method", "card")``) and per cell of all three (``(p, "cell", "EUR.NL.card")``). Every
counter decays with a half-life, so old outcomes fade and a provider that recovered is trusted
again.

The ``adaptive`` model (:func:`apply_outcomes`, :func:`estimate_adaptive`) also forgets by
volume (a segment holds about ``window_outcomes`` outcomes) and runs CUSUM change detection per
segment: on a detected drop or rise the old evidence is dropped and the estimate restarts from
the recent outcomes. The ``decayed`` model (:func:`estimate_success`) is the earlier learner.

The success estimate is the posterior mean of a Beta prior: a provider with no data sits at the
prior mean, and ``strength`` pseudo-observations keep a handful of results from swinging it.
A segment is used only when it holds ``min_segment_samples`` (decayed) outcomes, and is itself
shrunk towards coarser estimates. Creation and payment outcomes are estimated separately and
multiplied: the chance a checkout sent there ends paid.

Only the provider's own failures count against it: see :func:`classify_outcome`.
"""

from __future__ import annotations

import math
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
    "Forgetting",
    "LatencyEstimate",
    "MemoryStatsStore",
    "SegmentKey",
    "StatsSnapshot",
    "StatsStore",
    "SuccessEstimate",
    "apply_outcomes",
    "beta_mean",
    "cell_of",
    "classify_outcome",
    "creation_delta",
    "cusum_step",
    "decay",
    "estimate_adaptive",
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
    """Decayed counts of one segment. Plain floats: these are counts, never money.

    The ``fast_*`` counts forget faster (``Forgetting.fast_window``): after a detected change
    the estimate restarts from them. ``cusum_*`` are the change detector's statistics.
    ``changed_at`` is when a change was last detected (0: never); it is a time, neither scaled
    nor added.
    """

    creation_ok: float = 0.0
    creation_fail: float = 0.0
    latency_sum: float = 0.0
    latency_n: float = 0.0
    payment_ok: float = 0.0
    payment_fail: float = 0.0
    fast_creation_ok: float = 0.0
    fast_creation_fail: float = 0.0
    fast_payment_ok: float = 0.0
    fast_payment_fail: float = 0.0
    #: CUSUM statistics of a drop / a rise of the creation and payment rates
    cusum_creation_down: float = 0.0
    cusum_creation_up: float = 0.0
    cusum_payment_down: float = 0.0
    cusum_payment_up: float = 0.0
    changed_at: float = 0.0

    def as_tuple(self) -> tuple[float, ...]:
        """Every field in field order."""
        return (
            self.creation_ok,
            self.creation_fail,
            self.latency_sum,
            self.latency_n,
            self.payment_ok,
            self.payment_fail,
            self.fast_creation_ok,
            self.fast_creation_fail,
            self.fast_payment_ok,
            self.fast_payment_fail,
            self.cusum_creation_down,
            self.cusum_creation_up,
            self.cusum_payment_down,
            self.cusum_payment_up,
            self.changed_at,
        )

    def scaled(self, factor: float) -> Counters:
        """Every count times ``factor`` (``changed_at`` kept)."""
        *counts, changed_at = self.as_tuple()
        return Counters(*[*(v * factor for v in counts), changed_at])

    def plus(self, other: Counters) -> Counters:
        """Field-wise sum (the later ``changed_at``)."""
        pairs = zip(self.as_tuple()[:-1], other.as_tuple()[:-1], strict=True)
        return Counters(*[*(a + b for a, b in pairs), max(self.changed_at, other.changed_at)])


COUNTER_FIELDS = tuple(f.name for f in fields(Counters))


@dataclass(frozen=True, slots=True)
class Forgetting:
    """Volume-based forgetting and change detection (:class:`~gateway.routing.rules.Learning`).

    Before ``n`` new outcomes are added, a segment's counts are multiplied by
    ``(1 - 1/window) ** n`` (the fast counts by the same with ``fast_window``), so the
    evidence is worth about ``window`` outcomes however high the volume. ``threshold`` 0
    turns change detection off.
    """

    window: float
    fast_window: float
    threshold: float
    min_samples: float
    shift: float = 0.15

    @classmethod
    def of(cls, learning: Learning) -> Forgetting | None:
        """The forgetting of ``learning`` (None for the time-only ``decayed`` model)."""
        if learning.model == "decayed":
            return None
        cd = learning.change_detection
        return cls(
            learning.window_outcomes,
            cd.fast_window,
            cd.threshold if cd.enabled else 0.0,
            cd.min_samples,
            cd.shift,
        )


def cusum_step(
    ok: float, fail: float, rate: float, shift: float, down: float, up: float
) -> tuple[float, float]:
    """Both one-sided CUSUM statistics after ``ok``/``fail`` outcomes, against the rate
    ``rate`` and the alternatives ``rate - shift`` (a drop) and ``rate + shift`` (a rise)."""
    low = max(rate - shift, 0.01)
    high = min(rate + shift, 0.99)
    if low < rate:
        down = max(0.0, down + ok * math.log(low / rate) + fail * math.log((1 - low) / (1 - rate)))
    if high > rate:
        up = max(0.0, up + ok * math.log(high / rate) + fail * math.log((1 - high) / (1 - rate)))
    return down, up


def _forget_pair(
    slow: tuple[float, float],
    fast: tuple[float, float],
    cusum: tuple[float, float],
    added: tuple[float, float],
    f: Forgetting,
) -> tuple[float, float, float, float, float, float, float, bool]:
    """(slow ok, slow fail, fast ok, fast fail, cusum down, cusum up, slow factor, changed)
    after adding ``added``."""
    n = added[0] + added[1]
    if n <= 0:
        return (*slow, *fast, *cusum, 1.0, False)
    down, up = cusum
    if f.threshold > 0 and slow[0] + slow[1] >= f.fast_window:  # a rate worth testing against
        rate = (slow[0] + 0.5) / (slow[0] + slow[1] + 1.0)
        down, up = cusum_step(added[0], added[1], rate, f.shift, down, up)
    ks = (1.0 - 1.0 / f.window) ** n
    kf = (1.0 - 1.0 / f.fast_window) ** n
    so, sf = slow[0] * ks + added[0], slow[1] * ks + added[1]
    fo, ff = fast[0] * kf + added[0], fast[1] * kf + added[1]
    if f.threshold > 0 and max(down, up) > f.threshold and fo + ff >= f.min_samples:
        return (fo, ff, fo, ff, 0.0, 0.0, ks, True)
    return (so, sf, fo, ff, down, up, ks, False)


def apply_outcomes(old: Counters, delta: Counters, forgetting: Forgetting, now: float) -> Counters:
    """``old`` (decayed to ``now``) after ``delta``: volume forgetting and change detection.

    The Redis store's script does exactly this (tests hold them to the same numbers).
    """
    c_ok, c_fail, c_fo, c_ff, c_down, c_up, c_k, c_changed = _forget_pair(
        (old.creation_ok, old.creation_fail),
        (old.fast_creation_ok, old.fast_creation_fail),
        (old.cusum_creation_down, old.cusum_creation_up),
        (delta.creation_ok, delta.creation_fail),
        forgetting,
    )
    p_ok, p_fail, p_fo, p_ff, p_down, p_up, _, p_changed = _forget_pair(
        (old.payment_ok, old.payment_fail),
        (old.fast_payment_ok, old.fast_payment_fail),
        (old.cusum_payment_down, old.cusum_payment_up),
        (delta.payment_ok, delta.payment_fail),
        forgetting,
    )
    return Counters(
        c_ok,
        c_fail,
        old.latency_sum * c_k + delta.latency_sum,
        old.latency_n * c_k + delta.latency_n,
        p_ok,
        p_fail,
        c_fo,
        c_ff,
        p_fo,
        p_ff,
        c_down,
        c_up,
        p_down,
        p_up,
        now if c_changed or p_changed else old.changed_at,
    )


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


def cell_of(currency: str | None, country: str | None, method: str | None) -> str:
    """The value of the finest segment: currency, country and payment method together."""
    return f"{currency or '_'}.{country or '_'}.{method or '_'}"


def segments_for(
    provider: str, currency: str | None, country: str | None, method: str | None = None
) -> list[SegmentKey]:
    """The segments one outcome is counted in: overall, each of currency, country and payment
    method, and (with a method) the cell of all three."""
    out: list[SegmentKey] = [(provider, "all", "")]
    if currency:
        out.append((provider, "currency", currency))
    if country:
        out.append((provider, "country", country))
    if method:
        out.append((provider, "method", method))
        out.append((provider, "cell", cell_of(currency, country, method)))
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
    #: posterior variance of ``rate`` (0 for the ``decayed`` model, which ignores it)
    variance: float = 0.0
    #: when a change was last detected in the segment used (0: never)
    changed_at: float = 0.0
    #: payment outcomes behind ``payment`` (``samples`` counts creation attempts)
    payment_samples: float = 0.0


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


def _posterior(ok: float, fail: float, prior_mean: float, strength: float) -> tuple[float, float]:
    """Mean and the evidence behind it (observations plus pseudo-observations)."""
    weight = strength + ok + fail
    return (prior_mean * strength + ok) / weight, weight


def _usable(samples: float, changed_at: float, min_samples: float) -> bool:
    """Whether a segment's own outcomes count: enough of them, or any since a detected change
    (the coarser segments may not have seen the change yet)."""
    return samples >= min_samples or (changed_at > 0 and samples > 0)


def _hierarchical(
    snap: StatsSnapshot,
    provider: str,
    marginals: Sequence[SegmentKey],
    cell: SegmentKey | None,
    ok_i: int,
    prior: Prior,
    min_samples: float,
) -> tuple[float, float, float, str, float]:
    """(mean, evidence, samples, segment name, changed_at): overall, then the usable marginal
    segments (averaged, each shrunk towards overall), then the cell (shrunk towards those)."""
    overall = snap.segments.get((provider, "all", ""))
    row = overall.as_tuple() if overall else (0.0,) * 15
    mean, weight = _posterior(row[ok_i], row[ok_i + 1], prior.mean, prior.strength)
    samples, name, changed = row[ok_i] + row[ok_i + 1], "all", row[14]
    picked: list[tuple[float, float, float, str, float]] = []
    for key in marginals:
        seg = snap.segments.get(key)
        if seg is None:
            continue
        t = seg.as_tuple()
        n = t[ok_i] + t[ok_i + 1]
        if _usable(n, t[14], min_samples):
            m, w = _posterior(t[ok_i], t[ok_i + 1], mean, prior.strength)
            picked.append((m, w, n, f"{key[1]}:{key[2]}", t[14]))
    if picked:
        mean = sum(p[0] for p in picked) / len(picked)
        weight = min(p[1] for p in picked)
        samples = min(p[2] for p in picked)
        name = "+".join(p[3] for p in picked)
        changed = max(p[4] for p in picked)
    seg = snap.segments.get(cell) if cell is not None else None
    if seg is not None:
        t = seg.as_tuple()
        n = t[ok_i] + t[ok_i + 1]
        if _usable(n, t[14], min_samples):
            mean, weight = _posterior(t[ok_i], t[ok_i + 1], mean, prior.strength)
            samples, name, changed = n, f"cell:{cell[2]}" if cell else name, t[14]
    return mean, weight, samples, name, changed


def estimate_adaptive(
    snap: StatsSnapshot,
    provider: str,
    currency: str | None,
    country: str | None,
    method: str | None,
    learning: Learning,
) -> SuccessEstimate:
    """The ``adaptive`` model's estimate: creation times payment success, each a Beta
    posterior over the finest segment with enough outcomes (falling back to coarser ones),
    with the variance of the product for ranking and exploration."""
    marginals = [
        (provider, kind, value)
        for kind, value in (("currency", currency), ("country", country), ("method", method))
        if value
    ]
    cell = (provider, "cell", cell_of(currency, country, method)) if method else None
    min_n = learning.min_segment_samples
    c_mean, c_w, samples, _, c_changed = _hierarchical(
        snap, provider, marginals, cell, 0, learning.creation_prior, min_n
    )
    p_mean, p_w, p_samples, segment, p_changed = _hierarchical(
        snap, provider, marginals, cell, 4, learning.payment_prior, min_n
    )
    c_var = c_mean * (1 - c_mean) / (c_w + 1)
    p_var = p_mean * (1 - p_mean) / (p_w + 1)
    variance = c_mean * c_mean * p_var + p_mean * p_mean * c_var + c_var * p_var
    return SuccessEstimate(
        c_mean * p_mean,
        c_mean,
        p_mean,
        samples,
        segment,
        variance,
        max(c_changed, p_changed),
        p_samples,
    )


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
        self,
        segments: Sequence[SegmentKey],
        delta: Counters,
        *,
        now: float,
        half_life_s: float,
        forgetting: Forgetting | None = None,
    ) -> None:
        """Decay each segment to ``now`` and add ``delta``, atomically per segment; with
        ``forgetting``, through :func:`apply_outcomes`."""
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
        self,
        segments: Sequence[SegmentKey],
        delta: Counters,
        *,
        now: float,
        half_life_s: float,
        forgetting: Forgetting | None = None,
    ) -> None:
        for key in segments:
            stamp, old = self._data.get(key, (now, Counters()))
            decayed = old.scaled(decay(now - stamp, half_life_s))
            if forgetting is None:
                updated = decayed.plus(delta)
            else:
                updated = apply_outcomes(decayed, delta, forgetting, max(now, stamp))
            self._data[key] = (max(now, stamp), updated)

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
