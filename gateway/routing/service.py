"""The routing service: active rules behind one attribute, hot reload, learning from outcomes.

:class:`Router` is what the rest of the gateway talks to. ``decide`` is synchronous and pure
over two immutable objects held in attributes (the compiled rules and the stats snapshot); a
reload or a stats refresh builds a new object and swaps the attribute, so a request in flight
keeps the objects it started with and never sees half a change.

Background work, started and stopped by :meth:`Router.running` (or ``app.cleanup_ctx``):

- the rules file is polled every ``watch_interval_s``; a valid change swaps in, an invalid one
  keeps the old rules, logs every problem and sets :attr:`Router.last_reload_error`;
- the stats snapshot is refreshed from the store every ``refresh_interval_s``.

Outcome writes go through :class:`gateway.routing.learning.OutcomeFeed`: fire-and-forget, so
a slow or failing stats store never delays or fails a checkout (failures are counted in
:attr:`Router.counters`, the hook for metrics, next to the reload outcomes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gateway.metrics import (
    ROUTING_DECISIONS,
    ROUTING_DURATION,
    ROUTING_RULE_MATCHES,
    ROUTING_SCORE,
    RULES_INFO,
    RULES_LAST_RELOAD,
    RULES_RELOAD_OK,
    RULES_RELOADS,
)
from gateway.routing.check import adapterless_providers
from gateway.routing.compiled import CompiledRules, compile_rules
from gateway.routing.decision import RoutingDecision
from gateway.routing.eligibility import adapter_checks_of, adapter_exclusions
from gateway.routing.engine import decide
from gateway.routing.features import extract_features
from gateway.routing.learning import OutcomeFeed
from gateway.routing.rules import LoadedRules, RulesError, load_rules_file, load_rules_text
from gateway.routing.stats import StatsSnapshot, StatsStore
from gateway.settings import SettingsError
from providers.base import Capabilities

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.domain.models import CheckoutRequest
    from gateway.settings import Settings

__all__ = ["ReloadResult", "Router", "enabled_providers"]

log = logging.getLogger("gateway.routing")
_NONE: Mapping[str, str] = MappingProxyType({})


def enabled_providers(path: str | Path) -> list[str]:
    """The providers the rules file enables; :class:`SettingsError` when it is invalid.

    Also invalid here: enabling a provider the gateway has no adapter for.
    """
    try:
        loaded = _with_adapters(load_rules_file(path))
    except RulesError as exc:
        raise SettingsError(f"the routing rules are invalid:\n{exc}") from None
    return sorted(name for name, conf in loaded.rules.providers.items() if conf.enabled)


def _with_adapters(loaded: LoadedRules) -> LoadedRules:
    """``loaded``, or RulesError when it enables a provider no adapter serves."""
    from providers.registry import KNOWN_PROVIDERS

    problems = adapterless_providers(loaded, KNOWN_PROVIDERS)
    if problems:
        raise RulesError(loaded.source, problems)
    return loaded


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did. ``ok`` False: the file was refused and the old rules still route."""

    ok: bool
    changed: bool
    rules_version: str
    content_hash: str
    errors: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the reload endpoint."""
        return {
            "ok": self.ok,
            "changed": self.changed,
            "rulesVersion": self.rules_version,
            "contentHash": self.content_hash,
            "errors": list(self.errors),
        }


def _capabilities(adapter: Any) -> Capabilities:
    if isinstance(adapter, Capabilities):
        return adapter
    caps = adapter.capabilities
    assert isinstance(caps, Capabilities)
    return caps


def _observe_decision(decision: RoutingDecision) -> None:
    ranked = decision.ranked
    rule = decision.matched_rules[0] if decision.matched_rules else "default"
    ROUTING_DECISIONS.labels(ranked[0].provider if ranked else "none", rule).inc()
    for matched in decision.matched_rules:
        ROUTING_RULE_MATCHES.labels(matched).inc()
    for rank, candidate in enumerate(ranked, 1):
        ROUTING_SCORE.labels(candidate.provider, str(rank)).observe(candidate.score)


def _publish_rules(previous: CompiledRules | None, active: CompiledRules) -> None:
    """``gateway_rules_info``: 1 for the active version, 0 for the one it replaced."""
    if previous is not None:
        RULES_INFO.labels(previous.version, previous.content_hash[:12]).set(0)
    RULES_INFO.labels(active.version, active.content_hash[:12]).set(1)
    RULES_LAST_RELOAD.set_to_current_time()


class Router:
    """Routes checkouts with the active rules and learns from their outcomes.

    ``adapters`` maps provider name to its adapter (or just its :class:`Capabilities`): the
    router only ever ranks those; a configured provider without one is excluded with a reason.
    Construction loads the file and raises :class:`RulesError` when it is invalid.
    """

    def __init__(
        self,
        rules_path: str | Path,
        adapters: Mapping[str, Any],
        stats_store: StatsStore | None = None,
        *,
        watch_interval_s: float = 2.0,
        refresh_interval_s: float = 1.5,
        owns_stats_store: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(rules_path)
        self._caps = {name: _capabilities(a) for name, a in adapters.items()}
        self._checks = adapter_checks_of(adapters)
        self._active: CompiledRules = compile_rules(load_rules_file(self.path), self._caps)
        self._watch_s = watch_interval_s
        self._refresh_s = refresh_interval_s
        self._clock = clock
        self._reload_lock = asyncio.Lock()
        self._failed_hash: str | None = None
        self._file_missing = False
        self._listeners: list[Callable[[ReloadResult], None]] = []
        #: hook for metrics: reload_ok, reload_failed, stats_refresh_failed, stats_write_failed,
        #: stats_write_dropped, outcome_not_counted, decisions
        self.counters: Counter[str] = Counter()
        self._feed = OutcomeFeed(
            stats_store, owns_store=owns_stats_store, clock=clock, counters=self.counters
        )
        self.loaded_at = clock()
        self.last_reload_error: str | None = None
        self.last_reload_at: float | None = None
        _publish_rules(None, self._active)
        RULES_RELOAD_OK.set(1)

    @classmethod
    def from_settings(
        cls, settings: Settings, adapters: Mapping[str, Any], stats: StatsStore | None = None
    ) -> Router:
        """The router of a gateway, learning into ``stats`` (the coordination's statistics,
        :attr:`gateway.store.coordination.Coordination.stats`, which also closes them; None:
        this process's memory)."""
        return cls(
            settings.rules_path,
            adapters,
            stats,
            watch_interval_s=settings.rules_watch_interval_seconds,
        )

    # -- what the rest of the gateway reads ------------------------------------------------
    @property
    def rules(self) -> CompiledRules:
        """The active compiled rules (read once per use: a reload may swap them)."""
        return self._active

    @property
    def rules_version(self) -> str:
        """``version@hash8`` of the active rules: what every decision names."""
        return self._active.rules_version

    @property
    def content_hash(self) -> str:
        """SHA-256 of the active rules file's bytes."""
        return self._active.content_hash

    @property
    def stats(self) -> StatsSnapshot:
        """The current statistics snapshot."""
        return self._feed.snapshot

    @property
    def provider_names(self) -> frozenset[str]:
        """Providers the active rules may route to (enabled, with an adapter)."""
        return self._active.provider_names

    def status(self) -> dict[str, Any]:
        """Details for ``/readyz`` and the rules endpoint."""
        return {
            "rulesVersion": self.rules_version,
            "contentHash": self.content_hash,
            "loadedAt": self.loaded_at,
            "lastReloadAt": self.last_reload_at,
            "lastReloadError": self.last_reload_error,
            "statsAsOf": self._feed.snapshot.as_of or None,
        }

    def add_reload_listener(self, listener: Callable[[ReloadResult], None]) -> None:
        """Call ``listener`` after every reload attempt (metrics, audit logs)."""
        self._listeners.append(listener)

    # -- deciding -------------------------------------------------------------------------
    def decide(
        self,
        request: CheckoutRequest,
        merchant_id: str,
        *,
        unavailable: Mapping[str, str] = _NONE,
        decision_id: str | None = None,
        dry_run: bool = False,
        held_by: str | None = None,
    ) -> RoutingDecision:
        """Rank the providers for ``request``; ``unavailable`` maps provider -> reason;
        ``held_by``: the provider holding a ``next_in_series`` request's mandate (the only one
        it may go to).

        Providers whose adapter cannot take the request are excluded with the adapter's
        reason (:func:`gateway.routing.eligibility.adapter_exclusions`), a refusal that no
        retry changes, unlike ``unavailable``. A ``dry_run`` (the simulate endpoint) is left out
        of the decision metrics.
        """
        started = time.perf_counter()
        decision = decide(
            extract_features(request, merchant_id),
            self._active,
            self._feed.snapshot,
            unavailable,
            decision_id=decision_id or f"rd_{os.urandom(12).hex()}",
            refused=adapter_exclusions(self._checks, request),
            held_by=held_by,
        )
        if not dry_run:
            self.count(decision, time.perf_counter() - started)
        return decision

    def count(self, decision: RoutingDecision, seconds: float) -> None:
        """Count ``decision`` (taking ``seconds``) in the decision metrics: for a
        ``dry_run`` decision that was acted on after all."""
        self.counters["decisions"] += 1
        ROUTING_DURATION.observe(seconds)
        _observe_decision(decision)

    # -- learning -------------------------------------------------------------------------
    async def record_creation(
        self, provider: str, outcome: str, latency_ms: float, request: CheckoutRequest
    ) -> None:
        """Count one session-creation attempt (``"created"`` or ``ProviderError.outcome``);
        returns at once, the write runs in the background."""
        learning = self._active.learning
        self._feed.creation(
            provider,
            outcome,
            latency_ms,
            request.currency,
            request.billing_country,
            learning.half_life_seconds,
            method=request.paymentMethod,
            forgetting=self._active.forgetting,
        )

    async def record_payment(
        self,
        provider: str,
        success: bool,
        currency: str | None,
        country: str | None,
        method: str | None = None,
    ) -> None:
        """Count one payment outcome reported by a provider webhook (``method``: the session's
        payment method, for the per-method segments)."""
        self._feed.payment(
            provider,
            success,
            currency,
            country,
            self._active.learning.half_life_seconds,
            method=method,
            forgetting=self._active.forgetting,
        )

    async def flush(self) -> None:
        """Wait for the outcome writes in flight."""
        await self._feed.flush()

    async def refresh_stats(self) -> StatsSnapshot:
        """Load the shared counters into a new snapshot (the old one stays on failure)."""
        rules = self._active
        providers = sorted(p.name for p in rules.providers)
        return await self._feed.refresh(providers, rules.learning.half_life_seconds)

    # -- reloading ------------------------------------------------------------------------
    async def reload(self) -> ReloadResult:
        """Re-read the rules file; swap it in when valid, keep the old rules when not."""
        async with self._reload_lock:
            try:
                raw = await asyncio.to_thread(self.path.read_bytes)
            except OSError as exc:
                return self._refused(
                    None, [f"{self.path}: cannot read the rules file: {exc.strerror}"]
                )
            digest = hashlib.sha256(raw).hexdigest()
            if digest == self._active.content_hash:
                result = ReloadResult(True, False, self.rules_version, self.content_hash)
                self._recover()
                RULES_RELOADS.labels("unchanged").inc()
                return result
            try:
                compiled = await asyncio.to_thread(self._compile, raw)
            except RulesError as exc:
                return self._refused(digest, [p.format(exc.source) for p in exc.problems])
            previous = self._active.rules_version
            _publish_rules(self._active, compiled)
            self._active = compiled
            self.loaded_at = self.last_reload_at = self._clock()
            self._recover()
            self.counters["reload_ok"] += 1
            RULES_RELOADS.labels("success").inc()
            log.info(
                "routing rules reloaded",
                extra={"previous": previous, "rules_version": compiled.rules_version},
            )
            result = ReloadResult(True, True, compiled.rules_version, compiled.content_hash)
            self._notify(result)
            return result

    def _compile(self, raw: bytes) -> CompiledRules:
        loaded = _with_adapters(load_rules_text(raw, source=str(self.path)))
        return compile_rules(loaded, self._caps)

    def _recover(self) -> None:
        self.last_reload_error = None
        self._failed_hash = None
        RULES_RELOAD_OK.set(1)

    def _refused(self, digest: str | None, errors: list[str]) -> ReloadResult:
        self.counters["reload_failed"] += 1
        RULES_RELOADS.labels("error").inc()
        self.last_reload_at = self._clock()
        self.last_reload_error = "\n".join(errors)
        self._failed_hash = digest
        RULES_RELOAD_OK.set(0)
        for error in errors:
            log.error("routing rules refused, keeping %s: %s", self.rules_version, error)
        result = ReloadResult(False, False, self.rules_version, self.content_hash, tuple(errors))
        self._notify(result)
        return result

    def _notify(self, result: ReloadResult) -> None:
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:
                log.exception("routing reload listener failed")

    async def check_file(self) -> ReloadResult | None:
        """One watcher step: reload when the file's bytes differ from the active ones."""
        try:
            raw = await asyncio.to_thread(self.path.read_bytes)
        except OSError:
            if self._file_missing:
                return None
            self._file_missing = True  # report a vanished file once, keep routing
            return await self.reload()
        self._file_missing = False
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._active.content_hash and self.last_reload_error is not None:
            self._recover()  # the refused file was put back to the active rules
            return None
        if digest in (self._active.content_hash, self._failed_hash):
            return None
        return await self.reload()

    # -- background -----------------------------------------------------------------------
    async def _every(self, seconds: float, step: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception:
                log.exception("routing background step failed")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Router]:
        """Watch the rules file and refresh statistics until the block exits."""
        await self.refresh_stats()
        tasks = [
            asyncio.create_task(self._every(self._watch_s, self.check_file)),
            asyncio.create_task(self._every(self._refresh_s, self.refresh_stats)),
        ]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._feed.close()

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """``app.cleanup_ctx.append(router.cleanup_ctx)``: background work for the app's life."""
        async with self.running():
            yield
