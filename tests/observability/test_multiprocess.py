"""`gateway serve --workers N`: every worker writes its own metric files and ``/metrics`` (served by
whichever worker the kernel picks) sums them, so totals equal the requests sent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import _metrics_dir
from tests.gateway_processes import base_env, free_port, start_gateway, stop_process

HEALTHZ = {"route": "/healthz", "method": "GET", "status": "200"}


def _healthz_key() -> str:
    names, values = list(HEALTHZ), list(HEALTHZ.values())
    return mmap_key(
        "gateway_http_requests_total",
        "gateway_http_requests_total",
        names,
        values,
        "HTTP requests answered, by route template, method and status code.",
    )


def write_stale_file(directory: Path) -> None:
    """What a previous run would leave behind: 1000 healthz requests of a dead process."""
    stale = MmapedDict(str(directory / "counter_999999.db"))
    stale.write_value(_healthz_key(), 1000.0, 0.0)
    stale.close()


def healthz_per_file(directory: Path) -> dict[str, float]:
    out = {}
    for path in directory.glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if '"/healthz"' in key and '"200"' in key:
                out[path.name] = value
    return out


async def wait_for_listeners(proc: subprocess.Popen[str], count: int) -> None:
    assert proc.stderr is not None
    seen = 0
    while seen < count:
        line = await asyncio.to_thread(proc.stderr.readline)
        assert line, f"gateway exited (code {proc.poll()})"
        seen += "gateway: listening on" in line


@pytest.mark.timeout(90)
async def test_two_workers_metrics_sum_to_the_requests_sent(
    sandbox: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    write_stale_file(directory)
    port = free_port()
    env = {
        **base_env(sandbox),
        "GATEWAY_WORKERS": "2",
        "GATEWAY_STORE": "redis",  # several workers share one store
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    proc = start_gateway(port, env)
    try:
        await asyncio.wait_for(wait_for_listeners(proc, 2), 30)
        url = f"http://127.0.0.1:{port}"
        sent = 40
        # a new connection per request: SO_REUSEPORT spreads connections over the workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(sent):
                async with http.get(f"{url}/healthz") as answer:
                    assert answer.status == 200
            async with http.get(f"{url}/metrics") as answer:
                exposition = await answer.text()
        per_worker = healthz_per_file(directory)
        assert "counter_999999.db" not in per_worker, "a stale file from an old run was kept"
        assert len([v for v in per_worker.values() if v > 0]) == 2, per_worker
        families = {f.name: f for f in text_string_to_metric_families(exposition)}
        healthz = [
            s.value
            for s in families["gateway_http_requests"].samples
            if s.name == "gateway_http_requests_total"
            and {k: s.labels.get(k) for k in HEALTHZ} == HEALTHZ
        ]
        assert healthz == [sent]
        # gauges are merged per their multiprocess mode, not repeated per process
        active = [s for s in families["gateway_rules_info"].samples if s.value == 1]
        assert len(active) == 1
        assert "pid" not in active[0].labels
        circuits = families["gateway_circuit_state"].samples
        assert sorted(s.labels["provider"] for s in circuits) == ["adyen", "paypal", "stripe"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        # the dead workers' live-gauge files are removed on exit
        assert not list(directory.glob("gauge_live*.db"))
    finally:
        stop_process(proc)


def test_metrics_dir_is_fresh_or_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    made, owned = _metrics_dir()
    try:
        assert owned
        assert Path(made).is_dir()
        assert not os.listdir(made)
    finally:
        os.rmdir(made)
    configured = tmp_path / "configured"
    configured.mkdir()
    write_stale_file(configured)
    (configured / "notes.txt").write_text("kept")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(configured))
    path, owned = _metrics_dir()
    assert (path, owned) == (str(configured), False)
    assert sorted(p.name for p in configured.iterdir()) == ["notes.txt"]
