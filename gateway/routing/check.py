"""The rules linter behind ``gateway rules check FILE``.

Errors (the file must not be deployed; exit status 1):

- schema errors, each with its line: unknown keys, wrong types, bad codes, splits that do not
  add up to 100, providers referenced but not configured, duplicate rule ids;
- rules that can never match (their conditions contradict each other);
- an enabled provider no adapter of the gateway serves (the gateway refuses to start or
  reload with it).

Warnings (exit status 0 unless ``--strict``):

- a pin or split shadowed by a higher-priority pin that matches whenever it does;
- a rule acting on a provider that can never take the requests the rule matches;
- references to disabled providers, providers that can never take any request, disabled
  providers with no adapter of that name;
- ``exploration`` set to 0 with the adaptive learner: a provider that lost its traffic would
  never be tried again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.domain.models import PAYMENT_METHODS
from gateway.routing.analysis import Domain, alternatives, implies, never_matches
from gateway.routing.eligibility import (
    AdapterCheck,
    CompiledProvider,
    adapter_checks_of,
    compile_providers,
)
from gateway.routing.rules import LoadedRules, Rule, RulesError, RulesProblem, load_rules_text
from gateway.routing.yamlsource import readable_path
from providers.base import Capabilities

__all__ = [
    "CheckReport",
    "adapter_capabilities",
    "adapter_checks",
    "adapterless_providers",
    "check_rules_file",
    "check_rules_text",
    "lint",
]

_Add = Callable[..., None]
_FIELDS = (
    ("currency", "currencies"),
    ("country", "countries"),
    ("payment_method", "methods"),
    ("capture_method", "captures"),
)


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Every finding about one file, errors first, each with its line."""

    source: str
    problems: tuple[RulesProblem, ...]
    loaded: LoadedRules | None

    @property
    def errors(self) -> list[RulesProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[RulesProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    def exit_status(self, *, strict: bool = False) -> int:
        """0 when deployable; 1 on errors (and on warnings with ``strict``)."""
        return 1 if self.errors or (strict and self.warnings) else 0

    def format(self) -> str:
        """One line per finding plus a summary line."""
        lines = [p.format(self.source) for p in self.problems]
        summary = f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        if self.loaded is not None and not self.errors:
            rules = self.loaded.rules
            summary = (
                f"{self.source}: version {rules.version}, {len(rules.providers)} providers, "
                f"{len(rules.rules)} rules: {summary}"
            )
        return "\n".join([*lines, summary])


def adapter_capabilities(names: Collection[str]) -> dict[str, Capabilities]:
    """What the gateway's adapters declare, for the offline tools.

    Names without an adapter are left out (the engine excludes them, as the gateway would); a
    known adapter whose class cannot be imported is assumed to take anything.
    """
    out: dict[str, Capabilities] = {}
    for name in names:
        found, cls = _adapter_class(name)
        if not found:
            continue
        caps = getattr(cls, "capabilities", None)
        out[name] = caps if isinstance(caps, Capabilities) else _ANYTHING
    return out


def _adapter_class(name: str) -> tuple[bool, Any]:
    """(is ``name`` a known adapter, its class or None when it cannot be imported)."""
    from providers.registry import KNOWN_PROVIDERS

    target = KNOWN_PROVIDERS.get(name)
    if target is None:
        return False, None
    module, _, attr = target.partition(":")
    try:
        return True, getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return True, None


_ANYTHING = Capabilities(payment_methods=frozenset(PAYMENT_METHODS))


def adapter_checks(names: Collection[str]) -> dict[str, AdapterCheck]:
    """The gateway's adapters' own eligibility checks, for the offline replay (they are pure
    and callable on the class)."""
    classes: dict[str, Any] = {}
    for name in names:
        _, cls = _adapter_class(name)
        if cls is not None:
            classes[name] = cls
    return adapter_checks_of(classes)


def check_rules_file(
    path: str | Path,
    *,
    known_adapters: Collection[str] | None = None,
    capabilities: Mapping[str, Capabilities] | None = None,
) -> CheckReport:
    """Lint a rules file (an unreadable file is one error)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        problem = RulesProblem(f"cannot read the rules file: {exc.strerror}")
        return CheckReport(str(path), (problem,), None)
    return check_rules_text(
        raw, source=str(path), known_adapters=known_adapters, capabilities=capabilities
    )


def check_rules_text(
    raw: str | bytes,
    *,
    source: str = "<rules>",
    known_adapters: Collection[str] | None = None,
    capabilities: Mapping[str, Capabilities] | None = None,
) -> CheckReport:
    """Lint rules text: schema errors first; the deeper checks only on a valid file."""
    try:
        loaded = load_rules_text(raw, source=source)
    except RulesError as exc:
        return CheckReport(source, exc.problems, None)
    found = lint(loaded, known_adapters=known_adapters, capabilities=capabilities)
    found.sort(key=lambda p: (p.severity != "error", p.line or 0))
    return CheckReport(source, tuple(found), loaded)


def adapterless_providers(
    loaded: LoadedRules, known_adapters: Collection[str]
) -> list[RulesProblem]:
    """An error for each enabled provider that no adapter of the gateway serves."""
    known = ", ".join(sorted(known_adapters))
    return [
        RulesProblem(
            f"provider {name!r} is enabled but the gateway has no adapter for it "
            f"(known: {known}); fix the name or set enabled: false",
            loaded.line("providers", name),
            readable_path(("providers", name)),
        )
        for name, conf in sorted(loaded.rules.providers.items())
        if conf.enabled and name not in known_adapters
    ]


def lint(
    loaded: LoadedRules,
    *,
    known_adapters: Collection[str] | None = None,
    capabilities: Mapping[str, Capabilities] | None = None,
) -> list[RulesProblem]:
    """The findings beyond the schema (see the module docstring)."""
    model = loaded.rules
    out: list[RulesProblem] = []

    def add(message: str, severity: Literal["error", "warning"], *loc: str | int) -> None:
        out.append(RulesProblem(message, loaded.line(*loc), readable_path(loc), severity))

    if known_adapters is not None:
        out += adapterless_providers(loaded, known_adapters)
        known = ", ".join(sorted(known_adapters))
        for name in sorted(model.providers):
            if name not in known_adapters and not model.providers[name].enabled:
                add(
                    f"no adapter named {name!r} exists (known: {known})",
                    "warning",
                    "providers",
                    name,
                )
    compiled, _ = compile_providers(model, capabilities)
    by_name = {p.name: p for p in compiled}
    for p in compiled:
        if p.enabled and p.has_adapter and _never_eligible(p):
            add(
                f"provider {p.name!r} can never take a request: the routing rules allow "
                "nothing its adapter supports",
                "warning",
                "providers",
                p.name,
            )
    scoring = model.scoring
    enabled = [name for name, conf in model.providers.items() if conf.enabled]
    if (
        "exploration" in scoring.model_fields_set
        and scoring.learning.model == "adaptive"
        and scoring.exploration.ceiling == 0
        and len(enabled) > 1
    ):
        add(
            "exploration ceiling is 0: a provider that lost its traffic is never tried again, "
            "so its recovery goes unnoticed (try exploration: {floor: 0.02, ceiling: 0.2})",
            "warning",
            "scoring",
            "exploration",
        )
    for index, name in enumerate(model.scoring.fallback_order):
        if not model.providers[name].enabled:
            add(f"provider {name!r} is disabled", "warning", "scoring", "fallback_order", index)
    index_of = {id(rule): i for i, rule in enumerate(model.rules)}
    live = sorted(
        (r for r in model.rules if r.enabled), key=lambda r: (-r.priority, index_of[id(r)])
    )
    pins: list[Rule] = []
    for rule in live:
        i = index_of[id(rule)]
        if never_matches(rule.when):
            add(
                f"rule {rule.id!r} can never match: its conditions contradict each other",
                "error",
                "rules",
                i,
                "when",
            )
            continue
        _targets(rule, i, by_name, add)
        if rule.then.pin is not None or rule.then.split is not None:
            for pin in pins:
                if implies(rule.when, pin.when):
                    what = "pin" if rule.then.pin is not None else "split"
                    add(
                        f"rule {rule.id!r} is shadowed by higher-priority pin {pin.id!r}: "
                        f"whenever it matches, {pin.id!r} pins {pin.then.pin!r} first, so this "
                        f"{what} only applies when {pin.then.pin!r} cannot take the request",
                        "warning",
                        "rules",
                        i,
                    )
                    break
        if rule.then.pin is not None:
            pins.append(rule)
    return out


def _never_eligible(p: CompiledProvider) -> bool:
    pairs = (
        (p.cap_methods, p.methods),
        (p.cap_currencies, p.currencies),
        (p.cap_countries, p.countries),
        (p.cap_captures, p.captures),
    )
    return any(a is not None and b is not None and not (a & b) for a, b in pairs)


def _admits(p: CompiledProvider, domain: Domain) -> str | None:
    """Why ``p`` can take no request of ``domain``, or None when some request fits."""
    for field, attr in _FIELDS:
        wanted = domain.allowed.get(field)
        if wanted is None:
            continue
        wanted = wanted - domain.excluded.get(field, frozenset())
        for allowed, side in (
            (getattr(p, attr), "routing rules"),
            (getattr(p, "cap_" + attr), "adapter"),
        ):
            if allowed is not None and not (wanted & allowed):
                return f"its {side} allow no {field.replace('_', ' ')} in {sorted(wanted)}"
    return None


def _targets(rule: Rule, index: int, providers: Mapping[str, CompiledProvider], add: _Add) -> None:
    act = rule.then
    named: list[tuple[str, str]] = [(p, "boosts") for p in act.boost or {}]
    named += [(p, "penalizes") for p in act.penalize or {}]
    named += [(p, "splits to") for p in act.split or {}]
    named += [(act.pin, "pins")] if act.pin is not None else []
    alts = alternatives(rule.when)
    domains = [d for d in (Domain.of(a) for a in alts or []) if not d.empty]
    for provider, verb in named:
        p = providers[provider]
        if not p.enabled:
            add(
                f"rule {rule.id!r} {verb} {provider!r}, which is disabled",
                "warning",
                "rules",
                index,
            )
            continue
        if alts is None or not domains:
            continue
        reasons = [_admits(p, d) for d in domains]
        if all(r is not None for r in reasons):
            add(
                f"rule {rule.id!r} {verb} {provider!r}, which can never take the requests this "
                f"rule matches ({reasons[0]})",
                "warning",
                "rules",
                index,
            )
