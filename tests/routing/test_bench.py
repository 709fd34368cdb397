"""The micro benchmark runs (a tiny configuration: this checks it works, not its speed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from tests.routing.helpers import ROOT


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_micro", ROOT / "bench/routing_micro.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_reports_median_and_p99() -> None:
    row = load().measure(3, 20, 200)
    assert row["providers"] == 3
    assert row["rules"] == 20
    assert 0 < row["median_us"] <= row["p99_us"]


def test_synthetic_rule_sets_route_requests() -> None:
    bench = load()
    from gateway.routing.engine import decide

    compiled = bench.build(5, 50)
    stats = bench.snapshot(5)
    decisions = [decide(f, compiled, stats) for f in bench.requests(300)]
    assert sum(bool(d.ranked) for d in decisions) > 200
    assert sum(bool(d.matched_rules) for d in decisions) > 200
    assert len({d.ranked[0].provider for d in decisions if d.ranked}) >= 3


def test_json_is_written(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bench = load()
    monkeypatch.setattr(
        bench,
        "measure",
        lambda p, r, calls: {
            "providers": p,
            "rules": r,
            "calls": calls,
            "median_us": 1.0,
            "p99_us": 2.0,
            "mean_us": 1.0,
            "compile_ms": 0.1,
        },
    )
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["headline"]["providers"] == 10
    assert data["headline"]["rules"] == 200
    assert [(g["providers"], g["rules"]) for g in data["growth"]][:5] == [
        (2, 200),
        (5, 200),
        (10, 200),
        (20, 200),
        (50, 200),
    ]
