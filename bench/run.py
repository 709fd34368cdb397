"""`make bench`: the gateway under load next to a bare aiohttp baseline, in one invocation.

Starts the sandbox providers (own process, no added latency), the gateway (Redis store, one
worker, unless a scenario says otherwise) and a bare aiohttp + uvloop handler answering a fixed
JSON body; drives each with wrk (32 connections) and prints, per scenario, requests/s, p50/p99
latency, errors, the ratio to the baseline and the CPU the gateway (all its processes) spent
per request. Writes the whole run as JSON to bench/results/. Checks that the sandbox created
exactly as many sessions as the gateway answered 201s.

The PostgreSQL scenarios run on a database of their own, ``gateway_bench_<run>``, created on
the server at ``BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
migrated with ``gateway db upgrade`` and dropped at the end; coordination (circuits, routing
statistics, rate limits) stays in Redis, as in production. They also report the CPU the
database's backends spent per request, and the ratios PostgreSQL / Redis of creates/s and of
the gateway's CPU per create (targets: at least 0.8, at most 1.2).

"create session, Redis Cluster (3 masters)" runs on a cluster the bench starts itself
(:func:`tests.redis_servers.start_cluster`: private redis-server processes on free ports, no
replicas), alternating with the standalone Redis at ``BENCH_REDIS_URL``; it reports the ratios
cluster / standalone of creates/s, of the gateway's CPU per create and of Redis's CPU per create
(every primary's against the one server's). ``--only redis`` runs just the baseline and that
comparison. The run's keys are deleted on every node (SCAN MATCH per node, UNLINK per slot).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.auth import Authenticator  # noqa: E402
from gateway.examples import SEED_REQUEST_JSON  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.redis_servers import start_cluster  # noqa: E402

JWT_SECRET = "bench-secret-0123456789-0123456789-abcdef"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CONNECTIONS = 32
#: PostgreSQL / Redis targets: creates/s at least, gateway CPU per create at most
TARGET_RATE_RATIO = 0.8
TARGET_CPU_RATIO = 1.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            if http("GET", url)[0] < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


@contextmanager
def process(
    args: list[str], env: dict[str, str], ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    # logs go to a file, not the console: the gateway logs one JSON line per request at INFO,
    # as in production, and that cost belongs in the figures
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        try:
            wait_until_up(ready_url, proc)
        except SystemExit:
            log.flush()
            print(Path(log.name).read_text()[-3000:], file=sys.stderr)
            raise
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)


@dataclass
class Result:
    scenario: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    statuses: dict[str, int]
    ratio_to_baseline: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    """One side of an alternating create comparison: its gateway's environment and URL, and
    where its store's CPU is spent (a PostgreSQL database's backends, or Redis servers)."""

    label: str
    env: dict[str, str]
    url: str
    database: str | None = None
    store_pids: Callable[[], list[int]] = list


def wrk(
    url: str, script: str, env: dict[str, str], seconds: int, connections: int = CONNECTIONS
) -> dict[str, Any]:
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            f"bench/lua/{script}",
            url,
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"BENCH_JSON (\{.*\})", out)
    if match is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    data: dict[str, Any] = json.loads(match.group(1))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def summarize(name: str, data: dict[str, Any], ok: set[int]) -> Result:
    statuses = {str(k): v for k, v in sorted(data["statuses"].items())}
    bad = sum(v for k, v in data["statuses"].items() if int(k) not in ok)
    return Result(
        scenario=name,
        requests_per_s=round(data["rps"], 1),
        p50_ms=round(data["p50_us"] / 1000, 3),
        p99_ms=round(data["p99_us"] / 1000, 3),
        errors=data["errors"] + bad,
        statuses=statuses,
    )


def sandbox_created(sandbox: str) -> int:
    stats = json.loads(http("GET", f"{sandbox}/sandbox/admin/stats")[1])
    return int(sum(stats["sessionsCreated"].values()))


def overhead_quantiles(gateway: str) -> dict[str, float]:
    """Median and p99 of gateway_session_create_overhead_seconds from /metrics (bucket bounds)."""
    status, raw = http("GET", f"{gateway}/metrics")
    if status != 200:
        return {}
    buckets: list[tuple[float, float]] = []
    for line in raw.decode().splitlines():
        m = re.match(
            r'gateway_session_create_overhead_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', line
        )
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return {}
    buckets.sort()
    total = buckets[-1][1]

    def quantile(q: float) -> float:
        previous_bound, previous_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= q * total:
                if bound == float("inf"):
                    return previous_bound
                share = (q * total - previous_count) / max(count - previous_count, 1e-9)
                return previous_bound + (bound - previous_bound) * share
            previous_bound, previous_count = bound, count
        return previous_bound

    return {
        "median_ms": round(quantile(0.5) * 1000, 3),
        "p99_ms": round(quantile(0.99) * 1000, 3),
        "samples": int(total),
    }


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live descendants (the gateway's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except OSError:
                continue
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat(current)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        todo += children.get(current, [])
    return total


def metric_sum(gateway: str, name: str) -> float:
    """Sum of every sample of ``name`` on the gateway's /metrics."""
    status, raw = http("GET", f"{gateway}/metrics")
    if status != 200:
        raise SystemExit(f"bench: /metrics answered {status}")
    total = 0.0
    for line in raw.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cleanup_redis(prefix: str, urls: list[str]) -> None:
    """Delete the run's keys on every node named (the standalone server, each cluster
    primary): SCAN MATCH per node, UNLINK per slot."""
    from tests.redis_cleanup import delete_matching_at

    delete_matching_at(urls, f"{prefix}*")


def redis_server_pid() -> int:
    """The pid of the Redis server at ``BENCH_REDIS_URL`` (from INFO)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def postgres_url(name: str) -> str:
    """``BENCH_POSTGRES_URL`` pointing at database ``name``."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(POSTGRES_ADMIN_URL)._replace(path=f"/{name}"))


def postgres_admin(statement: str) -> None:
    """Run one statement on the server's maintenance database."""
    import asyncio

    import asyncpg

    async def execute() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(execute())


def postgres_backends(database: str) -> list[int]:
    """Pids of the server processes connected to ``database`` (the gateway's pool)."""
    import asyncio

    import asyncpg

    async def fetch() -> list[int]:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await conn.close()
        return [int(r["pid"]) for r in rows]

    return asyncio.run(fetch())


@contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """CREATE database ``name``, migrate it with ``gateway db upgrade``, DROP it afterwards."""
    postgres_admin(f'CREATE DATABASE "{name}"')
    url = postgres_url(name)
    try:
        subprocess.run(
            [sys.executable, "-m", "gateway", "db", "upgrade"],
            cwd=ROOT,
            env={**os.environ, "GATEWAY_DATABASE_URL": url},
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield url
    finally:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
    }


def cluster_vs_standalone(cluster: Result, standalone: Result) -> dict[str, Any]:
    """The ratios Redis Cluster / standalone Redis of creates/s, gateway CPU per create and
    Redis CPU per create (all the cluster's primaries against the one server)."""
    redis_cpu = "redis_server_cpu_ms_per_request"
    return {
        "creates_per_s_ratio": round(
            cluster.requests_per_s / max(standalone.requests_per_s, 1e-9), 3
        ),
        "cpu_per_create_ratio": round(
            cluster.extra["server_cpu_ms_per_request"]
            / max(standalone.extra["server_cpu_ms_per_request"], 1e-9),
            3,
        ),
        "redis_cpu_per_create_ratio": round(
            cluster.extra[redis_cpu] / max(standalone.extra[redis_cpu], 1e-9), 3
        ),
    }


def postgres_vs_redis(postgres: Result, redis: Result) -> dict[str, Any]:
    """The ratios PostgreSQL / Redis of creates/s and gateway CPU per create, and whether
    each meets its target."""
    rate = postgres.requests_per_s / max(redis.requests_per_s, 1e-9)
    cpu = postgres.extra["server_cpu_ms_per_request"] / max(
        redis.extra["server_cpu_ms_per_request"], 1e-9
    )
    return {
        "creates_per_s_ratio": round(rate, 3),
        "creates_per_s_met": rate >= TARGET_RATE_RATIO,
        "cpu_per_create_ratio": round(cpu, 3),
        "cpu_per_create_met": cpu <= TARGET_CPU_RATIO,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--stores-only",
        action="store_true",
        help="only the baseline and the Redis / PostgreSQL create comparison (and its ratios)",
    )
    parser.add_argument(
        "--only",
        choices=["redis"],
        help="redis: only the baseline and the create comparison standalone Redis / Redis "
        "Cluster (3 masters, started by the bench)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench:{run_id}:"
    py = sys.executable
    ports = {name: free_port() for name in ("sandbox", "gateway", "baseline")}
    sandbox = f"http://127.0.0.1:{ports['sandbox']}"
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    baseline = f"http://127.0.0.1:{ports['baseline']}"
    settings = Settings(_env_file=None, jwt_secret=JWT_SECRET)  # type: ignore[call-arg]
    token = Authenticator(settings).issue(
        "bench-merchant", ["sessions:write", "sessions:read", "routing:read"], 3600
    )
    text = SEED_REQUEST_JSON.replace('"ORD-2024-001"', '"__ORDER__"')
    gw_env = {
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_PORT": str(ports["gateway"]),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_SANDBOX_EMBEDDED": "false",
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_REDIS_PREFIX": prefix,
        **{
            f"GATEWAY_PROVIDER_{p.upper()}_BASE_URL": f"{sandbox}/sandbox/{p}"
            for p in ("stripe", "adyen", "paypal")
        },
    }
    results: list[Result] = []
    common = {"BENCH_TOKEN": token, "BENCH_RUN": run_id}

    def run(
        name: str,
        url: str,
        script: str,
        env: dict[str, str],
        ok: set[int],
        server: int,
        connections: int = CONNECTIONS,
        provider: int | None = None,
        database: str | None = None,
    ) -> Result:
        warm_env = {**common, **env, "BENCH_RUN": f"{run_id}w{len(results)}"}
        wrk(url, script, warm_env, args.warmup, connections)
        # the database's backends: the pool's connections, opened by now (warm-up)
        backends = postgres_backends(database) if database else []
        store_before = sum(cpu_seconds(pid) for pid in backends)
        cpu_before = cpu_seconds(server)
        provider_before = cpu_seconds(provider) if provider else 0.0
        measured_env = {**common, **env, "BENCH_RUN": f"{run_id}m{len(results)}"}
        data = wrk(url, script, measured_env, args.seconds, connections)
        cpu_used = cpu_seconds(server) - cpu_before
        store_used = sum(cpu_seconds(pid) for pid in backends) - store_before
        if provider:
            used = cpu_seconds(provider) - provider_before
            result_provider_cpu = round(1000 * used / max(data["requests"], 1), 3)
        result = summarize(name, data, ok)
        # CPU the server itself spent per answered request: steadier than req/s on a busy box
        result.extra["server_cpu_ms_per_request"] = round(
            1000 * cpu_used / max(data["requests"], 1), 3
        )
        result.extra["connections"] = connections
        if database:
            # PostgreSQL's own work per request (its backends; not the WAL writer)
            result.extra["database_cpu_ms_per_request"] = round(
                1000 * store_used / max(data["requests"], 1), 3
            )
        if provider:
            # the sandbox shares this machine's two cores with the gateway, wrk and Redis
            result.extra["sandbox_cpu_ms_per_request"] = result_provider_cpu
        results.append(result)
        print(
            f"  {name:<44} {result.requests_per_s:>9.1f} req/s  p50 {result.p50_ms:>7.2f} ms  "
            f"p99 {result.p99_ms:>7.2f} ms  errors {result.errors}",
            flush=True,
        )
        return result

    def create_scenario(
        name: str,
        extra_env: dict[str, str],
        connections: int = CONNECTIONS,
        database: str | None = None,
    ) -> Result:
        before = sandbox_created(sandbox)
        env = {**gw_env, **extra_env}
        args_serve = [py, "-m", "gateway", "serve"]
        with process(args_serve, env, f"{gateway}/readyz") as served:
            result = run(
                name,
                gateway,
                "create.lua",
                {"BENCH_BODY": text},
                {201},
                served.pid,
                connections,
                provider=sandbox_proc.pid,
                database=database,
            )
            # wrk stops with requests still in flight: let them finish, then compare what the
            # gateway created (its own counter, all workers) with what the sandbox created
            time.sleep(1.0)
            result.extra["answered_201"] = int(
                metric_sum(gateway, "gateway_sessions_created_total")
            )
            result.extra["sandbox_sessions_created"] = sandbox_created(sandbox) - before
            result.extra["overhead"] = overhead_quantiles(gateway)
        return result

    def compare_creates(postgres_env: dict[str, str], database: str) -> dict[str, Result]:
        """Creates on the Redis store and on PostgreSQL (see :func:`alternate_creates`)."""
        second = free_port()
        return alternate_creates(
            {
                "redis": Setup(
                    "create session (redis, 1 worker)",
                    {**gw_env, "GATEWAY_STORE": "redis"},
                    gateway,
                    store_pids=lambda: [redis_server_pid()],
                ),
                "postgres": Setup(
                    "create session (postgres, 1 worker)",
                    {**gw_env, **postgres_env, "GATEWAY_PORT": str(second)},
                    f"http://127.0.0.1:{second}",
                    database=database,
                ),
            }
        )

    def compare_redis_modes(cluster: Any) -> dict[str, Result]:
        """Creates on standalone Redis and on a 3-master Redis Cluster (see
        :func:`alternate_creates`); the Redis CPU of the cluster is its primaries' sum."""
        second = free_port()
        cluster_env = {
            **gw_env,
            "GATEWAY_STORE": "redis",
            "GATEWAY_REDIS_MODE": "cluster",
            "GATEWAY_REDIS_URL": cluster.seed_url,
            "GATEWAY_PORT": str(second),
        }
        return alternate_creates(
            {
                "redis": Setup(
                    "create session (redis standalone, 1 worker)",
                    {**gw_env, "GATEWAY_STORE": "redis"},
                    gateway,
                    store_pids=lambda: [redis_server_pid()],
                ),
                "cluster": Setup(
                    "create session, Redis Cluster (3 masters)",
                    cluster_env,
                    f"http://127.0.0.1:{second}",
                    store_pids=lambda: [n.pid for n in cluster.primaries],
                ),
            }
        )

    def alternate_creates(setups: dict[str, Setup]) -> dict[str, Result]:
        """Creates on two setups, both gateways up at once and driven in alternating slices
        (a, b, b, a, ...), so the background load of a shared machine falls on both alike;
        each setup's figures add up its slices (p50: the median of the slices', p99: the
        highest)."""
        # one-second slices: the shorter, the more evenly a passing load falls on both
        slice_s = 1
        slices = max(2, args.seconds // 2 * 2)  # per store, even: the order is r p p r ...
        before = sandbox_created(sandbox)
        serve = [py, "-m", "gateway", "serve"]
        first, second = list(setups)
        with (
            process(serve, setups[first].env, f"{setups[first].url}/readyz") as first_proc,
            process(serve, setups[second].env, f"{setups[second].url}/readyz") as second_proc,
        ):
            pids = {first: first_proc.pid, second: second_proc.pid}
            body = {**common, "BENCH_BODY": text}
            for name, setup in setups.items():
                wrk(setup.url, "create.lua", {**body, "BENCH_RUN": f"{run_id}w{name}"}, args.warmup)
            totals: dict[str, dict[str, Any]] = {
                name: {"requests": 0, "duration_us": 0, "errors": 0, "statuses": {}}
                | {"p50": [], "p99": [], "cpu": 0.0, "database": 0.0, "sandbox": 0.0}
                for name in setups
            }
            order = [first, second, second, first] * (slices // 2)
            for i, name in enumerate(order):
                url, db = setups[name].url, setups[name].database
                # the store server's own CPU: PostgreSQL's backends of this database; the
                # Redis servers as a whole (shared with anything else using them: an upper
                # bound)
                backends = postgres_backends(db) if db else setups[name].store_pids()
                cpu_before = cpu_seconds(pids[name])
                db_before = sum(cpu_seconds(pid) for pid in backends)
                sandbox_before = cpu_seconds(sandbox_proc.pid)
                data = wrk(url, "create.lua", {**body, "BENCH_RUN": f"{run_id}c{i}"}, slice_s)
                total = totals[name]
                total["cpu"] += cpu_seconds(pids[name]) - cpu_before
                total["database"] += sum(cpu_seconds(pid) for pid in backends) - db_before
                total["sandbox"] += cpu_seconds(sandbox_proc.pid) - sandbox_before
                for field_name in ("requests", "duration_us", "errors"):
                    total[field_name] += data[field_name]
                for status, count in data["statuses"].items():
                    total["statuses"][status] = total["statuses"].get(status, 0) + count
                total["p50"].append(data["p50_us"])
                total["p99"].append(data["p99_us"])
            # wrk stops with requests in flight: let them finish, then compare what both
            # gateways created with what the sandbox created
            time.sleep(1.0)
            answered = {
                name: int(metric_sum(setup.url, "gateway_sessions_created_total"))
                for name, setup in setups.items()
            }
            overheads = {name: overhead_quantiles(setup.url) for name, setup in setups.items()}
        created = sandbox_created(sandbox) - before
        out: dict[str, Result] = {}
        for name, total in totals.items():
            requests = max(total["requests"], 1)
            merged = {
                "requests": total["requests"],
                "duration_us": total["duration_us"],
                "rps": total["requests"] / (total["duration_us"] / 1e6),
                "p50_us": sorted(total["p50"])[len(total["p50"]) // 2],
                "p99_us": max(total["p99"]),
                "errors": total["errors"],
                "statuses": total["statuses"],
            }
            result = summarize(setups[name].label, merged, {201})
            result.extra["server_cpu_ms_per_request"] = round(1000 * total["cpu"] / requests, 3)
            result.extra["sandbox_cpu_ms_per_request"] = round(
                1000 * total["sandbox"] / requests, 3
            )
            store_cpu = round(1000 * total["database"] / requests, 3)
            if setups[name].database:
                result.extra["database_cpu_ms_per_request"] = store_cpu
            else:
                result.extra["redis_server_cpu_ms_per_request"] = store_cpu
            result.extra["connections"] = CONNECTIONS
            result.extra["slices"] = f"{slices} x {slice_s}s, alternating with the other store"
            result.extra["answered_201"] = answered[name]
            result.extra["overhead"] = overheads[name]
            results.append(result)
            out[name] = result
            print(
                f"  {result.scenario:<44} {result.requests_per_s:>9.1f} req/s  "
                f"p50 {result.p50_ms:>7.2f} ms  p99 {result.p99_ms:>7.2f} ms  "
                f"errors {result.errors}",
                flush=True,
            )
        # the sandbox cannot tell the two gateways apart: one check for both
        out[second].extra["answered_201"] = sum(answered.values())
        out[second].extra["sandbox_sessions_created"] = created
        out[second].extra["answered_201_by"] = "both setups"
        return out

    def read_scenarios(
        workers: int,
        *,
        with_reads: bool,
        store: str = "redis",
        extra_env: dict[str, str] | None = None,
        database: str | None = None,
        with_simulate: bool = True,
    ) -> None:
        """Replay (and GET, simulate): the gateway and its store only, no provider call."""
        suffix = store if workers == 1 else f"{store}, {workers} workers"
        with process(
            [py, "-m", "gateway", "serve"],
            {
                **gw_env,
                "GATEWAY_STORE": store,
                "GATEWAY_WORKERS": str(workers),
                **(extra_env or {}),
            },
            f"{gateway}/readyz",
        ) as served:
            key = f"replay-{run_id}-{store}-{workers}"
            headers = {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Idempotency-Key": key,
            }
            one = text.replace("__ORDER__", f"REPLAY-{run_id}-{store}-{workers}").encode()
            status, raw = http("POST", f"{gateway}/api/v1/sessions", one, headers)
            assert status == 201, raw
            session_id = json.loads(raw)["sessionId"]
            replay = {
                "BENCH_METHOD": "POST",
                "BENCH_PATH": "/api/v1/sessions",
                "BENCH_BODY": one.decode(),
                "BENCH_KEY": key,
            }
            run(
                f"idempotent replay ({suffix})",
                gateway,
                "fixed.lua",
                replay,
                {201},
                served.pid,
                database=database,
            )
            if not with_reads:
                return
            get = {"BENCH_METHOD": "GET", "BENCH_PATH": f"/api/v1/sessions/{session_id}"}
            run(
                f"GET session ({suffix})",
                gateway,
                "fixed.lua",
                get,
                {200},
                served.pid,
                database=database,
            )
            if not with_simulate:
                return
            simulate = {
                "BENCH_METHOD": "POST",
                "BENCH_PATH": "/api/v1/routing/simulate",
                "BENCH_BODY": one.decode(),
            }
            run("routing simulate", gateway, "fixed.lua", simulate, {200}, served.pid)

    print(
        f"bench: run {run_id}, {CONNECTIONS} connections, {args.seconds}s per scenario", flush=True
    )
    database_name = f"gateway_bench_{run_id}"
    only_redis = args.only == "redis"
    redis_nodes = [REDIS_URL]
    creates: dict[str, Result] = {}
    try:
        with ExitStack() as stack:
            database_url = (
                "" if only_redis else stack.enter_context(postgres_database(database_name))
            )
            cluster = None
            if only_redis or not args.stores_only:
                cluster = stack.enter_context(start_cluster(masters=3))
                redis_nodes += [node.url for node in cluster.primaries]
                print(
                    f"bench: Redis Cluster (3 masters) up in {cluster.startup_seconds:.1f}s",
                    flush=True,
                )
            sandbox_command = [py, "-m", "gateway", "sandbox", "--port", str(ports["sandbox"])]
            sandbox_proc = stack.enter_context(
                process(
                    [*sandbox_command, "--gateway-url", gateway],
                    {"GATEWAY_LOG_LEVEL": "WARNING"},
                    f"{sandbox}/sandbox/admin/stats",
                )
            )
            baseline_proc = stack.enter_context(
                process(
                    [py, "bench/baseline_server.py", "--port", str(ports["baseline"])],
                    {},
                    f"{baseline}/",
                )
            )
            base = run(
                "baseline (bare aiohttp, fixed JSON)",
                baseline,
                "fixed.lua",
                {"BENCH_METHOD": "POST", "BENCH_PATH": "/", "BENCH_BODY": text},
                {200},
                baseline_proc.pid,
            )
            if cluster is not None:
                creates.update(
                    {f"redis_modes_{k}": v for k, v in compare_redis_modes(cluster).items()}
                )
            if not only_redis:
                # the records in PostgreSQL, coordination in Redis (the production pairing)
                postgres_env = {
                    "GATEWAY_STORE": "postgres",
                    "GATEWAY_COORDINATION": "redis",
                    "GATEWAY_DATABASE_URL": database_url,
                }
                creates.update(compare_creates(postgres_env, database_name))
            if not only_redis and not args.stores_only:
                create_scenario(
                    "create session (redis, 1 connection)",
                    {"GATEWAY_STORE": "redis"},
                    connections=1,
                )
                read_scenarios(1, with_reads=True)
                read_scenarios(
                    1,
                    with_reads=True,
                    store="postgres",
                    extra_env=postgres_env,
                    database=database_name,
                    with_simulate=False,
                )
                create_scenario("create session (memory store)", {"GATEWAY_STORE": "memory"})
                create_scenario(
                    "create session (redis, 2 workers)",
                    {"GATEWAY_STORE": "redis", "GATEWAY_WORKERS": "2"},
                )
                read_scenarios(2, with_reads=False)
            # while the cluster still runs
            cleanup_redis(prefix, redis_nodes)
    finally:
        cleanup_redis(prefix, [REDIS_URL])
    return report(results, base, creates, run_id, args.seconds)


def report(
    results: list[Result], base: Result, creates: dict[str, Result], run_id: str, seconds: int
) -> int:
    """Print the table and the ratios (Redis Cluster / standalone, PostgreSQL / Redis), write
    the run's JSON; the exit
    status (1 when the sandbox created a different number of sessions than were answered)."""
    for result in results:
        result.ratio_to_baseline = round(result.requests_per_s / base.requests_per_s, 3)
    duplicates_ok = True
    print(
        "\nscenario                                       req/s   ratio   p50 ms   p99 ms  errors"
        "  cpu ms/req  notes"
    )
    for r in results:
        parts: list[str] = []
        if "sandbox_sessions_created" in r.extra:
            created, answered = r.extra["sandbox_sessions_created"], r.extra["answered_201"]
            same = created == answered
            duplicates_ok = duplicates_ok and same
            check = f"201s {answered} / sandbox sessions {created} {'OK' if same else 'MISMATCH'}"
            if "answered_201_by" in r.extra:
                check += f" ({r.extra['answered_201_by']})"
            parts.append(check)
        if r.extra.get("overhead"):
            parts.append(f"own time median {r.extra['overhead'].get('median_ms')} ms")
        if "sandbox_cpu_ms_per_request" in r.extra:
            parts.append(f"sandbox cpu {r.extra['sandbox_cpu_ms_per_request']} ms/req")
        if "redis_server_cpu_ms_per_request" in r.extra:
            parts.append(f"redis server cpu {r.extra['redis_server_cpu_ms_per_request']} ms/req")
        if "database_cpu_ms_per_request" in r.extra:
            parts.append(f"database cpu {r.extra['database_cpu_ms_per_request']} ms/req")
        notes = "; ".join(parts)
        print(
            f"{r.scenario[:44]:<44} {r.requests_per_s:>8.1f} {r.ratio_to_baseline:>7.3f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7}"
            f"  {r.extra['server_cpu_ms_per_request']:>10.3f}  {notes}"
        )
    out: dict[str, Any] = {
        "run": run_id,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "connections": CONNECTIONS,
        "seconds": seconds,
        "results": [asdict(r) for r in results],
    }
    if "redis_modes_cluster" in creates:
        modes = cluster_vs_standalone(creates["redis_modes_cluster"], creates["redis_modes_redis"])
        print(
            f"\nRedis Cluster (3 masters) / standalone Redis, create session (1 worker): "
            f"creates/s {modes['creates_per_s_ratio']:.3f}, gateway cpu per create "
            f"{modes['cpu_per_create_ratio']:.3f}, redis cpu per create "
            f"{modes['redis_cpu_per_create_ratio']:.3f}"
        )
        out["cluster_vs_standalone"] = modes
    if "postgres" in creates:
        comparison = postgres_vs_redis(creates["postgres"], creates["redis"])
        print(
            f"\nPostgreSQL / Redis, create session (1 worker): creates/s "
            f"{comparison['creates_per_s_ratio']:.3f} (target >= {TARGET_RATE_RATIO}: "
            f"{'met' if comparison['creates_per_s_met'] else 'MISSED'}), gateway cpu per "
            f"create {comparison['cpu_per_create_ratio']:.3f} (target <= {TARGET_CPU_RATIO}: "
            f"{'met' if comparison['cpu_per_create_met'] else 'MISSED'})"
        )
        out["postgres_vs_redis"] = comparison
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"bench-{out['when'].replace(':', '')}-{run_id}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nbench: wrote {path.relative_to(ROOT)}")
    return 0 if duplicates_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
