"""Private redis-server processes for tests and benchmarks: a Redis Cluster, a Sentinel group.

Every server is ``/usr/bin/redis-server`` (the Debian package; ``REDIS_SERVER`` overrides it)
started as a child process on free ports of 127.0.0.1 in a temporary directory, stopped by its
pid (SIGTERM, then SIGKILL) or killed outright for fault tests (:meth:`RedisServer.kill`).
Nothing here needs pytest: ``bench/`` starts the same deployments.

- :func:`start_cluster` builds the cluster itself (``CLUSTER ADDSLOTSRANGE``, ``MEET``,
  ``REPLICATE``) and returns once every node reports ``cluster_state:ok``, knows every other
  node, and every replica is in sync with its master.
- :func:`start_sentinel_group` starts a primary configured for no acknowledged loss
  (``min-replicas-to-write 1``, ``min-replicas-max-lag 10``, ``appendonly yes``; its replicas
  carry the same settings for when they are promoted), its replicas and Sentinels with a short
  ``down-after-milliseconds`` so that a killed primary fails over within a few seconds; it
  returns once every Sentinel knows the primary, every replica and every other Sentinel.

Servers write no RDB snapshots and do not fsync their AOF (``appendfsync no``): they start in
milliseconds and never stall on a shared disk; replicas sync diskless without the 5 s delay.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis

__all__ = [
    "RedisCluster",
    "RedisNode",
    "RedisServer",
    "SentinelGroup",
    "redis_server_binary",
    "start_cluster",
    "start_sentinel_group",
]

Role = Literal["primary", "replica", "sentinel"]

HOST = "127.0.0.1"
#: settings every data node shares: quick to start and to resync, no disk stalls
_COMMON = [
    "--bind",
    HOST,
    "--protected-mode",
    "no",
    "--save",
    "",
    "--appendfsync",
    "no",
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
    "--repl-diskless-load",
    "on-empty-db",
]
#: what the gateway's start-up check asks of a primary (see gateway.store.redis_client)
DURABLE = [
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "10",
    "--appendonly",
    "yes",
]

_running: list[RedisServer] = []


def redis_server_binary() -> str | None:
    """The redis-server executable (``REDIS_SERVER``, else on PATH), or None."""
    configured = os.environ.get("REDIS_SERVER")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (a test run
    killed by a timeout runs no teardown and no atexit)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(
    what: str, check: Callable[[], bool], timeout: float, details: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{details()}")
        time.sleep(0.05)


class RedisServer:
    """One redis-server (or Sentinel) process of ours: ``start``, ``stop``, ``kill``."""

    def __init__(self, root: Path, name: str, args: Sequence[str], *, sentinel: bool = False):
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.args = list(args)
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The running process's pid, or None once stopped or killed."""
        return self.process.pid if self.process is not None else None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    def server_log(self) -> str:
        """The tail of the server's log (for failure messages)."""
        try:
            return (
                f"--- {self.name} ({self.address}) ---\n"
                + self.log_file.read_text(errors="replace")[-3000:]
            )
        except OSError:
            return ""

    def start(self) -> None:
        """Start the process (again, after a stop or kill: same port, same directory and
        files, so an AOF written before is loaded) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        command = [binary]
        if self.sentinel:
            command += [str(self.dir / "sentinel.conf"), "--sentinel"]
        command += [
            "--port",
            str(self.port),
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            *self.args,
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # the forking thread must outlive the server
        )
        _running.append(self)

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}\n{self.server_log()}"
                )
            with self.client(timeout=0.5) as client:
                return bool(client.ping())

        _wait_for(f"{self.name} to answer PING", answers, 20, self.server_log)

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A fresh synchronous client on this server (the caller closes it)."""
        return redis.Redis(
            host=HOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def command(self, *args: Any) -> Any:
        """One command on a fresh connection."""
        with self.client() as client:
            return client.execute_command(*args)

    def info(self, section: str) -> dict[str, Any]:
        """``INFO section`` on a fresh connection, parsed."""
        with self.client() as client:
            parsed: dict[str, Any] = client.info(section)
            return parsed

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; wait until the process is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._forget()

    def kill(self) -> None:
        """SIGKILL, as a crash of the machine would: nothing is flushed or handed over."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._forget()

    def _forget(self) -> None:
        self.process = None
        with contextlib.suppress(ValueError):
            _running.remove(self)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class RedisNode:
    """A started server and the role it was started in (see :meth:`role_now` after a
    failover)."""

    server: RedisServer
    role: Role
    host: str = HOST

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def role_now(self) -> str:
        """``master``, ``slave`` or ``sentinel`` (``ROLE``, asked now)."""
        reply = self.server.command("ROLE")
        first = reply[0]
        return first.decode() if isinstance(first, bytes) else str(first)


@dataclass
class _Deployment:
    root: Path
    nodes: list[RedisNode] = field(default_factory=list)
    startup_seconds: float = 0.0

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and delete the directory."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def server_logs(self) -> str:
        return "\n".join(node.server.server_log() for node in self.nodes)

    def __enter__(self) -> _Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RedisCluster(_Deployment):
    """A running Redis Cluster: :attr:`nodes` (primaries first), :attr:`seed_url`."""

    @property
    def primaries(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.role == "primary"]

    @property
    def replicas(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.role == "replica"]

    @property
    def seed_url(self) -> str:
        """A seed node's URL (database 0, as a cluster has no other)."""
        return self.nodes[0].url

    def __enter__(self) -> RedisCluster:
        return self


@dataclass
class SentinelGroup(_Deployment):
    """A running primary, its replicas and Sentinels watching it as :attr:`master_name`."""

    master_name: str = "gateway"

    @property
    def primary(self) -> RedisNode:
        """The node started as the primary (see :meth:`current_primary` after a failover)."""
        return next(n for n in self.nodes if n.role == "primary")

    @property
    def replicas(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.role == "replica"]

    @property
    def data_nodes(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.role != "sentinel"]

    @property
    def sentinels(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.role == "sentinel"]

    @property
    def sentinel_addresses(self) -> str:
        """``host:port,host:port`` (what ``GATEWAY_REDIS_SENTINELS`` takes)."""
        return ",".join(s.server.address for s in self.sentinels)

    def current_primary(self) -> RedisNode:
        """The data node a live Sentinel names as the primary now."""
        for sentinel in self.sentinels:
            if not sentinel.server.alive:
                continue
            with contextlib.suppress(redis.RedisError, OSError):
                _, port = sentinel.server.command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                )
                return next(n for n in self.data_nodes if n.port == int(port))
        raise RuntimeError("no Sentinel answers")

    def wait_until_settled(self, timeout: float = 30.0) -> RedisNode:
        """Wait until the Sentinels agree on a primary that answers as ``master`` and every
        other live data node replicates it in sync; that primary."""
        settled: list[RedisNode] = []

        def check() -> bool:
            primary = self.current_primary()
            if primary.role_now() != "master":
                return False
            for sentinel in self.sentinels:
                if sentinel.server.alive:
                    _, port = sentinel.server.command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
                    if int(port) != primary.port:
                        return False
            others = [n for n in self.data_nodes if n is not primary and n.server.alive]
            for node in others:
                info = node.server.info("replication")
                if info.get("master_port") != primary.port:
                    return False
                if info.get("master_link_status") != "up":
                    return False
            info = primary.server.info("replication")
            if int(info.get("connected_slaves", 0)) < len(others):
                return False
            if others and not _replicated_promptly(primary, "gw-servers:probe", len(others)):
                return False
            settled[:] = [primary]
            return True

        _wait_for("the Sentinel group to settle", check, timeout, self.server_logs)
        return settled[0]

    def __enter__(self) -> SentinelGroup:
        return self


def _replicated_promptly(primary: RedisNode, key: str, replicas: int) -> bool:
    """Whether a write of ``key`` on ``primary`` reaches ``replicas`` replicas within 200 ms
    (right after a full sync a replica acknowledges late for a moment: wait that out, so a
    test's first confirmed write does not fail for it). The key is deleted again."""
    with primary.server.client() as client:
        client.set(key, b"1")
        acked = int(client.execute_command("WAIT", replicas, 200))
        client.delete(key)
    return acked >= replicas


def _key_on(slot_range: tuple[int, int]) -> str:
    """A probe key whose slot lies in ``slot_range``."""
    from redis.crc import key_slot

    for index in range(100_000):
        key = f"gw-servers:probe:{{{index}}}"
        if slot_range[0] <= key_slot(key.encode()) <= slot_range[1]:
            return key
    raise RuntimeError(f"no probe key for slots {slot_range}")


def _cluster_info(node: RedisNode) -> dict[str, str]:
    text = node.server.command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)


def start_cluster(
    masters: int = 3,
    replicas_per_master: int = 0,
    *,
    node_timeout_ms: int = 3000,
    durable: bool = False,
) -> RedisCluster:
    """A running Redis Cluster of ``masters`` primaries (slots split evenly) and
    ``replicas_per_master`` replicas each; ``durable``: primaries and replicas carry
    :data:`DURABLE` (``min-replicas-to-write`` needs ``replicas_per_master >= 1``).
    The caller stops it (:meth:`RedisCluster.stop`, or ``with``)."""
    if redis_server_binary() is None:
        raise RuntimeError("redis-server is not installed")
    began = time.monotonic()
    cluster = RedisCluster(root=Path(tempfile.mkdtemp(prefix="gateway-redis-cluster-")))
    buses: dict[int, int] = {}
    try:
        for index in range(masters * (1 + replicas_per_master)):
            role: Role = "primary" if index < masters else "replica"
            bus = _free_port()
            server = RedisServer(
                cluster.root,
                f"node{index}",
                [
                    *_COMMON,
                    *(DURABLE if durable else ["--appendonly", "no"]),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--cluster-port",
                    str(bus),
                    "--cluster-require-full-coverage",
                    "yes",
                ],
            )
            cluster.nodes.append(RedisNode(server, role))
            buses[server.port] = bus
            server.start()
        primaries, replicas = cluster.primaries, cluster.replicas
        per_master = 16384 // masters
        ranges: list[tuple[int, int]] = []
        for index, node in enumerate(primaries):
            first = index * per_master
            last = 16383 if index == masters - 1 else first + per_master - 1
            node.server.command("CLUSTER", "ADDSLOTSRANGE", first, last)
            ranges.append((first, last))
        first_node = cluster.nodes[0]
        for node in cluster.nodes[1:]:
            node.server.command("CLUSTER", "MEET", HOST, first_node.port, buses[first_node.port])

        def all_known() -> bool:
            return all(
                int(_cluster_info(n)["cluster_known_nodes"]) == len(cluster.nodes)
                for n in cluster.nodes
            )

        _wait_for("every cluster node to know every other", all_known, 30, cluster.server_logs)
        ids = [_text(n.server.command("CLUSTER", "MYID")) for n in primaries]
        for index, node in enumerate(replicas):
            node.server.command("CLUSTER", "REPLICATE", ids[index % masters])

        def ready() -> bool:
            for node in cluster.nodes:
                info = _cluster_info(node)
                if info["cluster_state"] != "ok" or info["cluster_slots_ok"] != "16384":
                    return False
            for node in replicas:
                info = node.server.info("replication")
                if info.get("role") != "slave" or info.get("master_link_status") != "up":
                    return False
            # every node must see the replicas as such (gossip), or a client may be told
            # a replica owns nothing yet a primary has none
            for node in cluster.nodes:
                shards = node.server.command("CLUSTER", "SHARDS")
                if sum(len(_field(shard, "nodes")) for shard in shards) != len(cluster.nodes):
                    return False
            if replicas_per_master:
                for node, slots in zip(primaries, ranges, strict=True):
                    if not _replicated_promptly(node, _key_on(slots), replicas_per_master):
                        return False
            return True

        _wait_for("cluster_state:ok on every node", ready, 60, cluster.server_logs)
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_seconds = time.monotonic() - began
    return cluster


def start_sentinel_group(
    replicas: int = 1,
    sentinels: int = 1,
    *,
    master_name: str = "gateway",
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 4000,
    durable: bool = True,
) -> SentinelGroup:
    """A running primary with ``replicas`` replicas and ``sentinels`` Sentinels (quorum: a
    majority) watching it as ``master_name``. ``durable=False`` starts the data nodes without
    :data:`DURABLE` (to see the gateway warn). The caller stops it."""
    if redis_server_binary() is None:
        raise RuntimeError("redis-server is not installed")
    began = time.monotonic()
    group = SentinelGroup(
        root=Path(tempfile.mkdtemp(prefix="gateway-redis-sentinel-")), master_name=master_name
    )
    settings = DURABLE if durable else ["--appendonly", "no"]
    try:
        primary = RedisServer(group.root, "primary", [*_COMMON, *settings])
        group.nodes.append(RedisNode(primary, "primary"))
        primary.start()
        for index in range(replicas):
            replica = RedisServer(
                group.root,
                f"replica{index}",
                [*_COMMON, *settings, "--replicaof", HOST, str(primary.port)],
            )
            group.nodes.append(RedisNode(replica, "replica"))
            replica.start()
        quorum = sentinels // 2 + 1
        for index in range(sentinels):
            sentinel = RedisServer(group.root, f"sentinel{index}", ["--bind", HOST], sentinel=True)
            (sentinel.dir / "sentinel.conf").write_text(
                "\n".join(
                    [
                        "protected-mode no",
                        f"sentinel monitor {master_name} {HOST} {primary.port} {quorum}",
                        f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
                        f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
                        f"sentinel parallel-syncs {master_name} {max(1, replicas)}",
                        "",
                    ]
                )
            )
            group.nodes.append(RedisNode(sentinel, "sentinel"))
            sentinel.start()

        def sentinels_see_everything() -> bool:
            for node in group.sentinels:
                master = _pairs(node.server.command("SENTINEL", "MASTER", master_name))
                if int(master["num-slaves"]) != replicas:
                    return False
                if int(master["num-other-sentinels"]) != sentinels - 1:
                    return False
                flags = master["flags"]
                if flags != "master":
                    return False
                for seen in node.server.command("SENTINEL", "REPLICAS", master_name):
                    entry = _pairs(seen)
                    if entry["flags"] != "slave" or entry.get("master-link-status") != "ok":
                        return False
            return True

        group.wait_until_settled()
        _wait_for(
            "every Sentinel to see the primary, its replicas and the other Sentinels",
            sentinels_see_everything,
            30,
            group.server_logs,
        )
    except BaseException:
        group.stop()
        raise
    group.startup_seconds = time.monotonic() - began
    return group


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Any) -> dict[str, str]:
    """A flat ``[key, value, ...]`` reply (or a dict) as a dict of text."""
    if isinstance(flat, dict):
        return {_text(k): _text(v) for k, v in flat.items()}
    items = list(flat)
    return {_text(items[i]): _text(items[i + 1]) for i in range(0, len(items), 2)}


def _field(entry: Any, name: str) -> Any:
    if isinstance(entry, dict):
        return entry.get(name.encode(), entry.get(name))
    items = list(entry)
    for i in range(0, len(items), 2):
        if _text(items[i]) == name:
            return items[i + 1]
    return None


def iter_running() -> Iterator[RedisServer]:
    """The servers started and not stopped yet (for diagnostics)."""
    yield from list(_running)


@atexit.register
def _stop_leftovers() -> None:
    """A test run that died before its teardown still leaves no redis-server behind."""
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.kill()
