"""The routing engine: a pure function of (features, compiled rules, stats snapshot).

:func:`decide` runs, in this order:

1. **eligibility**: the plan's static exclusions (disabled, no adapter, capabilities and rule
   limits on currency, country, method, capture), then amount limits, the providers whose
   adapter refuses the request (``refused``), rule ``exclude`` actions and the ``unavailable``
   providers (open circuits), each with its reason;
2. **scoring**: per candidate, four components each worth ``weight x raw`` points (raw in
   0-1, weights normalised to 100), their sum the score (0-100). With the ``adaptive``
   learning model the success rate is the Beta posterior mean of the finest segment with
   enough outcomes, and a rate within ``significance`` standard errors of the best counts as
   the best (so stationary noise does not move traffic);
3. **ranking**: score descending; ties by the fallback order, then by name;
4. **placement**: the highest-priority matching pin or split whose provider is eligible moves
   it first (splits are stable per merchant and orderReference); otherwise, with
   ``exploration`` set, a stable share of orders promotes a non-first candidate: with the
   ``adaptive`` model the chance that the candidate's score is really the higher one
   (probability matching, i.e. Thompson sampling in closed form with a normal approximation
   of the posteriors), bounded by the floor and ceiling; with ``decayed`` a fixed share.

The draws are stable per (merchant, orderReference): a retry gets the same decision.

The same inputs give the same decision, always; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import replace
from operator import itemgetter
from types import MappingProxyType
from typing import Any

from gateway.routing.compiled import CompiledRule, CompiledRules
from gateway.routing.decision import Candidate, Exclusion, RoutingDecision
from gateway.routing.eligibility import CompiledProvider
from gateway.routing.features import Features
from gateway.routing.stats import (
    LatencyEstimate,
    StatsSnapshot,
    SuccessEstimate,
    estimate_adaptive,
    estimate_latency,
    estimate_success,
)

__all__ = ["COMPONENTS", "decide", "derive_decision_id", "mandate_exclusion", "stable_unit"]

#: the score components, in the order they are listed and added
COMPONENTS = ("preference", "success_rate", "latency", "cost")
_NONE: Mapping[str, str] = MappingProxyType({})
_BUCKETS = 10_000
#: score (descending, rounded so float noise is not a preference), fallback rank, name
_RANKING = itemgetter(0, 1, 2)


def stable_unit(salt: str, f: Features) -> float:
    """A number in [0, 1) fixed by (salt, merchant, orderReference): a retry gets the same."""
    text = f"{salt}\x00{f.merchant}\x00{f.order_reference}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2.0**64


def derive_decision_id(f: Features, compiled: CompiledRules) -> str:
    """A decision id fixed by the rules and the request's routing features."""
    text = "\x00".join(
        (
            compiled.content_hash,
            f.merchant,
            f.order_reference,
            f.currency,
            str(f.amount),
            f.payment_method,
            f.country or "",
            f.capture_method,
        )
    )
    return "rd_" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


_Learnt = tuple[SuccessEstimate, LatencyEstimate]


def _learnt(
    name: str, f: Features, c: CompiledRules, stats: StatsSnapshot, table: dict[Any, Any]
) -> _Learnt:
    """The success and latency estimates of a provider for this segment, memoised."""
    key = (name, f.currency, f.country, f.payment_method)
    found: _Learnt | None = table.get(key)
    if found is None:
        if c.adaptive:
            success = estimate_adaptive(
                stats, name, f.currency, f.country, f.payment_method, c.learning
            )
        else:
            success = estimate_success(stats, name, f.currency, f.country, c.learning)
        found = table[key] = (success, estimate_latency(stats, name, c.latency))
    return found


def _ranked_rates(learnt: list[_Learnt], z: float) -> list[float]:
    """The success rate each candidate is ranked with: a rate within ``z`` standard errors of
    the best counts as the best (noise is not a reason to move traffic), a rate further off
    is lowered by the distance beyond that."""
    best = max(learnt, key=lambda item: item[0].rate)[0]
    out = []
    for success, _ in learnt:
        margin = z * math.sqrt(best.variance + success.variance)
        gap = best.rate - success.rate - margin
        out.append(best.rate - gap if gap > 0 else best.rate)
    return out


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _chances(ranked: list[Candidate], c: CompiledRules) -> list[float]:
    """Per non-first candidate, the chance that its score is really above the first one's,
    with the success rate and the latency score drawn from their posteriors (normal
    approximations)."""
    w_success, w_latency = c.weights[1], c.weights[2]
    lead = ranked[0]
    lead_score = _raw_score(lead, w_success)
    out = []
    for other in ranked[1:]:
        diff = _raw_score(other, w_success) - lead_score
        var = w_success**2 * (_num(lead, "successVariance") + _num(other, "successVariance"))
        var += w_latency**2 * (_num(lead, "latencyStdDev") ** 2 + _num(other, "latencyStdDev") ** 2)
        sd = math.sqrt(var)
        out.append(_normal_cdf(diff / sd) if sd > 0 else (1.0 if diff > 0 else 0.0))
    return out


def _num(c: Candidate, key: str) -> float:
    return float(c.details.get(key) or 0.0)


def _raw_score(c: Candidate, w_success: float) -> float:
    """The candidate's score with its posterior mean in place of its ranked success rate."""
    return c.score - c.components["success_rate"] + w_success * float(c.details["successRate"] or 0)


def _explore(
    ranked: list[Candidate], f: Features, c: CompiledRules, notes: list[str]
) -> list[Candidate]:
    """Probability matching bounded by the rules: promote another candidate with the chance
    that it is the better one, at least ``floor`` and at most ``ceiling`` of the orders."""
    chances = _chances(ranked, c)
    total = sum(chances)
    share = min(max(total, c.exploration_floor), c.exploration_ceiling)
    explored = share > 0 and stable_unit("explore", f) < share
    pick = 0
    if explored:
        weights = chances if total > 0 else [1.0] * len(chances)
        point = stable_unit("explore-pick", f) * sum(weights)
        for index, weight in enumerate(weights):
            pick = index
            if point < weight:
                break
            point -= weight
        pick += 1
        notes.append(
            f"exploration: {ranked[pick].provider} promoted "
            f"(chance another candidate is better {total:.3f}, share {share:.3f})"
        )
    out = []
    for index, candidate in enumerate(ranked):
        details = dict(candidate.details)
        details["explored"] = explored and index == pick
        details["betterChance"] = chances[index - 1] if index > 0 else None
        out.append(Candidate(candidate.provider, candidate.score, candidate.components, details))
    if explored:
        out.insert(0, out.pop(pick))
    return out


def _score(
    p: CompiledProvider,
    f: Features,
    c: CompiledRules,
    learnt: _Learnt,
    points: float,
    amount_f: float,
    ranked_rate: float | None = None,
) -> Candidate:
    w_pref, w_success, w_latency, w_cost = c.weights
    success, latency = learnt
    rate = success.rate if ranked_rate is None else ranked_rate
    preference = p.preference + points
    preference = 0.0 if preference < 0.0 else 100.0 if preference > 100.0 else preference
    fee = p.fee(f.currency, f.amount)  # exact, for the explanation
    if fee is None:
        cost = 0.5  # fees unknown: neutral
    elif amount_f > 0:  # the fee's share of the amount: a score input, not money
        share = p.fee_rate_f + p.fee_fixed_f.get(f.currency, 0.0) / amount_f
        cost = 1.0 - share * c.inverse_cost_max
        cost = 0.0 if cost < 0.0 else cost
    else:
        cost = 1.0 if fee == 0 else 0.0
    a = w_pref * preference / 100.0
    b = w_success * rate
    d = w_latency * latency.score
    e = w_cost * cost
    details: dict[str, float | str | bool | None] = {
        "basePreference": p.preference,
        "rulePoints": points,
        "successRate": success.rate,
        "creationRate": success.creation,
        "paymentRate": success.payment,
        "successSamples": success.samples,
        "successSegment": success.segment,
        "latencyMs": latency.ms,
        "latencySamples": latency.samples,
        "fee": None if fee is None else format(fee, "f"),
        "costScore": cost,
    }
    if c.adaptive:
        details["paymentSamples"] = success.payment_samples
        details["successRanked"] = rate
        details["successVariance"] = success.variance
        details["successStdDev"] = math.sqrt(success.variance)
        # the latency score is the prior's until samples outweigh it: half its range of doubt
        weight = c.latency.prior_weight
        details["latencyStdDev"] = 0.5 * weight / (weight + latency.samples)
        details["window"] = c.window_text
        details["changeDetectedAt"] = success.changed_at or None
        details["explored"] = False
        details["betterChance"] = None
    return Candidate(
        p.name,
        a + b + d + e,
        {"preference": a, "success_rate": b, "latency": d, "cost": e},
        details,
    )


def _split_target(rule: CompiledRule, f: Features, eligible: set[str]) -> tuple[str | None, int]:
    """The split's provider for this order; an ineligible draw is re-shared proportionally."""
    assert rule.split is not None
    bucket = int(stable_unit("split:" + rule.id, f) * _BUCKETS)
    lower, position = 0, 0.0
    for provider, upper in rule.split:
        if bucket < upper:
            if provider in eligible:
                return provider, bucket
            position = (bucket - lower) / (upper - lower)  # where in the drawn share it fell
            break
        lower = upper
    shares: list[tuple[str, int]] = []
    lower = 0
    for provider, upper in rule.split:
        if provider in eligible:
            shares.append((provider, upper - lower))
        lower = upper
    if not shares:
        return None, bucket
    point = position * sum(share for _, share in shares)
    for provider, share in shares:
        if point < share:
            return provider, bucket
        point -= share
    return shares[-1][0], bucket


def _place(
    ranked: list[Candidate], placing: list[CompiledRule], f: Features, notes: list[str]
) -> str | None:
    """Apply the first pin/split that can; returns the id of the rule that placed, if any."""
    placed_by: str | None = None
    names = {c.provider for c in ranked}
    for rule in placing:
        if placed_by is not None:
            notes.append(
                f"rule {rule.id}: placement overridden by higher-priority rule {placed_by}"
            )
            continue
        if rule.pin is not None:
            target: str | None = rule.pin if rule.pin in names else None
            how = f"pinned {rule.pin}"
        else:
            target, bucket = _split_target(rule, f, names)
            how = f"split bucket {bucket}/{_BUCKETS} -> {target}"
        if target is None:
            notes.append(f"rule {rule.id}: no eligible provider to place, ignored")
            continue
        _to_front(ranked, target)
        notes.append(f"rule {rule.id}: {how}")
        placed_by = rule.id
    return placed_by


def _to_front(ranked: list[Candidate], provider: str) -> None:
    for index, candidate in enumerate(ranked):
        if candidate.provider == provider:
            ranked.insert(0, ranked.pop(index))
            return


def mandate_exclusion(holder: str) -> str:
    """Why a provider other than ``holder`` cannot charge a mandate ``holder`` holds."""
    return f"mandate is held by {holder}"


def _only_holder(
    holder: str,
    excluded: list[Exclusion],
    providers: tuple[CompiledProvider, ...],
) -> tuple[list[Exclusion], tuple[CompiledProvider, ...]]:
    """The exclusions and eligible providers when only ``holder`` may be charged."""
    reason = mandate_exclusion(holder)
    kept = [e for e in excluded if e.provider == holder]
    names = {e.provider for e in excluded} | {p.name for p in providers}
    kept += [Exclusion(name, reason) for name in sorted(names) if name != holder]
    if holder not in names:
        kept.append(Exclusion(holder, "not configured in the routing rules"))
    return kept, tuple(p for p in providers if p.name == holder)


def decide(
    features: Features,
    compiled: CompiledRules,
    stats: StatsSnapshot,
    unavailable: Mapping[str, str] = _NONE,
    *,
    decision_id: str | None = None,
    refused: Mapping[str, str] = _NONE,
    held_by: str | None = None,
) -> RoutingDecision:
    """Rank the providers for one request; see the module docstring for the steps.

    ``unavailable`` maps providers that must not be tried now (an open circuit) to the reason;
    ``refused`` those whose adapter can never take this request
    (:func:`gateway.routing.eligibility.adapter_exclusions`).
    ``held_by`` (``next_in_series``): the provider that holds the mandate; every other
    provider is excluded for it (a saved method is charged where it was saved, never failed
    over), and the holder is ranked only if it is eligible itself.
    A setup session charges nothing: amount bounds do not apply to it.
    An empty ``ranked`` means no provider can take the request (``excluded`` says why).
    """
    f = features
    plan = compiled.plan(f)
    matched = plan.match(f)
    points: dict[str, float] = {}
    ruled_out: dict[str, str] = {}
    placing: list[CompiledRule] = []
    for rule in matched:
        if rule.deltas:
            for provider, delta in rule.deltas:
                points[provider] = points.get(provider, 0.0) + delta
        if rule.exclude:
            for provider in rule.exclude:
                ruled_out.setdefault(provider, rule.id)
        if rule.places:
            placing.append(rule)
    excluded = list(plan.excluded)
    providers = plan.providers
    if held_by is not None:
        excluded, providers = _only_holder(held_by, excluded, providers)
    table = stats.estimates(compiled.stats_key)
    amount_f = float(f.amount)
    bounded = f.session_type != "setup"
    scored: list[tuple[float, int, str, Candidate]] = []
    eligible: list[tuple[CompiledProvider, _Learnt]] = []
    for p in providers:
        reason = p.amount_exclusion(f.currency, f.amount) if bounded else None
        if reason is None and p.name in refused:
            reason = refused[p.name]
        if reason is None and p.name in ruled_out:
            reason = f"excluded by rule {ruled_out[p.name]}"
        if reason is None and p.name in unavailable:
            reason = unavailable[p.name] or "unavailable"
        if reason is not None:
            excluded.append(Exclusion(p.name, reason))
            continue
        eligible.append((p, _learnt(p.name, f, compiled, stats, table)))
    rates: list[float | None] = [None] * len(eligible)
    if compiled.adaptive and eligible:
        rates = list(_ranked_rates([e[1] for e in eligible], compiled.learning.significance))
    for (p, learnt), rate in zip(eligible, rates, strict=True):
        candidate = _score(p, f, compiled, learnt, points.get(p.name, 0.0), amount_f, rate)
        if held_by is not None:
            candidate = replace(
                candidate, details={**candidate.details, "reason": f"holds the mandate ({held_by})"}
            )
        scored.append((-round(candidate.score, 9), p.rank, p.name, candidate))
    scored.sort(key=_RANKING)
    ranked = [item[3] for item in scored]
    notes: list[str] = []
    if ranked:
        placed = _place(ranked, placing, f, notes) if placing else None
        explore = placed is None and len(ranked) > 1 and compiled.exploration_ceiling > 0
        if explore and compiled.adaptive:
            ranked = _explore(ranked, f, compiled, notes)
        elif explore and stable_unit("explore", f) < compiled.exploration_ceiling:
            pick = 1 + int(stable_unit("explore-pick", f) * (len(ranked) - 1))
            notes.append(
                f"exploration: {ranked[pick].provider} promoted to keep its estimate fresh"
            )
            ranked.insert(0, ranked.pop(pick))
    if held_by is not None:
        notes.insert(0, f"next_in_series: routed only to {held_by}, which holds the mandate")
    excluded.sort(key=lambda e: e.provider)
    return RoutingDecision(
        decision_id=decision_id or derive_decision_id(f, compiled),
        rules_version=compiled.rules_version,
        ranked=tuple(ranked),
        excluded=tuple(excluded),
        matched_rules=tuple(r.id for r in matched),
        notes=tuple(notes),
    )
