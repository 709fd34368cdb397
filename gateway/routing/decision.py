"""The result of routing one request: ranked candidates, exclusions and the explanation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate", "Exclusion", "RoutingDecision"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible provider and its score; ``components`` (weighted) add up to ``score``."""

    provider: str
    score: float
    components: Mapping[str, float] = field(default_factory=dict)
    #: the raw inputs behind the components (success rate, latency ms, fee, rule points)
    details: Mapping[str, float | str | bool | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A provider that could not take the request, and why."""

    provider: str
    reason: str


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Ranked candidates (best first) and the explanation of how they were chosen."""

    decision_id: str
    rules_version: str
    ranked: tuple[Candidate, ...]
    excluded: tuple[Exclusion, ...] = ()
    matched_rules: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def exclusion_details(self) -> list[dict[str, str]]:
        """The exclusions as the ``details`` of a NO_AVAILABLE_PROVIDER answer."""
        return [{"provider": e.provider, "reason": e.reason} for e in self.excluded]

    def explain(self) -> dict[str, Any]:
        """A JSON-ready explanation for the simulate endpoint, logs and the CLI."""
        return {
            "decisionId": self.decision_id,
            "rulesVersion": self.rules_version,
            "selectedProvider": self.ranked[0].provider if self.ranked else None,
            "candidates": [
                {
                    "provider": c.provider,
                    "score": round(c.score, 4),
                    "components": {k: round(v, 4) for k, v in c.components.items()},
                    "details": {
                        k: round(v, 6) if isinstance(v, float) else v for k, v in c.details.items()
                    },
                }
                for c in self.ranked
            ],
            "excluded": [{"provider": e.provider, "reason": e.reason} for e in self.excluded],
            "matchedRules": list(self.matched_rules),
            "notes": list(self.notes),
        }
