"""Replay sample requests through rules, and backtest a change against the rules in force.

Behind ``gateway rules simulate FILE --requests R.jsonl [--against OTHER.yaml]``. Each line of
the requests file is either a checkout request body (as merchants send it) or an envelope::

    {"merchantId": "m_123", "request": {...}, "unavailable": {"stripe": "circuit open"}}

Decisions use neutral statistics (no learnt data) unless a snapshot is passed, so a replay is
reproducible: the same files give the same report, byte for byte.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.domain.models import CheckoutRequest, semantic_problems
from gateway.routing.compiled import CompiledRules
from gateway.routing.decision import RoutingDecision
from gateway.routing.eligibility import AdapterCheck, adapter_exclusions
from gateway.routing.engine import decide
from gateway.routing.features import extract_features
from gateway.routing.stats import EMPTY_SNAPSHOT, StatsSnapshot

__all__ = [
    "Backtest",
    "Sample",
    "Shift",
    "Simulation",
    "backtest",
    "format_backtest",
    "format_simulation",
    "read_samples",
    "simulate",
]

NONE = "(none)"


@dataclass(frozen=True, slots=True)
class Sample:
    """One replayed request and where it came from."""

    line: int
    merchant: str
    request: CheckoutRequest
    unavailable: Mapping[str, str] = field(default_factory=dict)


def read_samples(
    path: str | Path, *, default_merchant: str = "sample"
) -> tuple[list[Sample], list[str]]:
    """Parse a JSON-lines file; returns the samples and one message per unusable line."""
    samples: list[Sample] = []
    problems: list[str] = []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line, parse_float=Decimal)
        except ValueError as exc:
            problems.append(f"{path}:{number}: not JSON ({exc})")
            continue
        merchant, unavailable, body = default_merchant, {}, data
        if isinstance(data, dict) and "request" in data and "orderReference" not in data:
            merchant = str(data.get("merchantId", default_merchant))
            unavailable = {str(k): str(v) for k, v in (data.get("unavailable") or {}).items()}
            body = data["request"]
        try:
            request = CheckoutRequest.model_validate(body, context={"allow_http_localhost": True})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            problems.append(f"{path}:{number}: invalid request ({where}: {first['msg']})")
            continue
        issues = semantic_problems(request)
        if issues:
            problems.append(f"{path}:{number}: invalid request ({issues[0]})")
            continue
        samples.append(Sample(number, merchant, request, unavailable))
    return samples, problems


@dataclass(slots=True)
class Simulation:
    """The decisions of one rule set over the samples, and their tallies."""

    rules_version: str
    decisions: list[tuple[Sample, RoutingDecision]]
    shares: Counter[str]
    rule_hits: Counter[str]

    @property
    def total(self) -> int:
        return len(self.decisions)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (shares in percent, rounded to 0.1)."""
        return {
            "rulesVersion": self.rules_version,
            "requests": self.total,
            "shares": {p: _pct(n, self.total) for p, n in _by_count(self.shares)},
            "counts": dict(_by_count(self.shares)),
            "rulesFired": dict(_by_count(self.rule_hits)),
        }


def _pct(n: int, total: int) -> float:
    return round(100.0 * n / total, 1) if total else 0.0


def _by_count(counter: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))


def _first(decision: RoutingDecision) -> str:
    return decision.ranked[0].provider if decision.ranked else NONE


def simulate(
    compiled: CompiledRules,
    samples: Iterable[Sample],
    stats: StatsSnapshot = EMPTY_SNAPSHOT,
    checks: Mapping[str, AdapterCheck] | None = None,
) -> Simulation:
    """Route every sample; count the first choices and the rules that matched.

    ``checks`` are the adapters' eligibility checks (as the gateway's router applies them).
    """
    result = Simulation(compiled.rules_version, [], Counter(), Counter())
    for sample in samples:
        features = extract_features(sample.request, sample.merchant)
        refused = adapter_exclusions(checks, sample.request) if checks else {}
        decision = decide(features, compiled, stats, sample.unavailable, refused=refused)
        result.decisions.append((sample, decision))
        result.shares[_first(decision)] += 1
        result.rule_hits.update(decision.matched_rules)
    return result


@dataclass(frozen=True, slots=True)
class Shift:
    """One request whose first choice differs between the two rule sets."""

    line: int
    order_reference: str
    before: str
    after: str
    rules_added: tuple[str, ...]
    rules_removed: tuple[str, ...]


@dataclass(slots=True)
class Backtest:
    """``after`` (the proposed rules) against ``before`` (the rules in force)."""

    before: Simulation
    after: Simulation
    shifts: list[Shift]

    def flows(self) -> list[tuple[tuple[str, str], int]]:
        """(before, after) -> number of requests that moved that way."""
        return _by_count_pairs(Counter((s.before, s.after) for s in self.shifts))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready report: both summaries, the share change and every moved request."""
        providers = sorted(set(self.before.shares) | set(self.after.shares))
        total = self.after.total
        return {
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "shareChange": {
                p: round(_pct(self.after.shares[p], total) - _pct(self.before.shares[p], total), 1)
                for p in providers
            },
            "changed": len(self.shifts),
            "flows": [{"from": a, "to": b, "requests": n} for (a, b), n in self.flows()],
            "requests": [
                {
                    "line": s.line,
                    "orderReference": s.order_reference,
                    "before": s.before,
                    "after": s.after,
                    "rulesAdded": list(s.rules_added),
                    "rulesRemoved": list(s.rules_removed),
                }
                for s in self.shifts
            ],
        }


def _by_count_pairs(counter: Counter[tuple[str, str]]) -> list[tuple[tuple[str, str], int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))


def backtest(
    proposed: CompiledRules,
    current: CompiledRules,
    samples: list[Sample],
    stats: StatsSnapshot = EMPTY_SNAPSHOT,
    checks: Mapping[str, AdapterCheck] | None = None,
) -> Backtest:
    """Replay ``samples`` through both rule sets and list every request that moves."""
    before = simulate(current, samples, stats, checks)
    after = simulate(proposed, samples, stats, checks)
    shifts: list[Shift] = []
    for (sample, old), (_, new) in zip(before.decisions, after.decisions, strict=True):
        if _first(old) != _first(new):
            shifts.append(
                Shift(
                    line=sample.line,
                    order_reference=sample.request.orderReference,
                    before=_first(old),
                    after=_first(new),
                    rules_added=tuple(r for r in new.matched_rules if r not in old.matched_rules),
                    rules_removed=tuple(r for r in old.matched_rules if r not in new.matched_rules),
                )
            )
    return Backtest(before, after, shifts)


def format_simulation(sim: Simulation, source: str) -> str:
    """The human report of one replay."""
    lines = [f"{source}: rules {sim.rules_version}, {sim.total} requests", ""]
    lines.append(f"{'provider':<16}{'share':>8}{'requests':>10}")
    for provider, n in _by_count(sim.shares):
        lines.append(f"{provider:<16}{_pct(n, sim.total):>7.1f}%{n:>10}")
    lines += ["", "rules fired:"]
    if not sim.rule_hits:
        lines.append("  (none)")
    for rule, n in _by_count(sim.rule_hits):
        lines.append(f"  {rule:<40}{n:>6}  ({_pct(n, sim.total):.1f}%)")
    return "\n".join(lines)


def format_backtest(result: Backtest, source: str, against: str) -> str:
    """The human report of a backtest: share change in percentage points, then each move."""
    total = result.after.total
    lines = [
        f"backtest: {source} ({result.after.rules_version}) against {against} "
        f"({result.before.rules_version}), {total} requests",
        "",
        f"{'provider':<16}{'before':>8}{'after':>8}{'change':>10}",
    ]
    providers = sorted(set(result.before.shares) | set(result.after.shares))
    for p in providers:
        old, new = _pct(result.before.shares[p], total), _pct(result.after.shares[p], total)
        lines.append(f"{p:<16}{old:>7.1f}%{new:>7.1f}%{new - old:>+8.1f}pp")
    lines += [
        "",
        f"requests that move: {len(result.shifts)} of {total} "
        f"({_pct(len(result.shifts), total):.1f}%)",
    ]
    for (a, b), n in result.flows():
        lines.append(f"  {a} -> {b}: {n}")
    for s in result.shifts:
        why = [f"+{r}" for r in s.rules_added] + [f"-{r}" for r in s.rules_removed]
        detail = f"  rules {' '.join(why)}" if why else ""
        lines.append(f"  line {s.line} {s.order_reference}: {s.before} -> {s.after}{detail}")
    return "\n".join(lines)
