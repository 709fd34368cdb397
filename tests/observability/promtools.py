"""Helpers for tests against the real Prometheus tools: locating the binaries, reading the
dashboards and alert rules, turning Grafana queries into plain PromQL."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
ALERT_FILES = sorted((GRAFANA / "alerts").glob("*.yml"))
ALERT_TESTS = sorted((GRAFANA / "alerts" / "tests").glob("*.yml"))

#: what Grafana would put in for its built-in and dashboard variables
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${provider}": ".*",
    "$provider": ".*",
}
_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[^,]+),\s*(?P<label>\w+)\)$")


def require_tool(name: str) -> str:
    """The path of ``name``; skipped when missing, except under CI=true where that fails."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{message}; CI=true needs it", pytrace=False)
        pytest.skip(message)
    return path


def promql(expr: str) -> str:
    """``expr`` with the Grafana variables replaced by what a dashboard would send."""
    for name, value in SUBSTITUTIONS.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


def load_dashboard(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including panels inside collapsed rows."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries() -> list[PanelQuery]:
    out: list[PanelQuery] = []
    for path in DASHBOARDS:
        board = load_dashboard(path)
        for panel in panels(board):
            for target in panel["targets"]:
                out.append(
                    PanelQuery(board["title"], panel["title"], target["refId"], target["expr"])
                )
    return out


def annotation_queries() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = load_dashboard(path)
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                out.append((f"{board['title']} / {annotation['name']}", annotation["expr"]))
    return out


def variable_queries() -> list[tuple[str, str]]:
    """Query variables as PromQL: ``label_values(m, l)`` becomes ``group by (l) (m)``."""
    out = []
    for path in DASHBOARDS:
        board = load_dashboard(path)
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = _LABEL_VALUES.match(variable["definition"])
            assert match, f"unsupported variable query {variable['definition']!r}"
            out.append(
                (
                    f"{board['title']} / ${variable['name']}",
                    f"group by ({match['label']}) ({match['metric']})",
                )
            )
    return out


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in ALERT_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules
