"""The routing-rules file: a versioned YAML schema loaded into frozen pydantic models.

``load_rules_file`` / ``load_rules_text`` return :class:`LoadedRules` (the models, the content
hash, and the line of every key) or raise :class:`RulesError` listing *every* problem with its
line number. The README's "Routing rules reference" documents the format, one example per construct.

The shape::

    schema_version: 1           # the format of this file
    version: "2024-11-21.1"     # this rule set's identity, named by every decision
    providers: {name: Provider}
    scoring: Scoring
    rules: [Rule]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.domain.models import PAYMENT_METHODS
from gateway.domain.money import MAX_AMOUNT
from gateway.routing.conditions import (
    Condition,
    Countries,
    Currencies,
    CurrencyCode,
    FrozenModel,
    ProviderName,
    as_text,
    one_or_many,
)
from gateway.routing.yamlsource import Path, YamlProblem, line_for, parse_yaml, readable_path

__all__ = [
    "Action",
    "AmountLimits",
    "ChangeDetection",
    "Exploration",
    "Fees",
    "LoadedRules",
    "ProviderRules",
    "Rule",
    "RulesError",
    "RulesFile",
    "RulesProblem",
    "Scoring",
    "load_rules_file",
    "load_rules_text",
]

Points = Annotated[float, Field(ge=-100, le=100)]
Percent = Annotated[Decimal, Field(ge=0, le=100)]
NonNegative = Annotated[Decimal, Field(ge=0)]
#: fee inputs are bounded so the fee of any accepted amount is exact in the money context
FeePercent = Annotated[Decimal, Field(ge=0, le=100, decimal_places=4)]
FeeFixed = Annotated[Decimal, Field(ge=0, lt=MAX_AMOUNT, decimal_places=3)]


def _methods(value: tuple[str, ...]) -> tuple[str, ...]:
    for method in value:
        if method not in PAYMENT_METHODS:
            raise ValueError(f"{method!r} is not a payment method ({', '.join(PAYMENT_METHODS)})")
    return value


class AmountLimits(FrozenModel):
    """Inclusive bounds on ``amount.total`` in major units of the request currency."""

    min: NonNegative | None = None
    max: NonNegative | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AmountLimits:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class Fees(FrozenModel):
    """What a provider charges: ``percent`` of the total plus a fixed amount per currency."""

    percent: FeePercent = Decimal(0)
    fixed: dict[CurrencyCode, FeeFixed] = Field(default_factory=dict)


class ProviderRules(FrozenModel):
    """One provider: whether it routes, its base preference, what it may take, its fees.

    Lists narrow what the adapter declares; they can never widen it.
    """

    enabled: bool = True
    preference: Annotated[float, Field(ge=0, le=100)] = 50.0
    currencies: Currencies | None = None
    countries: Countries | None = None
    payment_methods: (
        Annotated[tuple[str, ...], BeforeValidator(one_or_many), AfterValidator(_methods)] | None
    ) = None
    capture_methods: (
        Annotated[tuple[Literal["automatic", "manual"], ...], BeforeValidator(one_or_many)] | None
    ) = None
    amount: AmountLimits | None = None
    amount_per_currency: dict[CurrencyCode, AmountLimits] = Field(default_factory=dict)
    fees: Fees | None = None


class Action(FrozenModel):
    """What a matching rule does. Several keys may be combined; ``pin`` and ``split`` not."""

    boost: dict[ProviderName, Points] | None = None
    penalize: dict[ProviderName, Points] | None = None
    exclude: Annotated[tuple[ProviderName, ...], BeforeValidator(one_or_many)] | None = None
    pin: ProviderName | None = None
    split: dict[ProviderName, Annotated[int, Field(gt=0, le=100)]] | None = None

    @field_validator("split")
    @classmethod
    def _adds_up(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None:
            if len(value) < 2:
                raise ValueError("a split needs at least two providers")
            total = sum(value.values())
            if total != 100:
                raise ValueError(f"split percentages must add up to 100 (they add up to {total})")
        return value

    @model_validator(mode="after")
    def _something(self) -> Action:
        if not any(
            v is not None for v in (self.boost, self.penalize, self.exclude, self.pin, self.split)
        ):
            raise ValueError("an action needs at least one of boost, penalize, exclude, pin, split")
        if self.pin is not None and self.split is not None:
            raise ValueError("pin and split in one rule contradict each other: use two rules")
        return self


class Rule(FrozenModel):
    """``when`` the request matches, ``then`` act. Higher ``priority`` is applied first."""

    id: Annotated[
        str, BeforeValidator(as_text), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    ]
    description: str = ""
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = 0
    enabled: bool = True
    when: Condition | None = None
    then: Action


class Weights(FrozenModel):
    """Relative weights of the score components; normalised so a score runs 0-100."""

    preference: Annotated[float, Field(ge=0)] = 40.0
    success_rate: Annotated[float, Field(ge=0)] = 30.0
    latency: Annotated[float, Field(ge=0)] = 15.0
    cost: Annotated[float, Field(ge=0)] = 15.0

    @model_validator(mode="after")
    def _positive(self) -> Weights:
        if self.preference + self.success_rate + self.latency + self.cost <= 0:
            raise ValueError("at least one weight must be positive")
        return self


class Prior(FrozenModel):
    """A Beta prior: the rate assumed before any data, worth ``strength`` observations."""

    mean: Annotated[float, Field(gt=0, lt=1)]
    strength: Annotated[float, Field(gt=0, le=100_000)]


class ChangeDetection(FrozenModel):
    """CUSUM tests on each segment's approval and creation rates.

    Two one-sided CUSUM statistics per rate add up the log-likelihood ratio of each outcome
    under "the rate moved by ``shift``" (down, and up) over "the rate is the current estimate";
    when one exceeds ``threshold`` (and the last ``fast_window`` outcomes hold at least
    ``min_samples``), the old evidence is dropped and the estimate restarts from the recent
    outcomes (a window of ``fast_window``).
    """

    enabled: bool = True
    shift: Annotated[float, Field(gt=0, lt=1)] = 0.15
    threshold: Annotated[float, Field(gt=0, le=1000)] = 6.0
    fast_window: Annotated[float, Field(ge=2, le=10_000)] = 20.0
    min_samples: Annotated[float, Field(ge=1)] = 10.0

    @model_validator(mode="after")
    def _reachable(self) -> ChangeDetection:
        # the recent counts approach fast_window but never reach it
        if self.enabled and self.min_samples >= self.fast_window:
            raise ValueError("change_detection.min_samples must be smaller than fast_window")
        return self


class Learning(FrozenModel):
    """How observed outcomes feed the success-rate and latency components.

    ``model: adaptive`` (the default) forgets by volume (``window_outcomes``) as well as by
    time (``half_life_seconds``), detects changes and ranks with the uncertainty of each
    estimate; ``model: decayed`` is the earlier learner (time decay only, fixed exploration).
    """

    model: Literal["adaptive", "decayed"] = "adaptive"
    half_life_seconds: Annotated[float, Field(gt=0)] = 3600.0
    window_outcomes: Annotated[float, Field(ge=10, le=1_000_000)] = 200.0
    change_detection: ChangeDetection = ChangeDetection()
    #: z-score under which a difference in success rate is treated as noise when ranking
    significance: Annotated[float, Field(ge=0, le=10)] = 2.0
    creation_prior: Prior = Prior(mean=0.97, strength=10)
    payment_prior: Prior = Prior(mean=0.75, strength=10)
    min_segment_samples: Annotated[float, Field(ge=1)] = 20.0

    @model_validator(mode="after")
    def _windows(self) -> Learning:
        if self.change_detection.fast_window >= self.window_outcomes:
            raise ValueError("change_detection.fast_window must be smaller than window_outcomes")
        return self


class Exploration(FrozenModel):
    """Bounds on the share of orders sent to a candidate other than the best-scored one.

    Between them the share follows the uncertainty: the chance, under the Beta posteriors,
    that another candidate's score is really the higher (probability matching).
    """

    floor: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    ceiling: Annotated[float, Field(ge=0, le=0.5)] = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> Exploration:
        if self.floor > self.ceiling:
            raise ValueError("exploration floor must not exceed the ceiling")
        return self


def _exploration(value: Any) -> Any:
    """A bare number (the older form) is a fixed share: floor and ceiling both."""
    if isinstance(value, int | float | Decimal | str) and not isinstance(value, bool):
        return {"floor": value, "ceiling": value}
    return value


class LatencyScoring(FrozenModel):
    """Latency score: 1 at or below ``good_ms``, 0 at or above ``bad_ms``, linear between."""

    good_ms: Annotated[float, Field(ge=0)] = 300.0
    bad_ms: Annotated[float, Field(gt=0)] = 3000.0
    prior_weight: Annotated[float, Field(gt=0)] = 5.0

    @model_validator(mode="after")
    def _ordered(self) -> LatencyScoring:
        if self.bad_ms <= self.good_ms:
            raise ValueError("bad_ms must be greater than good_ms")
        return self


class CostScoring(FrozenModel):
    """Cost score: 1 for a free provider, 0 at an effective fee of ``max_percent`` or more."""

    max_percent: Annotated[Decimal, Field(gt=0, le=100)] = Decimal(5)


class Scoring(FrozenModel):
    """Component weights, tie-break order, exploration and the learning parameters."""

    weights: Weights = Weights()
    fallback_order: tuple[ProviderName, ...] = ()
    exploration: Annotated[Exploration, BeforeValidator(_exploration)] = Exploration()
    learning: Learning = Learning()
    latency: LatencyScoring = LatencyScoring()
    cost: CostScoring = CostScoring()

    @field_validator("fallback_order")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("fallback_order lists a provider twice")
        return value


class RulesFile(FrozenModel):
    """The whole ``routing_rules.yaml``."""

    schema_version: Literal[1]
    version: Annotated[str, BeforeValidator(as_text), Field(pattern=r"^\S{1,64}$")]
    description: str = ""
    providers: Annotated[dict[ProviderName, ProviderRules], Field(min_length=1)]
    scoring: Scoring = Scoring()
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class RulesProblem:
    """One finding about a rules file; ``line`` is 1-based when known."""

    message: str
    line: int | None = None
    path: str = ""
    severity: Literal["error", "warning"] = "error"

    def format(self, source: str) -> str:
        """``routing_rules.yaml:41: error: rules[3].then.split: ...``"""
        where = f"{source}:{self.line}" if self.line is not None else source
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: {self.severity}: {what}"


class RulesError(ValueError):
    """A rules file that cannot be loaded; ``problems`` lists every error with its line."""

    def __init__(self, source: str, problems: list[RulesProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(p.format(source) for p in problems))


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """Validated rules plus where they came from."""

    rules: RulesFile
    content_hash: str
    source: str
    marks: dict[Path, int]

    def line(self, *loc: str | int) -> int | None:
        """The line of ``loc`` (or of its closest enclosing key) in the source text."""
        return line_for(self.marks, loc)[0]


def load_rules_file(path: str | FsPath) -> LoadedRules:
    """Read and validate a rules file; raises :class:`RulesError` (also when unreadable)."""
    source = str(path)
    try:
        raw = FsPath(path).read_bytes()
    except OSError as exc:
        raise RulesError(
            source, [RulesProblem(f"cannot read the rules file: {exc.strerror}")]
        ) from None
    return load_rules_text(raw, source=source)


def load_rules_text(raw: str | bytes, *, source: str = "<rules>") -> LoadedRules:
    """Validate rules from YAML text; raises :class:`RulesError` listing every problem."""
    data_bytes = raw.encode() if isinstance(raw, str) else raw
    try:
        data, marks = parse_yaml(data_bytes)
    except YamlProblem as exc:
        raise RulesError(source, [RulesProblem(exc.message, exc.line)]) from None
    if not isinstance(data, dict):
        raise RulesError(source, [RulesProblem("the rules file must be a YAML mapping", 1)])
    try:
        model = RulesFile.model_validate(data)
    except ValidationError as exc:
        # a bare exploration number is both bounds: one mistake, reported once
        found = dict.fromkeys(_problem(err, marks) for err in exc.errors())
        raise RulesError(source, list(found)) from None
    problems = [
        RulesProblem(message, line_for(marks, loc)[0], readable_path(loc))
        for loc, message in reference_errors(model)
    ]
    if problems:
        raise RulesError(source, problems)
    return LoadedRules(model, hashlib.sha256(data_bytes).hexdigest(), source, marks)


def _problem(error: Any, marks: dict[Path, int]) -> RulesProblem:
    line, path = line_for(marks, tuple(error["loc"]))
    loc = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}"
        path = loc
    elif loc == ("schema_version",) and error["type"] == "literal_error":
        message = f"unsupported schema_version {error['input']!r}: this gateway reads version 1"
    elif error["type"] == "missing":
        message = f"missing required key {loc[-1]!r}"
    return RulesProblem(message, line, readable_path(path))


def reference_errors(model: RulesFile) -> list[tuple[Path, str]]:
    """Cross-references pydantic cannot check: duplicate rule ids and unknown providers."""
    known = set(model.providers)
    out: list[tuple[Path, str]] = []

    def refer(loc: Path, name: str) -> None:
        if name not in known:
            out.append((loc, f"provider {name!r} is referenced but not configured under providers"))

    for index, name in enumerate(model.scoring.fallback_order):
        refer(("scoring", "fallback_order", index), name)
    seen: dict[str, int] = {}
    for index, rule in enumerate(model.rules):
        if rule.id in seen:
            out.append(
                (
                    ("rules", index, "id"),
                    f"duplicate rule id {rule.id!r} (first at rules[{seen[rule.id]}])",
                )
            )
        seen.setdefault(rule.id, index)
        act = rule.then
        base: Path = ("rules", index, "then")
        for key, mapping in (
            ("boost", act.boost),
            ("penalize", act.penalize),
            ("split", act.split),
        ):
            for name in mapping or {}:
                refer((*base, key, name), name)
        for pos, name in enumerate(act.exclude or ()):
            refer((*base, "exclude", pos), name)
        if act.pin is not None:
            refer((*base, "pin"), act.pin)
    return out
