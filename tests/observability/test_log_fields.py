"""Every context key the gateway passes to a log call is written, or dropped on purpose.

An AST walk over ``gateway/`` collects the keys of each logging call's ``extra=`` (a dict
literal, or a variable built from dict literals, item assignments and ``**`` spreads in the
same module, and the request's ``LOG_CONTEXT`` for the access line) and checks the JSON
formatter knows each one.
"""

from __future__ import annotations

import ast
import io
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logs import FIELDS, PERSONAL_FIELDS, JsonFormatter

ROOT = Path(__file__).resolve().parents[2]
_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def _literal_keys(node: ast.AST | None) -> set[str]:
    if isinstance(node, ast.Dict):
        return {
            k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
        }
    return set()


def _spread_names(node: ast.AST | None) -> set[str]:
    """Names spread into a dict (``{**context}``) or passed whole (``extra=context``)."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Dict):
        return {
            v.id
            for k, v in zip(node.keys, node.values, strict=True)
            if k is None and isinstance(v, ast.Name)
        }
    return set()


def _is_log_context(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Name)
        and node.slice.id == "LOG_CONTEXT"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.variables: dict[str, set[str]] = defaultdict(set)
        self.aliases: dict[str, set[str]] = defaultdict(set)  # var -> names it copies/spreads
        self.log_context: set[str] = set()
        self.calls: list[tuple[int, set[str], set[str]]] = []  # line, keys, names used

    def _assign(self, target: ast.AST, value: ast.AST | None) -> None:
        if isinstance(target, ast.Name):
            self.variables[target.id] |= _literal_keys(value)
            self.aliases[target.id] |= (
                _spread_names(value) if isinstance(value, ast.Dict) else set()
            )
            if value is not None and _is_log_context(value):
                self.aliases[target.id].add("LOG_CONTEXT")
        elif isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
            key = target.slice.value
            if isinstance(key, str):
                if _is_log_context(target.value):
                    self.log_context.add(key)
                elif isinstance(target.value, ast.Name):
                    self.variables[target.value.id].add(key)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._assign(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._assign(node.target, node.value)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "update"
            and isinstance(func.value, ast.Name)
        ):
            for arg in node.args:
                self.variables[func.value.id] |= _literal_keys(arg)
                self.aliases[func.value.id] |= _spread_names(arg)
        if isinstance(func, ast.Attribute) and func.attr in _LOG_METHODS:
            for keyword in node.keywords:
                if keyword.arg == "extra":
                    self.calls.append(
                        (node.lineno, _literal_keys(keyword.value), _spread_names(keyword.value))
                    )
        self.generic_visit(node)

    def resolve(self, names: set[str], log_context: set[str]) -> set[str]:
        keys: set[str] = set()
        seen: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            if name == "LOG_CONTEXT":
                keys |= log_context
                continue
            keys |= self.variables.get(name, set())
            pending += self.aliases.get(name, set())
        return keys


def logged_keys() -> dict[str, set[str]]:
    """``path:line`` of every logging call in ``gateway/`` -> the context keys it passes."""
    modules = {path: _Collector() for path in sorted((ROOT / "gateway").rglob("*.py"))}
    for path, collector in modules.items():
        collector.visit(ast.parse(path.read_text(), str(path)))
    log_context: set[str] = set()
    for collector in modules.values():  # request[LOG_CONTEXT]["k"], and ctx = request[LOG_CONTEXT]
        log_context |= collector.log_context
        for name, aliases in collector.aliases.items():
            if "LOG_CONTEXT" in aliases:
                log_context |= collector.variables[name]
    out: dict[str, set[str]] = {}
    for path, collector in modules.items():
        for line, keys, names in collector.calls:
            where = f"{path.relative_to(ROOT)}:{line}"
            out[where] = keys | collector.resolve(names, log_context)
    return out


def test_the_walk_sees_the_context_of_transitions_deliveries_reloads_and_requests() -> None:
    keys = set().union(*logged_keys().values())
    assert {"from_status", "to_status", "source", "event_id", "reason", "previous"} <= keys
    assert {"merchant", "provider", "decision_id", "attempts"} <= keys  # via LOG_CONTEXT


def test_every_extra_key_is_logged_or_dropped_as_personal_data() -> None:
    known = set(FIELDS) | PERSONAL_FIELDS
    unknown = {where: keys - known for where, keys in logged_keys().items() if keys - known}
    assert not unknown, f"log context the formatter would silently drop: {unknown}"


@pytest.fixture
def record_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.test_log_fields")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield stream
    logger.removeHandler(handler)


def test_the_formatter_writes_every_field_and_no_personal_one(record_stream: io.StringIO) -> None:
    context = {name: f"v-{name}" for name in FIELDS} | {name: "secret" for name in PERSONAL_FIELDS}
    logging.getLogger("gateway.test_log_fields").info("line", extra=context)
    line = json.loads(record_stream.getvalue())
    assert {name: line[name] for name in FIELDS} == {name: f"v-{name}" for name in FIELDS}
    assert not PERSONAL_FIELDS & line.keys()
