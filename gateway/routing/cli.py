"""``gateway rules check | simulate``: lint a rules file, replay and backtest it offline.

``gateway/cli.py`` mounts these with :func:`add_rules_commands`; ``python -m
gateway.routing.cli`` runs them alone. Exit status: 0 fine, 1 the rules (or the requests
file) have errors, 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.routing.check import adapter_capabilities, adapter_checks, check_rules_file
from gateway.routing.compiled import CompiledRules, compile_rules
from gateway.routing.rules import RulesError, load_rules_file
from gateway.routing.simulate import (
    backtest,
    format_backtest,
    format_simulation,
    read_samples,
    simulate,
)

__all__ = ["add_rules_commands", "cmd_check", "cmd_simulate", "main"]


def add_rules_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rules check`` and ``rules simulate`` to a parser's sub-commands."""
    rules = subparsers.add_parser(
        "rules",
        help="check, simulate and backtest routing rules",
        description="Check, simulate and backtest routing rules offline (nothing is sent).",
    )
    sub = rules.add_subparsers(dest="rules_command", metavar="{check,simulate}", required=True)

    check = sub.add_parser(
        "check",
        help="lint a rules file: schema errors with line numbers, dead or shadowed rules",
        description="Lint a rules file: every error and warning with its line. Exit status 1 "
        "on errors (and on warnings with --strict).",
    )
    check.add_argument("file", type=Path, help="the routing rules YAML file")
    check.add_argument("--strict", action="store_true", help="fail on warnings too")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=cmd_check)

    sim = sub.add_parser(
        "simulate",
        help="replay sample requests through rules; with --against, backtest a change",
        description="Replay sample requests through rules with neutral statistics: the share "
        "per provider and how often each rule fired. With --against, the share before and "
        "after and every request whose first choice moves.",
    )
    sim.add_argument("file", type=Path, help="the rules to replay (the proposed rules)")
    sim.add_argument("--requests", type=Path, required=True, help="JSON lines, one request each")
    sim.add_argument("--against", type=Path, help="the rules in force, to compare with")
    sim.add_argument(
        "--merchant",
        default="sample",
        help="merchant id of request lines that name none (default: %(default)s)",
    )
    sim.add_argument("--json", action="store_true", help="machine-readable output")
    sim.set_defaults(func=cmd_simulate)


def _adapters() -> list[str]:
    from providers.registry import KNOWN_PROVIDERS

    return sorted(KNOWN_PROVIDERS)


def cmd_check(args: argparse.Namespace) -> int:
    """``gateway rules check FILE``."""
    known = _adapters()
    report = check_rules_file(
        args.file, known_adapters=known, capabilities=adapter_capabilities(known)
    )
    status = report.exit_status(strict=args.strict)
    if args.json:
        payload = {
            "file": str(args.file),
            "ok": status == 0,
            "version": report.loaded.rules.version if report.loaded else None,
            "problems": [
                {"line": p.line, "severity": p.severity, "path": p.path, "message": p.message}
                for p in report.problems
            ],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(report.format(), file=sys.stdout if status == 0 else sys.stderr)
    return status


def _compile(path: Path) -> CompiledRules:
    loaded = load_rules_file(path)
    return compile_rules(loaded, adapter_capabilities(sorted(loaded.rules.providers)))


def cmd_simulate(args: argparse.Namespace) -> int:
    """``gateway rules simulate FILE --requests R.jsonl [--against OTHER.yaml]``."""
    try:
        proposed = _compile(args.file)
        current = _compile(args.against) if args.against is not None else None
    except RulesError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    try:
        samples, problems = read_samples(args.requests, default_merchant=args.merchant)
    except OSError as exc:
        print(f"{args.requests}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not samples:
        print(f"{args.requests}: no usable requests", file=sys.stderr)
        return 1
    routed = proposed.provider_names | (current.provider_names if current else frozenset())
    checks = adapter_checks(sorted(routed))
    payload: dict[str, Any]
    if current is None:
        result = simulate(proposed, samples, checks=checks)
        payload, text = result.as_dict(), format_simulation(result, str(args.file))
    else:
        diff = backtest(proposed, current, samples, checks=checks)
        payload = diff.as_dict()
        text = format_backtest(diff, str(args.file), str(args.against))
    payload["skipped"] = len(problems)
    print(json.dumps(payload, indent=2) if args.json else text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rules commands alone: ``python -m gateway.routing.cli rules check FILE``."""
    parser = argparse.ArgumentParser(prog="gateway")
    add_rules_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
