"""A plan: what is left to decide for one combination of the indexed fields.

Built on first use by :meth:`CompiledRules.plan` and cached. Its rules' top-level ``amount``
tests are indexed too: the bounds they use cut the amount line into *regions* (each bound
itself, and the open stretches between bounds), and on a region every such test is either
always true or always false. So for each region the plan resolves those tests once, drops the
rules that cannot match, and generates one matcher for the rest (:mod:`gateway.routing.matcher`).
A decision then costs a binary search plus the tests that really depend on the request.
"""

from __future__ import annotations

from bisect import bisect_left
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.routing.matcher import Matcher, build_matcher

if TYPE_CHECKING:
    from gateway.routing.compiled import CompiledRule, Conjunct
    from gateway.routing.decision import Exclusion
    from gateway.routing.eligibility import CompiledProvider
    from gateway.routing.features import Features

__all__ = ["Plan"]


def _holds(bounds: Any, value: Decimal) -> bool:
    return (
        (bounds.gt is None or value > bounds.gt)
        and (bounds.gte is None or value >= bounds.gte)
        and (bounds.lt is None or value < bounds.lt)
        and (bounds.lte is None or value <= bounds.lte)
    )


class Plan:
    """Rules that can still match (priority order), eligible and excluded providers."""

    __slots__ = ("_cuts", "_regions", "_split", "excluded", "providers", "rules")

    def __init__(
        self,
        rules: tuple[CompiledRule, ...],
        providers: tuple[CompiledProvider, ...],
        excluded: tuple[Exclusion, ...],
    ) -> None:
        self.rules = rules
        self.providers = providers
        self.excluded = excluded
        cuts: set[Decimal] = set()
        split: list[tuple[CompiledRule, tuple[Any, ...], tuple[Conjunct, ...]]] = []
        for rule in rules:
            amounts = tuple(p for k, p in rule.tests if k == "amount")
            rest = tuple((k, p) for k, p in rule.tests if k != "amount")
            for bounds in amounts:
                cuts.update(
                    b for b in (bounds.gt, bounds.gte, bounds.lt, bounds.lte) if b is not None
                )
            split.append((rule, amounts, rest))
        self._cuts = sorted(cuts)
        self._split = split
        self._regions: dict[int, Matcher] = {}

    def _region(self, amount: Decimal) -> int:
        i = bisect_left(self._cuts, amount)
        if i < len(self._cuts) and self._cuts[i] == amount:
            return 2 * i + 1
        return 2 * i

    def _point(self, region: int) -> Decimal:
        cuts, i = self._cuts, region // 2
        if region % 2:
            return cuts[i]
        if not cuts:
            return Decimal(0)
        if i == 0:
            return cuts[0] - 1
        if i == len(cuts):
            return cuts[-1] + 1
        return (cuts[i - 1] + cuts[i]) / 2

    def match(self, f: Features) -> list[CompiledRule]:
        """The rules whose conditions hold for ``f``, in priority order."""
        region = self._region(f.amount)
        matcher = self._regions.get(region)
        if matcher is None:
            point = self._point(region)
            kept = [
                (rule, rest)
                for rule, amounts, rest in self._split
                if all(_holds(bounds, point) for bounds in amounts)
            ]
            matcher = self._regions[region] = build_matcher(kept)
        return matcher(f)
