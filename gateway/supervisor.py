"""The supervisor of ``gateway serve --workers N``: keeps N worker processes serving.

A worker that dies (crash, OOM kill, SIGKILL) is replaced, after a back-off that doubles with
each quick death of the same slot (``0.5 s`` up to ``30 s``; a worker that served for a minute
resets it), and every death and restart is logged by ``gateway.supervisor``. SIGTERM / SIGINT are
forwarded to every worker, which drain their in-flight requests, and nothing is restarted after.

The supervisor publishes its view in a small JSON file (:class:`WorkerState`) that each worker's
``/readyz`` reads: the instance is ready only while all N workers are alive.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from pathlib import Path

import orjson

__all__ = ["Supervisor", "WorkerState", "read_worker_state"]

log = logging.getLogger("gateway.supervisor")

_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
#: a worker that lived this long was healthy: its slot's back-off starts over
_HEALTHY_AFTER_S = 60.0


@dataclass(slots=True)
class WorkerState:
    """What ``/readyz`` learns from the supervisor."""

    expected: int
    alive: int = 0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)


def read_worker_state(path: Path) -> WorkerState | None:
    """The supervisor's last published state, or None when it cannot be read."""
    try:
        raw = orjson.loads(path.read_bytes())
        return WorkerState(
            expected=int(raw["expected"]),
            alive=int(raw["alive"]),
            restarts=int(raw["restarts"]),
            pids=[int(p) for p in raw["pids"]],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(slots=True)
class _Slot:
    index: int
    process: SpawnProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts ``count`` workers made by ``spawn(index)`` and keeps them running until a signal.

    ``on_exit(pid)`` runs for every worker that ended (the metrics clean-up of multiprocess
    mode); ``state_path`` is where :class:`WorkerState` is published.
    """

    def __init__(
        self,
        count: int,
        spawn: Callable[[int], SpawnProcess],
        state_path: Path,
        on_exit: Callable[[int], None] = lambda _pid: None,
    ) -> None:
        self._spawn = spawn
        self._slots = [_Slot(i) for i in range(count)]
        self._state_path = state_path
        self._on_exit = on_exit
        self._state = WorkerState(expected=count)
        self._stopping = False

    def run(self) -> int:
        """Serve until SIGTERM / SIGINT; the highest exit code of the last workers."""
        for slot in self._slots:
            self._start(slot)
        self._publish()
        previous = {
            signum: signal.signal(signum, self._stop) for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            while not self._stopping:
                self._step()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self._drain()

    def _stop(self, _signum: int, _frame: object) -> None:
        self._stopping = True
        for slot in self._slots:
            process = slot.process
            if process is not None and process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def _step(self) -> None:
        running = [s.process for s in self._slots if s.process is not None]
        pending = [s.restart_at for s in self._slots if s.restart_at is not None]
        timeout = 0.5 if not pending else max(0.0, min(0.5, min(pending) - time.monotonic()))
        wait([p.sentinel for p in running], timeout=timeout)
        if self._stopping:
            return
        now = time.monotonic()
        changed = False
        for slot in self._slots:
            process = slot.process
            if process is not None and not process.is_alive():
                self._reap(slot, process, now)
                changed = True
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
                self._state.restarts += 1
                changed = True
        if changed:
            self._publish()

    def _reap(self, slot: _Slot, process: SpawnProcess, now: float) -> None:
        process.join()
        if process.pid is not None:
            self._on_exit(process.pid)
        lived = now - slot.started_at
        slot.failures = 1 if lived >= _HEALTHY_AFTER_S else slot.failures + 1
        delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (slot.failures - 1))
        slot.process = None
        slot.restart_at = now + delay
        log.error(
            "worker %d (pid %s) died with exit code %s after %.1f s; restarting it in %.1f s",
            slot.index,
            process.pid,
            process.exitcode,
            lived,
            delay,
        )

    def _start(self, slot: _Slot) -> None:
        process = self._spawn(slot.index)
        process.start()
        slot.process = process
        slot.started_at = time.monotonic()
        slot.restart_at = None
        if self._state.restarts or slot.failures:
            log.warning("worker %d restarted as pid %s", slot.index, process.pid)

    def _drain(self) -> int:
        code = 0
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            process.join()
            if process.pid is not None:
                self._on_exit(process.pid)
            code = max(code, process.exitcode or 0)
        return code

    def _publish(self) -> None:
        alive = [s.process.pid for s in self._slots if s.process is not None and s.process.pid]
        self._state.alive = len(alive)
        self._state.pids = alive
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(asdict(self._state)))
        tmp.replace(self._state_path)
