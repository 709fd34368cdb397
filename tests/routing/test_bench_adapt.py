"""The adaptive-routing simulation runs the real learner and its target checks bite."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from types import ModuleType

from tests.routing.helpers import ROOT


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_adapt", ROOT / "bench/routing_adapt.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["routing_adapt"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


async def test_sudden_drop_moves_traffic_and_beats_the_time_decayed_learner() -> None:
    bench = load()
    drop = bench.SCENARIOS[0]
    assert drop.name == "sudden_drop"
    adaptive = await bench.run(drop, "adaptive")
    baseline = await bench.run(drop, "decayed")
    moved = adaptive[1].reached["USD/US>=80%"]
    assert moved is not None
    assert moved <= 100
    assert adaptive[1].lost <= baseline[1].lost / 3
    assert adaptive[0].switches_per_1k is not None
    assert adaptive[0].switches_per_1k <= 1.0

    report = {
        "sudden_drop": {"adaptive": adaptive, "baseline": baseline},
        "recovery": {"adaptive": [None, None, replace(adaptive[1], reached={"USD/US>=60%": 250})]},
        "equal_providers": {"adaptive": [replace(adaptive[0], switches_per_1k=3.0)]},
        "equal_providers_90": {"adaptive": [replace(adaptive[0], switches_per_1k=0.5)]},
    }
    failures = bench.check_targets(report)
    assert failures == [
        "recovery: 60% back after 250 orders (target <= 200)",
        "equal_providers: 3.0 switches per 1,000 orders (target <= 1)",
    ]
