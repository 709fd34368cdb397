"""YAML text -> plain Python data plus the line of every key and list item.

PyYAML's constructors throw positions away; this module composes the node graph itself and
builds the data while recording ``path -> line``, so a pydantic error location such as
``("rules", 3, "then", "split")`` can be reported as *line 41*. It also refuses what the safe
loader silently accepts: duplicate keys (the second would win) and non-finite numbers. Floats
are read as exact ``Decimal`` from their source text, so fee amounts never pass through a float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

__all__ = ["Path", "YamlProblem", "line_for", "parse_yaml", "readable_path"]

Path = tuple[str | int, ...]

_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_MAX_DEPTH = 64


class YamlProblem(Exception):
    """The text is not YAML this loader accepts; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class _Loader(yaml.SafeLoader):
    """The safe loader; only its composer and scalar constructors are used."""


def parse_yaml(text: str | bytes) -> tuple[Any, dict[Path, int]]:
    """Parse one YAML document; returns the data and ``{path: line}`` for every key and item."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            raise YamlProblem(f"invalid YAML: {exc.problem or exc.context}", line) from None
        except yaml.YAMLError as exc:
            raise YamlProblem(f"invalid YAML: {exc}", None) from None
        marks: dict[Path, int] = {(): 1}
        if node is None:
            return None, marks
        marks[()] = node.start_mark.line + 1
        return _build(loader, node, (), marks, 0), marks
    finally:
        loader.dispose()


def _build(loader: _Loader, node: yaml.Node, path: Path, marks: dict[Path, int], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise YamlProblem("document nested too deeply (recursive alias?)", node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(
                    "mapping keys must be plain scalars", key_node.start_mark.line + 1
                )
            key = _scalar(loader, key_node)
            if isinstance(key, Decimal | float):
                key = str(key)
            if key in out:
                raise YamlProblem(
                    f"{readable_path((*path, key))}: duplicate key {key!r}",
                    key_node.start_mark.line + 1,
                )
            child = (*path, key)
            marks[child] = key_node.start_mark.line + 1
            out[key] = _build(loader, value_node, child, marks, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        items: list[Any] = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            marks[child] = item.start_mark.line + 1
            items.append(_build(loader, item, child, marks, depth + 1))
        return items
    assert isinstance(node, yaml.ScalarNode)
    return _scalar(loader, node)


def _scalar(loader: _Loader, node: yaml.ScalarNode) -> Any:
    if node.tag == _BOOL_TAG and str(node.value).lower() not in ("true", "false"):
        return str(node.value)  # YAML 1.1 reads NO (Norway), on, y... as booleans: keep the text
    if node.tag == _FLOAT_TAG:
        text = str(node.value).replace("_", "")
        try:
            value = Decimal(text)
        except InvalidOperation:
            value = Decimal(repr(loader.construct_object(node)))
        if not value.is_finite():
            raise YamlProblem(f"{node.value!r} is not a finite number", node.start_mark.line + 1)
        return value
    return loader.construct_object(node)


def line_for(marks: Mapping[Path, int], loc: Sequence[str | int]) -> tuple[int | None, Path]:
    """The line of the deepest part of ``loc`` present in the document, and that path.

    Parts of a pydantic location that are not document keys (union branch tags, ``[key]``
    markers) are skipped, so the answer is the closest real position.
    """
    path: Path = ()
    for part in loc:
        candidate = (*path, part)
        if candidate in marks:
            path = candidate
    return marks.get(path), path


def readable_path(path: Sequence[str | int]) -> str:
    """``rules[3].then.split`` for ``("rules", 3, "then", "split")``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"
