"""The documented shape of a routing explanation (``POST /api/v1/routing/simulate``).

These models only describe :meth:`gateway.routing.decision.RoutingDecision.explain` for the
OpenAPI document; the handler answers the explanation itself.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gateway.domain.titles import field_title

__all__ = ["RoutingCandidate", "RoutingExplanation"]


class RoutingCandidateDetails(BaseModel):
    """The raw inputs behind a candidate's score, and what the learner knows."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    basePreference: float
    rulePoints: float
    successRate: float = Field(description="Estimated chance a checkout sent here ends paid")
    creationRate: float
    paymentRate: float
    successSamples: float = Field(description="Creation outcomes behind the estimate")
    successSegment: str = Field(
        description="The segment the estimate comes from: all, currency:X+country:Y+method:Z "
        "(the rich ones, averaged) or cell:CUR.CC.method"
    )
    latencyMs: float
    latencySamples: float
    fee: str | None
    costScore: float
    paymentSamples: float | None = Field(
        None, description="Payment outcomes behind the estimate (adaptive model)"
    )
    successRanked: float | None = Field(
        None, description="The rate used for ranking: within the significance band of the best"
    )
    successVariance: float | None = None
    successStdDev: float | None = Field(None, description="Posterior standard deviation")
    latencyStdDev: float | None = Field(
        None, description="Doubt about the latency score (0-1): shrinks with latency samples"
    )
    window: str | None = Field(None, description="How much evidence an estimate keeps")
    changeDetectedAt: float | None = Field(
        None, description="When a change of rate was last detected (epoch seconds)"
    )
    explored: bool | None = Field(
        None, description="True when this candidate was promoted to first to explore"
    )
    betterChance: float | None = Field(
        None, description="Chance this candidate's score is really above the leader's"
    )


class RoutingCandidate(BaseModel):
    """One eligible provider, best first."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    provider: str
    score: float
    components: dict[str, float]
    details: RoutingCandidateDetails


class RoutingExclusion(BaseModel):
    """A provider that could not take the request, and why."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    provider: str
    reason: str


class RoutingExplanation(BaseModel):
    """A routing decision and how it was made."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    decisionId: str
    rulesVersion: str
    selectedProvider: str | None
    candidates: list[RoutingCandidate]
    excluded: list[RoutingExclusion]
    matchedRules: list[str]
    notes: list[str]
    simulated: bool
