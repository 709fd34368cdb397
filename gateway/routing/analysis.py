"""Static analysis of conditions for the linter: can a rule match, does one imply another.

A condition is expanded into alternatives (disjunctive normal form) of primitive atoms, within
a budget; each alternative is folded into a :class:`Domain` (allowed and excluded values per
field, an interval per numeric field). An empty domain is a contradiction. The analysis is
*sound in the direction that matters*: "never matches" and "implies" are only claimed when
certain; anything it cannot decide (locale prefixes, a blown budget) counts as satisfiable and
as not implied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gateway.domain.models import PAYMENT_METHODS
from gateway.routing.compiled import conjuncts
from gateway.routing.conditions import AmountRange, Condition, CountRange

__all__ = ["Domain", "alternatives", "implies", "never_matches"]

#: (field, kind, payload): kind "in" / "notin" (frozenset), "range" (Interval), "info"
Atom = tuple[str, str, Any]
BUDGET = 512
_UNIVERSES = {
    "payment_method": frozenset(PAYMENT_METHODS),
    "capture_method": frozenset({"automatic", "manual"}),
}
_INTEGER = {"items", "quantity"}


@dataclass(frozen=True, slots=True)
class Interval:
    """``lo <= x <= hi`` (each bound optionally open); ``hi`` None is unbounded."""

    lo: Decimal
    lo_open: bool
    hi: Decimal | None
    hi_open: bool

    def empty(self) -> bool:
        if self.hi is None:
            return False
        return self.lo > self.hi or (self.lo == self.hi and (self.lo_open or self.hi_open))

    def meet(self, other: Interval) -> Interval:
        lo, lo_open = max((self.lo, self.lo_open), (other.lo, other.lo_open))
        his = [
            (h, o) for h, o in ((self.hi, self.hi_open), (other.hi, other.hi_open)) if h is not None
        ]
        if not his:
            return Interval(lo, lo_open, None, False)
        hi, hi_open = min(his, key=lambda item: (item[0], not item[1]))
        return Interval(lo, lo_open, hi, hi_open)

    def within(self, other: Interval) -> bool:
        """Every point of self is in other."""
        if self.empty():
            return True
        if (self.lo, self.lo_open) < (other.lo, other.lo_open):
            return False  # self reaches lower (or includes a bound other excludes)
        if other.hi is None:
            return True
        if self.hi is None:
            return False
        return (self.hi, not self.hi_open) <= (other.hi, not other.hi_open)


_START = {
    "amount": Interval(Decimal(0), False, None, False),
    "items": Interval(Decimal(1), False, Decimal(100), False),
    "quantity": Interval(Decimal(1), False, None, False),
}
_UNKNOWN: Atom = ("?", "unknown", None)


def _normal(name: str, i: Interval) -> Interval:
    """Integer fields: turn open bounds into closed ones so emptiness is exact."""
    if name not in _INTEGER:
        return i
    lo, lo_open, hi, hi_open = i.lo, i.lo_open, i.hi, i.hi_open
    if lo_open:
        lo, lo_open = lo + 1, False
    if hi is not None and hi_open:
        hi, hi_open = hi - 1, False
    return Interval(lo, lo_open, hi, hi_open)


def _interval(name: str, r: AmountRange | CountRange) -> Interval:
    lo, lo_open = (Decimal(r.gt), True) if r.gt is not None else (Decimal(r.gte or 0), False)
    hi: Decimal | None = None
    hi_open = False
    if r.lt is not None:
        hi, hi_open = Decimal(r.lt), True
    elif r.lte is not None:
        hi = Decimal(r.lte)
    return _normal(name, Interval(lo, lo_open, hi, hi_open))


def _complement(name: str, i: Interval) -> list[Interval]:
    out = [Interval(Decimal(-1), False, i.lo, not i.lo_open)]
    if i.hi is not None:
        out.append(Interval(i.hi, not i.hi_open, None, False))
    return [_normal(name, x) for x in out]


class _TooBig(Exception):
    """The expansion passed the budget: the caller must answer "don't know"."""


def _product(parts: list[list[list[Atom]]]) -> list[list[Atom]]:
    """AND of disjunctions, distributed into one disjunction."""
    result: list[list[Atom]] = [[]]
    for options in parts:
        result = [done + more for done in result for more in options]
        if len(result) > BUDGET:
            raise _TooBig
    return result


def _positive(kind: str, payload: Any) -> list[list[Atom]]:
    """One conjunct as a disjunction of atom lists."""
    if kind == "locale":
        return [[_UNKNOWN]]  # prefix semantics: not analysed
    if kind in ("amount", "items", "quantity"):
        return [[(kind, "range", _interval(kind, payload))]]
    if kind == "info":
        return [[("info", payload.key, payload.values)]]
    if kind == "any":
        return [alt for branch in payload for alt in _dnf(branch)]
    if kind == "not":
        return _negated(payload)
    return [[(kind, "in", payload)]]  # the value-set tests


def _negative(kind: str, payload: Any) -> list[list[Atom]]:
    """The negation of one conjunct as a disjunction of atom lists."""
    if kind in ("locale", "info"):
        return [[_UNKNOWN]]
    if kind in ("amount", "items", "quantity"):
        return [[(kind, "range", part)] for part in _complement(kind, _interval(kind, payload))]
    if kind == "any":  # not (a or b) = not a and not b
        return _product([_negated(branch) for branch in payload])
    if kind == "not":
        return _dnf(payload)
    return [[(kind, "notin", payload)]]


def _dnf(cond: Condition) -> list[list[Atom]]:
    return _product([_positive(kind, payload) for kind, payload in conjuncts(cond)])


def _negated(cond: Condition) -> list[list[Atom]]:
    # not (a and b) = not a or not b
    return [alt for kind, payload in conjuncts(cond) for alt in _negative(kind, payload)]


def alternatives(cond: Condition | None) -> list[list[Atom]] | None:
    """The condition's DNF as lists of atoms; None when it exceeds the budget."""
    if cond is None:
        return [[]]
    try:
        return _dnf(cond)
    except _TooBig:
        return None


@dataclass(slots=True)
class Domain:
    """What one alternative allows, field by field."""

    allowed: dict[str, frozenset[str]] = field(default_factory=dict)
    excluded: dict[str, frozenset[str]] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=lambda: dict(_START))
    info: dict[str, frozenset[str] | None] = field(default_factory=dict)
    empty: bool = False

    @classmethod
    def of(cls, atoms: list[Atom]) -> Domain:
        domain = cls()
        for atom in atoms:
            domain.add(atom)
        return domain

    def add(self, atom: Atom) -> None:
        name, kind, payload = atom
        if name == "info":
            key, values = kind, (None if payload is None else frozenset(payload))
            if key not in self.info:
                self.info[key] = values
            elif values is not None:
                old = self.info[key]
                self.info[key] = values if old is None else old & values
        elif kind == "in":
            current = self.allowed.get(name, _UNIVERSES.get(name))
            self.allowed[name] = payload if current is None else current & payload
        elif kind == "notin":
            self.excluded[name] = self.excluded.get(name, frozenset()) | payload
        elif kind == "range":
            self.intervals[name] = self.intervals[name].meet(payload)
        self.empty = self.empty or self._contradicts()

    def _contradicts(self) -> bool:
        for name, values in self.allowed.items():
            if not values - self.excluded.get(name, frozenset()):
                return True
        for name, values in self.excluded.items():
            universe = _UNIVERSES.get(name)
            if universe is not None and name not in self.allowed and universe <= values:
                return True
        if any(v is not None and not v for v in self.info.values()):
            return True
        return any(i.empty() for i in self.intervals.values())

    def satisfies(self, atom: Atom) -> bool:
        """Whether every request in this domain certainly satisfies ``atom``."""
        name, kind, payload = atom
        if name == "info":
            if kind not in self.info:
                return False
            mine = self.info[kind]
            return payload is None or (mine is not None and bool(mine <= frozenset(payload)))
        values: frozenset[str] = payload if isinstance(payload, frozenset) else frozenset()
        allowed = self.allowed.get(name)
        excluded = self.excluded.get(name, frozenset())
        if kind == "in":
            return allowed is not None and allowed - excluded <= values
        if kind == "notin":
            return (allowed is not None and not (allowed & values)) or values <= excluded
        if kind == "range":
            return self.intervals[name].within(payload)
        return False  # unknown


def never_matches(cond: Condition | None) -> bool:
    """True only when no request can satisfy ``cond``."""
    alts = alternatives(cond)
    if alts is None:
        return False
    return all(Domain.of(alt).empty for alt in alts)


def implies(narrow: Condition | None, wide: Condition | None) -> bool:
    """True only when every request matching ``narrow`` also matches ``wide``."""
    if wide is None:
        return True
    mine, theirs = alternatives(narrow), alternatives(wide)
    if mine is None or theirs is None:
        return False
    for alt in mine:
        domain = Domain.of(alt)
        if domain.empty:
            continue
        if not any(all(domain.satisfies(atom) for atom in other) for other in theirs):
            return False
    return True
