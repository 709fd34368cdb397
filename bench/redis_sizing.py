"""Redis memory per checkout session and per key, measured on a private redis-server.

Starts a redis-server of its own (:class:`tests.redis_servers.RedisServer`: free port, temp
dir, no persistence), the sandbox providers and ``gateway serve`` with ``GATEWAY_STORE=redis``
on it, creates ``--sessions`` sessions through the HTTP API (each with an Idempotency-Key and
an orderReference of its own, as a shop does) and prints:

- ``used_memory`` (``INFO memory``) growth per session, measured after a warm-up (the scripts
  and the coordination keys are in place by then);
- ``MEMORY USAGE`` (``SAMPLES 0``: every element counted) of one key of each kind: session,
  idempotency record, order reservation, order_sessions index; and of the queues (expiry,
  outbox, orphans) per entry they hold;
- how many keys a session leaves.

The measured sessions belong to a merchant without a webhook (nothing queued for them). Then
``--cancel`` more sessions of a merchant whose receiver is down are created and cancelled: their
notifications (created, cancelled) stay in the outbox, whose entries are measured too.

``.venv/bin/python bench/redis_sizing.py [--sessions 2000] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import JWT_SECRET, free_port, process  # noqa: E402
from gateway.auth import Authenticator  # noqa: E402
from gateway.examples import SEED_REQUEST_JSON  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.redis_servers import RedisServer  # noqa: E402

PREFIX = "size:"
#: the zset of each queue that names every entry once
QUEUE_INDEXES = (":expiry", ":outbox:due", ":orphans:due")
#: the merchant whose sessions are measured (no webhook: nothing queued for it) and the one
#: whose notifications stay queued (its receiver is down)
MEASURED, NOTIFIED = "sizing-merchant", "sizing-notified"
CONCURRENCY = 16

#: key kind by the part after the prefix (and the bucket tag, when there is one)
KINDS = [
    ("session", re.compile(r"(\{s\d+\}:)?session:")),
    ("idempotency", re.compile(r"(\{s\d+\}:)?idem:")),
    ("order_sessions", re.compile(r"order_sessions:")),
    ("order next", re.compile(r"order:.*:next:")),
    ("order (reservation)", re.compile(r"order:")),
    ("expiry queue", re.compile(r"(\{s\d+\}:)?expiry$")),
    ("outbox queue", re.compile(r"(\{s\d+\}:)?outbox")),
    ("orphans queue", re.compile(r"(\{s\d+\}:)?orphans")),
    ("circuit", re.compile(r"circuit:")),
    ("routing stats", re.compile(r"stats:")),
    ("rate limit", re.compile(r"ratelimit:")),
    ("webhook", re.compile(r"webhook:")),
]


def kind_of(key: str) -> str:
    rest = key[len(PREFIX) :]
    for name, pattern in KINDS:
        if pattern.match(rest):
            return name
    return "other"


async def create_sessions(url: str, token: str, first: int, count: int) -> list[str]:
    """Create ``count`` sessions; their ids."""
    text = SEED_REQUEST_JSON
    numbers = iter(range(first, first + count))
    ids: list[str] = []
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            for n in numbers:
                body = text.replace('"ORD-2024-001"', f'"ORD-SIZE-{n:06d}"')
                async with http.post(
                    f"{url}/api/v1/sessions",
                    data=body.encode(),
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                        "Idempotency-Key": f"size-{n:06d}-{'k' * 20}",
                    },
                ) as answer:
                    if answer.status != 201:
                        raise SystemExit(f"create {n}: {answer.status} {await answer.text()}")
                    ids.append((await answer.json())["sessionId"])

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return ids


async def cancel_sessions(url: str, token: str, ids: list[str]) -> None:
    """Cancel each session: one merchant notification queued per session (its receiver is
    down, so the notifications stay in the outbox)."""
    async with aiohttp.ClientSession() as http:
        for session_id in ids:
            async with http.post(
                f"{url}/api/v1/sessions/{session_id}/cancel",
                json={"cancellationReason": "abandoned"},
                headers={"Authorization": f"Bearer {token}"},
            ) as answer:
                if answer.status != 200:
                    raise SystemExit(f"cancel: {answer.status} {await answer.text()}")


def measure(server: RedisServer) -> dict[str, Any]:
    """Every key under the prefix: per kind, how many and their MEMORY USAGE (all samples)."""
    kinds: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"keys": 0, "bytes": 0, "entries": 0, "example": None, "example_bytes": 0}
    )
    with server.client() as client:
        for raw in client.scan_iter(match=f"{PREFIX}*", count=1000):
            key = raw.decode()
            entry = kinds[kind_of(key)]
            usage = int(client.execute_command("MEMORY", "USAGE", raw, "SAMPLES", "0") or 0)
            entry["keys"] += 1
            entry["bytes"] += usage
            kind = client.type(raw).decode()
            if key.endswith(QUEUE_INDEXES):
                # a queue's entries: its due index (its items hash holds the same ids)
                entry["entries"] += int(client.zcard(raw))
            elif kind == "hash" and "queue" not in kind_of(key):
                entry["entries"] += int(client.hlen(raw))
            elif "queue" not in kind_of(key):
                entry["entries"] += 1
            if entry["example"] is None:
                entry["example"] = f"{key} ({kind})"
                entry["example_bytes"] = usage
    return dict(kinds)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--cancel",
        type=int,
        default=200,
        help="sessions of a merchant whose receiver is down, created and cancelled",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="gateway-redis-sizing-"))
    server = RedisServer(root, "redis", ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    try:
        server.start()
        ports = {name: free_port() for name in ("sandbox", "gateway", "receiver")}
        merchants = root / "merchants.yaml"
        merchants.write_text(
            f"merchants:\n  {NOTIFIED}:\n    webhook:\n"
            f"      url: http://127.0.0.1:{ports['receiver']}/hooks\n"
            "      secret: whsec_sizing_0123456789abcdef\n"
        )
        sandbox = f"http://127.0.0.1:{ports['sandbox']}"
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        env = {
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_PORT": str(ports["gateway"]),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_SANDBOX_EMBEDDED": "false",
            "GATEWAY_STORE": "redis",
            "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
            "GATEWAY_REDIS_PREFIX": PREFIX,
            "GATEWAY_LOG_LEVEL": "ERROR",
            # the merchant's receiver is down: its notifications stay queued
            "GATEWAY_MERCHANTS_PATH": str(merchants),
            **{
                f"GATEWAY_PROVIDER_{p.upper()}_BASE_URL": f"{sandbox}/sandbox/{p}"
                for p in ("stripe", "adyen", "paypal")
            },
        }
        settings = Settings(_env_file=None, jwt_secret=JWT_SECRET)  # type: ignore[call-arg]
        scopes = ["sessions:write", "sessions:read"]
        token = Authenticator(settings).issue(MEASURED, scopes, 3600)
        notified = Authenticator(settings).issue(NOTIFIED, scopes, 3600)
        py = sys.executable
        with (
            process(
                [py, "-m", "gateway", "sandbox", "--port", str(ports["sandbox"])],
                {"GATEWAY_LOG_LEVEL": "WARNING"},
                f"{sandbox}/sandbox/admin/stats",
            ),
            process([py, "-m", "gateway", "serve"], env, f"{gateway}/readyz"),
        ):
            await create_sessions(gateway, token, 0, args.warmup)
            before = int(server.info("memory")["used_memory"])
            await create_sessions(gateway, token, args.warmup, args.sessions)
            after = int(server.info("memory")["used_memory"])
            first = args.warmup + args.sessions
            ids = await create_sessions(gateway, notified, first, args.cancel)
            await cancel_sessions(gateway, notified, ids)
            kinds = await asyncio.to_thread(measure, server)
        total = args.warmup + args.sessions + args.cancel
        figures = {
            "sessions": total,
            "measured_sessions": args.sessions,
            "used_memory_per_session_bytes": round((after - before) / args.sessions, 1),
            "keys_per_session": round(
                sum(
                    k["keys"]
                    for name, k in kinds.items()
                    if name in ("session", "idempotency", "order (reservation)", "order_sessions")
                )
                / total,
                2,
            ),
            "kinds": kinds,
        }
        print(
            f"redis sizing: {args.sessions} sessions (after {args.warmup} warm-up), "
            f"used_memory +{after - before} bytes = "
            f"{figures['used_memory_per_session_bytes']} bytes per session"
        )
        print(
            f"({total} sessions in all; queues: entries = ids in their due index, bytes = "
            "the index and the items together)"
        )
        print(f"{'kind':<22}{'keys':>7}{'entries':>9}{'bytes/key':>11}{'bytes/entry':>13}  example")
        for name, k in sorted(kinds.items()):
            per_key = k["bytes"] / max(k["keys"], 1)
            per_entry = k["bytes"] / max(k["entries"], 1)
            print(
                f"{name:<22}{k['keys']:>7}{k['entries']:>9}{per_key:>11.1f}{per_entry:>13.1f}"
                f"  {k['example']} = {k['example_bytes']} B"
            )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
