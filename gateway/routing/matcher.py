"""Rule matching compiled to one Python function per plan.

A plan's rules (already filtered by the indexed fields and the amount region) become a single
generated function::

    def match(f):
        cur = f.currency; amt = f.amount; ...      # each feature read once
        out = []
        if (amt >= _k0 and amt < _k1): out.append(_r0)
        if ((_k2 in info) or not (cty in _k3)): out.append(_r1)
        return out

so a decision pays a few bytecodes per test instead of a call per closure. Safety: the source
holds nothing but fixed local names, operators and generated identifiers (``_k<n>`` for
values, ``_r<n>`` for rules); every value from the rules file is bound through the namespace,
never written into the source text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.routing.conditions import AmountRange, Condition, CountRange

if TYPE_CHECKING:
    from gateway.routing.compiled import CompiledRule, Conjunct
    from gateway.routing.features import Features

__all__ = ["Matcher", "build_matcher"]

Matcher = Callable[["Features"], list["CompiledRule"]]

_PROLOGUE = (
    "        cur = f.currency; cty = f.country; pm = f.payment_method; cap = f.capture_method\n"
    "        mer = f.merchant; loc = f.locale; lang = loc[:2] if loc else None\n"
    "        amt = f.amount; n_items = f.item_count; qty = f.quantity; info = f.info\n"
    "        out = []\n"
)
_LOCALS = {
    "currency": "cur",
    "country": "cty",
    "payment_method": "pm",
    "capture_method": "cap",
    "merchant": "mer",
    "amount": "amt",
    "items": "n_items",
    "quantity": "qty",
}


class _Emitter:
    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {}

    def const(self, value: Any) -> str:
        name = f"_k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def bounded(self, var: str, r: AmountRange | CountRange) -> str:
        parts = []
        for bound, op in ((r.gt, ">"), (r.gte, ">="), (r.lt, "<"), (r.lte, "<=")):
            if bound is not None:
                parts.append(f"{var} {op} {self.const(bound)}")
        return "(" + " and ".join(parts) + ")"

    def conjunct(self, kind: str, payload: Any) -> str:
        if kind == "locale":
            full = frozenset(v for v in payload if len(v) > 2)
            languages = frozenset(v for v in payload if len(v) == 2)
            full_k, languages_k = self.const(full), self.const(languages)
            return f"(loc is not None and (loc in {full_k} or lang in {languages_k}))"
        if kind in ("amount", "items", "quantity"):
            return self.bounded(_LOCALS[kind], payload)
        if kind == "info":
            key = self.const(payload.key)
            if payload.values is None:
                return f"({key} in info)"
            return f"(info.get({key}) in {self.const(frozenset(payload.values))})"
        if kind == "any":
            return "(" + " or ".join(self.condition(c) for c in payload) + ")"
        if kind == "not":
            return f"(not {self.condition(payload)})"
        return f"({_LOCALS[kind]} in {self.const(payload)})"

    def condition(self, cond: Condition) -> str:
        from gateway.routing.compiled import conjuncts

        return self.tests(conjuncts(cond))

    def tests(self, items: Sequence[Conjunct]) -> str:
        if not items:
            return "True"
        return "(" + " and ".join(self.conjunct(k, v) for k, v in items) + ")"


def build_matcher(rules: Sequence[tuple[CompiledRule, Sequence[Conjunct]]]) -> Matcher:
    """One function returning the rules (in the given order) whose tests all hold.

    The values are parameters of an enclosing factory, so the generated code reads them as
    closure cells (fast) rather than globals.
    """
    emit = _Emitter()
    body = ["    def _match(f):\n", _PROLOGUE, "        add = out.append\n"]
    for index, (rule, tests) in enumerate(rules):
        name = f"_r{index}"
        emit.namespace[name] = rule
        if tests:
            body.append(f"        if {emit.tests(tests)}: add({name})\n")
        else:
            body.append(f"        add({name})\n")
    body.append("        return out\n    return _match\n")
    names = list(emit.namespace)
    source = f"def _factory({', '.join(names)}):\n" + "".join(body)
    namespace: dict[str, Any] = {}
    exec(compile(source, "<routing-rules>", "exec"), namespace)  # noqa: S102 - see module doc
    match: Matcher = namespace["_factory"](*emit.namespace.values())
    return match
