"""The shipped alert rules pass `promtool check rules` and their `promtool test rules` suites;
every alert has the annotations on-call needs. (`make alerts` runs the same promtool commands.)"""

from __future__ import annotations

import subprocess

import pytest

from tests.observability.promtools import ALERT_FILES, ALERT_TESTS, ROOT, alert_rules, require_tool


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    assert ALERT_FILES
    done = subprocess.run(
        [promtool, "check", "rules", *map(str, ALERT_FILES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_the_example_prometheus_config() -> None:
    promtool = require_tool("promtool")
    done = subprocess.run(
        [promtool, "check", "config", str(ROOT / "grafana/prometheus.yml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


def test_promtool_unit_tests() -> None:
    promtool = require_tool("promtool")
    assert ALERT_TESTS
    done = subprocess.run(
        [promtool, "test", "rules", *map(str, ALERT_TESTS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_unit_tested() -> None:
    tested = set()
    for path in ALERT_TESTS:
        text = path.read_text()
        tested |= {rule["alert"] for rule in alert_rules() if f"alertname: {rule['alert']}" in text}
    assert tested == {rule["alert"] for rule in alert_rules()}


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_has_severity_summary_and_runbook(rule: dict[str, object]) -> None:
    labels = rule["labels"]
    annotations = rule["annotations"]
    assert isinstance(labels, dict)
    assert labels["severity"] in {"warning", "critical"}
    assert isinstance(annotations, dict)
    for key in ("summary", "description", "runbook"):
        assert str(annotations.get(key, "")).strip(), f"{rule['alert']}: no {key}"
    assert rule.get("for"), f"{rule['alert']}: fires on a single evaluation"
