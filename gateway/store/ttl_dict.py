"""A dict whose entries vanish at their deadline: the TTLs of the in-memory stores."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["TTLDict"]


@dataclass(slots=True)
class _Entry:
    value: Any
    expires: float  # time.monotonic()


class TTLDict:
    """Entries expire at their deadline (checked lazily on read, swept on growth)."""

    def __init__(self) -> None:
        self._data: dict[str, _Entry] = {}
        self._next_sweep = 1024

    def get(self, key: str) -> Any:
        """The live value of ``key``, or None."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._data[key]
            return None
        return entry.value

    def set(self, key: str, value: Any, ttl_s: float) -> None:
        """Store ``value`` for ``ttl_s`` seconds."""
        self._data[key] = _Entry(value, time.monotonic() + ttl_s)
        if len(self._data) >= self._next_sweep:
            self._sweep()

    def pop(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""
        self._data.pop(key, None)

    def replace(self, key: str, value: Any) -> None:
        """Overwrite a live entry, keeping its deadline."""
        self._data[key].value = value

    def keep(self, key: str, value: Any, ttl_s: float) -> None:
        """Set ``key`` to live at least ``ttl_s`` from now (a later deadline stays)."""
        entry = self._data.get(key)
        if entry is not None and entry.expires > time.monotonic() + ttl_s:
            entry.value = value
        else:
            self.set(key, value, ttl_s)

    def expires(self, key: str) -> float:
        """The deadline (monotonic) of the live entry ``key``."""
        return self._data[key].expires

    def extend(self, key: str, until: float) -> None:
        """Keep the live entry ``key`` at least until ``until`` (monotonic)."""
        entry = self._data[key]
        entry.expires = max(entry.expires, until)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._data.items() if e.expires <= now]:
            del self._data[key]
        self._next_sweep = max(1024, len(self._data) * 2)
