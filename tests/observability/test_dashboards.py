"""The Grafana folder is loadable with no clicking: provisioning points at the dashboards, each
dashboard uses the datasource and provider variables, ids and positions are sane, and every
query names only metrics the gateway defines."""

from __future__ import annotations

import re

import pytest
import yaml
from prometheus_client import REGISTRY

import gateway.metrics  # noqa: F401  (registers every metric)
from tests.observability.promtools import (
    DASHBOARDS,
    GRAFANA,
    alert_rules,
    annotation_queries,
    load_dashboard,
    panel_queries,
    panels,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def defined_series() -> set[str]:
    """Every series name the gateway's metrics expose, per metric type."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("gateway_"):
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def test_provisioning_files() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ][0]
    assert datasource["type"] == "prometheus"
    assert datasource["isDefault"] is True
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/gateway.yml").read_text())[
        "providers"
    ][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_model(path: object) -> None:
    board = load_dashboard(path)  # type: ignore[arg-type]
    assert board["schemaVersion"] >= 36
    assert board["uid"]
    assert board["title"]
    assert "__inputs" not in board
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["provider"]["datasource"] == DATASOURCE
    assert variables["provider"]["definition"].startswith("label_values(")
    ids = [p["id"] for p in board["panels"]] + [
        inner["id"] for p in board["panels"] for inner in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == DATASOURCE


def test_every_query_names_defined_metrics_only() -> None:
    known = defined_series()
    exprs = [q.expr for q in panel_queries()] + [e for _, e in annotation_queries()]
    exprs += [rule["expr"] for rule in alert_rules()]
    unknown = {name for expr in exprs for name in re.findall(r"\bgateway_[a-z0-9_]+", expr)} - known
    assert not unknown


def test_overview_and_routing_cover_what_ops_watch() -> None:
    titles = {q.dashboard: set() for q in panel_queries()}
    for q in panel_queries():
        titles[q.dashboard].add(q.panel)
    overview = next(t for name, t in titles.items() if "overview" in name)
    routing = next(t for name, t in titles.items() if "routing" in name)
    for wanted in (
        "Requests by route",
        "Error rates",
        "Create-session latency (p50 / p95 / p99)",
        "Sessions created per provider",
        "Provider share",
        "Success rate per provider (create calls)",
        "Failovers",
        "Circuit states",
        "Idempotency-Key outcomes",
        "Webhooks received",
        "Merchant notification backlog",
    ):
        assert wanted in overview
    for wanted in ("Decisions per rule", "Score of the selected provider", "Rules reloads"):
        assert wanted in routing
