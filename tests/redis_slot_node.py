"""A private Redis started in cluster mode that owns all 16384 slots: one node, so no client
ever sees ``MOVED``, but it refuses every command and script whose keys lie in more than one
slot (``CROSSSLOT``), exactly as each master of a real cluster does. Started from the Debian
``redis-server`` on a free port in a temporary directory, stopped by its pid."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis


@contextmanager
def slot_checking_redis() -> Iterator[str]:
    """The URL of a one-node Redis Cluster (database 0) until the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _cluster_port()
    with (
        tempfile.TemporaryDirectory(prefix="gw-slots-") as workdir,
        open(f"{workdir}/log", "wb") as log,
    ):
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"{workdir}/nodes.conf",
                "--dir",
                workdir,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)
            if not _until(lambda: _answers(client)):
                raise RuntimeError(f"redis-server did not start: {_tail(workdir)}")
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            if not _until(lambda: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")):
                raise RuntimeError(f"the one-node cluster did not come up: {_tail(workdir)}")
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    for _ in range(100):
        port = random.randint(20_000, 55_535)
        if all(_free(p) for p in (port, port + 10_000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _tail(workdir: str) -> str:
    with open(f"{workdir}/log", "rb") as log:
        return log.read()[-2000:].decode(errors="replace")
