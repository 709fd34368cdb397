"""Circuit breakers in this process's memory (:class:`~gateway.store.coordination.
CircuitStore`): for one gateway process (``GATEWAY_COORDINATION=memory``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.store.coordination import CircuitState
from gateway.store.keys import circuit_ttl_s
from gateway.store.ttl_dict import TTLDict

__all__ = ["MemoryCircuits"]


@dataclass(slots=True)
class _Circuit:
    """Stored circuit: ``open`` reads as half-open once ``open_until`` has passed."""

    is_open: bool = False
    open_until: float = 0.0
    failures: int = 0
    window: list[float] = field(default_factory=list)  # failure timestamps (closed)
    probes: list[float] = field(default_factory=list)  # probe timestamps (half-open)

    def view(self, now: float) -> CircuitState:
        if not self.is_open:
            return CircuitState("closed", self.failures)
        state = "open" if now < self.open_until else "half_open"
        return CircuitState(state, self.failures, self.open_until)


class MemoryCircuits:
    """Every provider's circuit in a dict; idle circuits are forgotten like Redis forgets
    them (:func:`~gateway.store.keys.circuit_ttl_s`). Operations never await: each is atomic."""

    name = "memory"

    def __init__(self) -> None:
        self._circuits = TTLDict()

    async def circuit_states(self, providers: list[str], *, now: float) -> dict[str, CircuitState]:
        states: dict[str, CircuitState] = {}
        for provider in providers:
            circuit: _Circuit | None = self._circuits.get(provider)
            states[provider] = circuit.view(now) if circuit else CircuitState("closed")
        return states

    async def circuit_failure(
        self, provider: str, *, now: float, window_s: float, threshold: int, open_s: float
    ) -> CircuitState:
        circuit: _Circuit = self._circuits.get(provider) or _Circuit()
        if circuit.is_open:
            if now < circuit.open_until:
                return circuit.view(now)  # already open: a late failure changes nothing
            circuit.open_until = now + open_s  # a failure while half-open reopens at once
            circuit.failures += 1
            circuit.probes.clear()
        else:
            cutoff = now - window_s
            circuit.window = [t for t in circuit.window if t > cutoff]
            circuit.window.append(now)
            circuit.failures = len(circuit.window)
            if circuit.failures >= threshold:
                circuit.is_open = True
                circuit.open_until = now + open_s
                circuit.window.clear()
                circuit.probes.clear()
        open_until = circuit.open_until if circuit.is_open else None
        ttl = circuit_ttl_s(now=now, window_s=window_s, open_until=open_until)
        self._circuits.set(provider, circuit, ttl)
        return circuit.view(now)

    async def circuit_success(self, provider: str, *, now: float) -> CircuitState:
        circuit: _Circuit | None = self._circuits.get(provider)
        if circuit is None:
            return CircuitState("closed")
        if circuit.is_open and now >= circuit.open_until:
            self._circuits.pop(provider)
            return CircuitState("closed")
        return circuit.view(now)

    async def circuit_acquire_probe(
        self, provider: str, *, now: float, max_probes: int, probe_ttl_s: float
    ) -> bool:
        circuit: _Circuit | None = self._circuits.get(provider)
        if circuit is None or not circuit.is_open:
            return True
        if now < circuit.open_until:
            return False
        cutoff = now - probe_ttl_s
        circuit.probes = [t for t in circuit.probes if t > cutoff]
        if len(circuit.probes) >= max_probes:
            return False
        circuit.probes.append(now)
        return True
