"""``gateway rules simulate``: replay shares, rules fired, and the backtest diff."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.routing.compiled import compile_rules
from gateway.routing.rules import load_rules_text
from gateway.routing.simulate import backtest, read_samples, simulate
from tests.routing.helpers import OPEN, ROOT, SEED_BYTES, rules_yaml

SAMPLES = ROOT / "bench/routing_samples.jsonl"
CAPS = {"stripe": OPEN, "adyen": OPEN, "paypal": OPEN}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "rules", "simulate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def rules(text: str):  # type: ignore[no-untyped-def]
    return compile_rules(load_rules_text(text), CAPS)


def test_the_shipped_samples_are_valid_and_varied() -> None:
    samples, problems = read_samples(SAMPLES)
    assert problems == []
    assert len(samples) >= 50
    assert len({s.request.currency for s in samples}) >= 5
    assert len({s.request.paymentMethod for s in samples}) >= 5
    assert {s.merchant for s in samples} == {"sample", "m_marketplace"}
    assert any(s.unavailable for s in samples)


def test_replay_counts_first_choices_and_rules_fired(tmp_path: Path) -> None:
    lines = tmp_path / "r.jsonl"
    body = json.loads(SEED_BYTES)
    paypal = {**body, "orderReference": "P1", "paymentMethod": "paypal"}
    envelope = {
        "merchantId": "m9",
        "request": {**body, "orderReference": "E1"},
        "unavailable": {"stripe": "down"},
    }
    lines.write_text(
        "\n".join(
            [
                json.dumps(body),
                json.dumps(paypal),
                json.dumps(envelope),
                "",
                "# comment",
                "{oops",
                '{"orderReference": 1}',
            ]
        )
    )
    samples, problems = read_samples(lines)
    assert [s.line for s in samples] == [1, 2, 3]
    assert samples[2].merchant == "m9"
    assert samples[2].unavailable == {"stripe": "down"}
    assert len(problems) == 2
    assert problems[0].startswith(f"{lines}:6: not JSON")
    assert problems[1].startswith(f"{lines}:7: invalid request")
    sim = simulate(
        rules(
            rules_yaml(
                rules=[
                    {"id": "pp", "when": {"payment_method": "paypal"}, "then": {"pin": "paypal"}}
                ]
            )
        ),
        samples,
    )
    assert sim.total == 3
    assert sim.shares["paypal"] == 1
    assert sim.rule_hits == {"pp": 1}
    assert sim.decisions[2][1].ranked[0].provider != "stripe"
    summary = sim.as_dict()
    assert sum(summary["counts"].values()) == 3
    assert summary["rulesFired"] == {"pp": 1}


def test_backtest_lists_every_request_that_moves() -> None:
    samples, _ = read_samples(SAMPLES)
    providers = {"stripe": {"preference": 80}, "adyen": {}, "paypal": {}}
    current = rules(rules_yaml(providers, version="current"))
    proposed = rules(
        rules_yaml(
            providers,
            rules=[{"id": "eur-adyen", "when": {"currency": "EUR"}, "then": {"pin": "adyen"}}],
            version="proposed",
        )
    )
    diff = backtest(proposed, current, samples)
    eur = [s for s in samples if s.request.currency == "EUR"]
    moved = {s.line for s in diff.shifts}
    assert all(s.after == "adyen" for s in diff.shifts)
    assert all(s.rules_added == ("eur-adyen",) for s in diff.shifts)
    assert moved <= {s.line for s in eur}
    before_adyen = {
        s.line for s, d in diff.before.decisions if d.ranked and d.ranked[0].provider == "adyen"
    }
    assert moved == {s.line for s in eur} - before_adyen
    report = diff.as_dict()
    assert report["changed"] == len(diff.shifts) > 0
    assert round(sum(report["shareChange"].values()), 6) == 0
    assert backtest(current, current, samples).shifts == []


def test_cli_replay_and_backtest(tmp_path: Path) -> None:
    done = run("routing_rules.yaml", "--requests", str(SAMPLES))
    assert done.returncode == 0, done.stderr
    assert "50 requests" in done.stdout
    assert "rules fired:" in done.stdout
    assert "paypal-only-for-paypal" in done.stdout
    changed = tmp_path / "new.yaml"
    text = (
        (ROOT / "routing_rules.yaml")
        .read_text()
        .replace("split: {stripe: 70, adyen: 30}", "split: {stripe: 10, adyen: 90}")
    )
    changed.write_text(text)
    done = run(str(changed), "--requests", str(SAMPLES), "--against", "routing_rules.yaml")
    assert done.returncode == 0, done.stderr
    assert "requests that move:" in done.stdout
    assert "stripe -> adyen" in done.stdout
    done = run(
        str(changed), "--requests", str(SAMPLES), "--against", "routing_rules.yaml", "--json"
    )
    payload = json.loads(done.stdout)
    assert payload["changed"] == len(payload["requests"]) > 0
    assert all(r["before"] == "stripe" and r["after"] == "adyen" for r in payload["requests"])
    assert payload["skipped"] == 0


def test_cli_refuses_invalid_rules(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nversion: x\nproviders: {stripe: {bogus: 1}}\n")
    done = run(str(bad), "--requests", str(SAMPLES))
    assert done.returncode == 1
    assert "unknown key 'bogus'" in done.stderr
