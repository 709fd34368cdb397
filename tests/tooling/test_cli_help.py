"""`gateway --help` and every sub-command's help are plain text, every option explained."""

from __future__ import annotations

import argparse
import subprocess
import sys

from gateway.cli import build_parser
from tests.api.conftest import ROOT


def every_parser() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}

    def visit(name: str, parser: argparse.ArgumentParser) -> None:
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child, sub in action.choices.items():
                    visit(f"{name} {child}", sub)

    visit("gateway", build_parser())
    return found


def test_help_has_no_markup_and_explains_every_option() -> None:
    parsers = every_parser()
    assert set(parsers) == {
        "gateway",
        "gateway serve",
        "gateway token",
        "gateway sandbox",
        "gateway rules",
        "gateway rules check",
        "gateway rules simulate",
        "gateway db",
        "gateway db upgrade",
        "gateway db status",
    }
    for name, parser in parsers.items():
        text = parser.format_help()
        assert "``" not in text, name
        assert ":func:" not in text, name
        assert parser.description, name
        unexplained = [
            action.dest
            for action in parser._actions
            if action.help is None and not isinstance(action, argparse._SubParsersAction)
        ]
        assert unexplained == [], name


def test_the_installed_command_prints_the_same_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("usage: gateway ")
    assert "Payment routing gateway" in done.stdout
    assert "``" not in done.stdout


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    # `gateway rules simulate ... --json | head`: the reader is gone before the answer is written
    command = [
        sys.executable,
        "-m",
        "gateway",
        "rules",
        "simulate",
        str(ROOT / "routing_rules.yaml"),
        "--requests",
        str(ROOT / "bench/routing_samples.jsonl"),
        "--json",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()
    with process.stderr:
        errors = process.stderr.read().decode()
    assert process.wait(timeout=30) == 141  # 128 + SIGPIPE, as Unix tools end
    assert errors == ""
