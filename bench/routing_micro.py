"""Micro benchmark of the routing engine: one decision, with no parsing and no I/O.

    .venv/bin/python bench/routing_micro.py [--quick] [--out bench/results/routing_micro.json]

Builds synthetic rule sets of N providers x M rules (conditions on currency, country, method,
amount, locale, items and additionalInformation, with any/not; boosts, penalties, exclusions,
some pins and splits), a statistics snapshot with data for every provider and segment, and a
pool of varied requests. Times ``decide()`` call by call and prints the median and p99 for
10 providers x 200 rules (target: median <= 50 us), then how it grows with providers (2 to 50,
at 200 rules) and with rules (10 to 1,000, at 10 providers). Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.routing.compiled import CompiledRules, compile_rules  # noqa: E402
from gateway.routing.engine import decide  # noqa: E402
from gateway.routing.features import Features  # noqa: E402
from gateway.routing.rules import LoadedRules, RulesFile  # noqa: E402
from gateway.routing.stats import Counters, StatsSnapshot  # noqa: E402
from providers.base import Capabilities  # noqa: E402

CURRENCIES = ["EUR", "USD", "GBP", "AUD", "CAD", "JPY", "SEK", "CHF"]
COUNTRIES = ["NL", "DE", "FR", "BE", "US", "GB", "AU", "CA", "JP", "SE", "CH", "ES"]
METHODS = ["card", "paypal", "apple_pay", "google_pay", "ideal", "klarna", "sepa_debit"]
TARGET_MEDIAN_US = 50.0


def _condition(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["currency", "country", "method", "amount", "locale", "items", "info"])
        if kind == "currency":
            cond["currency"] = rng.sample(CURRENCIES, rng.randint(1, 3))
        elif kind == "country":
            cond["country"] = rng.sample(COUNTRIES, rng.randint(1, 4))
        elif kind == "method":
            cond["payment_method"] = rng.sample(METHODS, rng.randint(1, 3))
        elif kind == "amount":
            low = rng.choice([0, 10, 50, 100, 500, 1000])
            cond["amount"] = {"gte": str(low), "lt": str(low * 10 + 100)}
        elif kind == "locale":
            cond["locale"] = rng.sample(["en", "nl", "de", "fr_FR", "en_GB"], 2)
        elif kind == "items":
            cond["items"] = {"gte": rng.randint(1, 3)}
        else:
            cond["additional_information"] = {"key": "channel", "values": ["b2b", "app"]}
    if depth == 0 and rng.random() < 0.2:
        cond["any"] = [_condition(rng, 1), _condition(rng, 1)]
    if depth == 0 and rng.random() < 0.1:
        cond["not"] = _condition(rng, 1)
    return cond


def _action(rng: random.Random, names: list[str]) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.45:
        return {"boost": {rng.choice(names): rng.randint(1, 30)}}
    if roll < 0.7:
        return {"penalize": {rng.choice(names): rng.randint(1, 30)}}
    if roll < 0.85:
        return {"exclude": [rng.choice(names)]}
    if roll < 0.93:
        return {"pin": rng.choice(names)}
    a, b = rng.sample(names, 2)
    cut = rng.randint(10, 90)
    return {"split": {a: cut, b: 100 - cut}}


def build(n_providers: int, n_rules: int, seed: int = 1) -> CompiledRules:
    """A synthetic rule set compiled against open adapters."""
    rng = random.Random(seed)
    names = [f"p{i:02d}" for i in range(n_providers)]
    providers = {}
    for name in names:
        conf: dict[str, Any] = {"preference": rng.randint(20, 80)}
        if rng.random() < 0.3:
            conf["currencies"] = rng.sample(CURRENCIES, 5)
        if rng.random() < 0.3:
            conf["payment_methods"] = rng.sample(METHODS, 4)
        conf["fees"] = {
            "percent": str(Decimal(rng.randint(150, 400)) / 100),
            "fixed": {c: "0.25" for c in CURRENCIES if c != "JPY"} | {"JPY": "30"},
        }
        providers[name] = conf
    rules = [
        {
            "id": f"r{i:04d}",
            "priority": rng.randint(0, 100),
            "when": _condition(rng),
            "then": _action(rng, names),
        }
        for i in range(n_rules)
    ]
    model = RulesFile.model_validate(
        {
            "schema_version": 1,
            "version": f"bench-{n_providers}x{n_rules}",
            "providers": providers,
            "rules": rules,
            "scoring": {"fallback_order": names[:3], "exploration": 0.02},
        }
    )
    caps = {name: Capabilities(payment_methods=frozenset(METHODS)) for name in names}
    return compile_rules(LoadedRules(model, f"{seed:064x}", "<bench>", {}), caps)


def snapshot(n_providers: int, seed: int = 2) -> StatsSnapshot:
    """Learnt data for every provider, currency and country segment."""
    rng = random.Random(seed)
    data = {}
    for i in range(n_providers):
        name = f"p{i:02d}"

        def counters() -> Counters:
            ok = rng.uniform(20, 2000)
            return Counters(
                ok,
                ok * rng.uniform(0.01, 0.1),
                ok * rng.uniform(150, 900),
                ok,
                ok * 0.7,
                ok * 0.3,
            )

        data[(name, "all", "")] = counters()
        for c in CURRENCIES:
            data[(name, "currency", c)] = counters()
        for c in COUNTRIES:
            data[(name, "country", c)] = counters()
    return StatsSnapshot.of(data, time.time())


def requests(count: int, seed: int = 3) -> list[Features]:
    """Varied requests, features already extracted (as the service does once per request)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        currency = rng.choice(CURRENCIES)
        amount = Decimal(rng.randint(100, 500_000)).scaleb(0 if currency == "JPY" else -2)
        out.append(
            Features(
                merchant=rng.choice(["m1", "m2", "m3"]),
                order_reference=f"ORD-{i}",
                currency=currency,
                payment_method=rng.choice(METHODS),
                amount=amount,
                country=rng.choice(COUNTRIES),
                capture_method=rng.choice(["automatic", "automatic", "manual"]),
                locale=rng.choice(["en_US", "nl_NL", "de_DE", "fr_FR", None]),
                item_count=rng.randint(1, 5),
                quantity=rng.randint(1, 9),
                info=rng.choice([{}, {"channel": "b2b"}, {"channel": "web"}]),
            )
        )
    return out


def measure(n_providers: int, n_rules: int, calls: int) -> dict[str, Any]:
    """Time ``calls`` decisions one by one; microseconds."""
    started = time.perf_counter()
    compiled = build(n_providers, n_rules)
    compile_ms = (time.perf_counter() - started) * 1000
    stats = snapshot(n_providers)
    pool = requests(2000)
    for f in pool:  # warm-up: first use of each plan builds it
        decide(f, compiled, stats)
    timings = []
    gc.disable()
    try:
        for i in range(calls):
            f = pool[i % len(pool)]
            t0 = time.perf_counter_ns()
            decide(f, compiled, stats)
            timings.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    timings.sort()
    return {
        "providers": n_providers,
        "rules": n_rules,
        "calls": calls,
        "median_us": round(statistics.median(timings), 2),
        "p99_us": round(timings[int(len(timings) * 0.99) - 1], 2),
        "mean_us": round(statistics.fmean(timings), 2),
        "compile_ms": round(compile_ms, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (CI smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/routing_micro.json")
    args = parser.parse_args(argv)
    calls = 3_000 if args.quick else 20_000

    headline = measure(10, 200, calls * 2)
    verdict = "OK" if headline["median_us"] <= TARGET_MEDIAN_US else "OVER TARGET"
    print(f"routing decision, 10 providers x 200 rules, {headline['calls']} calls:")
    print(
        f"  median {headline['median_us']:.1f} us   p99 {headline['p99_us']:.1f} us   "
        f"(target median <= {TARGET_MEDIAN_US:.0f} us: {verdict})"
    )
    growth = []
    print(f"\n{'providers':>9} {'rules':>6} {'median us':>10} {'p99 us':>8} {'compile ms':>11}")
    for n_providers, n_rules in [
        (2, 200),
        (5, 200),
        (10, 200),
        (20, 200),
        (50, 200),
        (10, 10),
        (10, 100),
        (10, 500),
        (10, 1000),
    ]:
        row = measure(n_providers, n_rules, calls)
        growth.append(row)
        print(
            f"{row['providers']:>9} {row['rules']:>6} {row['median_us']:>10.1f} "
            f"{row['p99_us']:>8.1f} {row['compile_ms']:>11.1f}"
        )
    result = {
        "benchmark": "routing_micro",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "target_median_us": TARGET_MEDIAN_US,
        "headline": headline,
        "growth": growth,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0 if headline["median_us"] <= TARGET_MEDIAN_US else 1


if __name__ == "__main__":
    raise SystemExit(main())
