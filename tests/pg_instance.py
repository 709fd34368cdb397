"""A private PostgreSQL server for tests that stop, kill and restart the database.

:class:`PrivatePostgres` runs ``initdb`` into a temporary directory and ``pg_ctl start`` on a
free port of 127.0.0.1 (trust authentication, ``fsync`` on, so a committed transaction
survives ``stop -m immediate`` and SIGKILL like it would a crash). The binaries come from the
Debian packages (``pg_config --bindir``). PostgreSQL refuses to run as root: when the tests
run as root, every server command runs as the ``postgres`` OS user through ``runuser`` and the
directory is handed to that user. :meth:`PrivatePostgres.remove` stops the server and deletes
the directory.

The ``private_postgres`` fixture gives one per test (``postgres_bindir``: the binaries). A
test that uses them is skipped when the binaries are missing, except under ``CI=true`` where
that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_processes import free_port, process_alive

__all__ = ["PrivatePostgres", "find_bindir", "postgres_bindir", "private_postgres"]

#: the OS user a server started by root runs as (the Debian packages create it)
SERVER_USER = "postgres"


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: ``pg_config --bindir``, else the newest
    ``/usr/lib/postgresql/*/bin``; None when neither holds them."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10
        )
        if found.returncode == 0:
            candidates.append(Path(found.stdout.strip()))
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


class PrivatePostgres:
    """One PostgreSQL server of a test's own: ``start``, ``stop``, ``kill``, ``remove``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_server_user: list[str] = []
        if os.geteuid() == 0:
            self._as_server_user = ["runuser", "-u", SERVER_USER, "--"]
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        """The URL of the maintenance database ``postgres`` (user postgres, no password)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self._as_server_user, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}\n"
                f"{self.server_log()}"
            )

    def server_log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def init(self) -> None:
        """``initdb``: a cluster with trust authentication and superuser ``postgres``. The
        files initdb writes are not fsynced (``--no-sync``: faster; this cluster never
        outlives the machine); the server itself runs with ``fsync`` on."""
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> None:
        """``pg_ctl start`` and wait until the server accepts connections (after a crash this
        includes its recovery from the write-ahead log)."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                "-k ''",  # TCP only: no socket lock file to go stale after a SIGKILL
                "-c fsync=on",
                "-c synchronous_commit=on",
                "-c max_connections=60",
                "-c shared_buffers=16MB",
            ]
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``; ``immediate`` aborts every process without a checkpoint,
        which the next start recovers from like after a crash."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (first line of ``postmaster.pid``), or None."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def kill(self) -> None:
        """SIGKILL the postmaster and every server process at once, as a crash of the
        database machine would, and wait until they are gone."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            return
        victims = [postmaster, *_children(postmaster)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(process_alive(pid) for pid in victims):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server processes survived SIGKILL: {victims}")
            time.sleep(0.02)
        # The dead postmaster may stay a zombie until init reaps it, and a zombie's pid still
        # "exists", so the next start would take the lock file for a live server's. After a
        # real crash the machine reboots and the file's pid is gone: remove the stale file.
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def remove(self) -> None:
        """Stop the server (whatever its state) and delete its directory."""
        if self.postmaster_pid() is not None:
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (from /proc)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) is in parentheses and may hold spaces
        fields = stat.rsplit(")", 1)[-1].split()
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


@pytest.fixture
def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are. Skips the test when they are not installed; fails it
    under CI=true."""
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
        if _under_ci():
            pytest.fail(f"{message} (CI=true: a missing PostgreSQL is a failure)", pytrace=False)
        pytest.skip(message)
    return bindir


@pytest.fixture
def private_postgres(postgres_bindir: Path) -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL server of this test's own, removed afterwards."""
    server = PrivatePostgres(postgres_bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()
