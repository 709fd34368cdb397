"""Merchants and their notification webhooks, from a YAML file (``GATEWAY_MERCHANTS_PATH``).

::

    defaults:
      rate_limit: {per_second: 50, burst: 100}  # every merchant without its own (default: none)
    merchants:
      merchant-1:                              # the JWT ``sub`` of the merchant's application
        rate_limit: {per_second: 200, burst: 400}  # optional: this merchant's session API limit
        webhook:
          url: https://shop.example/hooks/payments
          secret_env: MERCHANT_1_WEBHOOK_SECRET  # or ``secret: ...`` inline (>= 24 characters)
          previous_secret_env: ...             # optional, during a rotation both sign
          events: [payment_session.created, payment_session.updated]   # default: all of
                                               # EVENT_TYPES (also refund.created,
                                               # refund.updated and
                                               # payment_session.authorization_expiring)
          enabled: true                        # default

A merchant without an entry (or with ``enabled: false``) gets no notifications. Rate limits:
:mod:`gateway.ratelimit`. URLs must be
``https`` (``http://localhost`` too in sandbox mode). Secrets never appear in logs or errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.ratelimit import RateLimit
from gateway.settings import SettingsError

__all__ = ["EVENT_TYPES", "MerchantDirectory", "MerchantWebhook", "load_merchants"]

EventType = Literal[
    "payment_session.created",
    "payment_session.updated",
    "payment_session.authorization_expiring",
    "refund.created",
    "refund.updated",
]
EVENT_TYPES: tuple[EventType, ...] = (
    "payment_session.created",
    "payment_session.updated",
    "payment_session.authorization_expiring",
    "refund.created",
    "refund.updated",
)
_MIN_SECRET = 24


class _WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=2048)
    secret: str | None = Field(None, min_length=_MIN_SECRET)
    secret_env: str | None = None
    previous_secret: str | None = Field(None, min_length=_MIN_SECRET)
    previous_secret_env: str | None = None
    events: list[EventType] = Field(default_factory=lambda: list(EVENT_TYPES))
    enabled: bool = True


class _RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)

    def limit(self) -> RateLimit:
        return RateLimit(self.per_second, self.burst)


class _MerchantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook: _WebhookConfig | None = None
    rate_limit: _RateLimitConfig | None = None


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_limit: _RateLimitConfig | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: _Defaults = Field(default_factory=_Defaults)
    merchants: dict[str, _MerchantConfig] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MerchantWebhook:
    """Where and how one merchant's notifications are delivered."""

    merchant_id: str
    url: str
    secrets: tuple[str, ...]
    events: frozenset[str]

    def __repr__(self) -> str:  # never print the secrets
        return f"MerchantWebhook({self.merchant_id!r}, {self.url!r}, events={sorted(self.events)})"


@dataclass(frozen=True, slots=True)
class MerchantDirectory:
    """Every configured merchant webhook and rate limit, by merchant id."""

    webhooks: Mapping[str, MerchantWebhook]
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    default_rate_limit: RateLimit | None = None

    def rate_limit_for(self, merchant_id: str) -> RateLimit | None:
        """The merchant's own limit, else the default one, else None (no limit)."""
        return self.rate_limits.get(merchant_id, self.default_rate_limit)

    def webhook_for(self, merchant_id: str, event_type: str) -> MerchantWebhook | None:
        """The webhook that wants ``event_type`` from ``merchant_id``, or None."""
        hook = self.webhooks.get(merchant_id)
        return hook if hook is not None and event_type in hook.events else None


def _secret(where: str, inline: str | None, env: str | None, *, required: bool) -> str | None:
    if inline is not None and env is not None:
        raise SettingsError(f"{where}: give the secret inline or through an env var, not both")
    if env is not None:
        value = os.environ.get(env, "")
        if len(value) < _MIN_SECRET:
            raise SettingsError(
                f"{where}: environment variable {env} must hold at least {_MIN_SECRET} characters"
            )
        return value
    if inline is None and required:
        raise SettingsError(f"{where}: a signing secret (secret or secret_env) is required")
    return inline


def _check_url(where: str, url: str, *, allow_http_localhost: bool) -> None:
    parts = urlsplit(url)
    local = (parts.hostname or "") in {"localhost", "127.0.0.1", "::1"}
    if parts.scheme == "https" and parts.netloc:
        return
    if parts.scheme == "http" and parts.netloc and local and allow_http_localhost:
        return
    raise SettingsError(f"{where}: url must be an absolute https URL")


def load_merchants(path: Path, *, allow_http_localhost: bool, required: bool) -> MerchantDirectory:
    """Read the merchants file. A missing file is an empty directory unless ``required``."""
    if not path.is_file():
        if required:
            raise SettingsError(f"GATEWAY_MERCHANTS_PATH: {path} does not exist")
        return MerchantDirectory({})
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        parsed = _File.model_validate(raw)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"{path}: {problems}") from None
    hooks: dict[str, MerchantWebhook] = {}
    limits = {
        merchant_id: merchant.rate_limit.limit()
        for merchant_id, merchant in parsed.merchants.items()
        if merchant.rate_limit is not None
    }
    default = parsed.defaults.rate_limit
    for merchant_id, merchant in parsed.merchants.items():
        conf = merchant.webhook
        if conf is None or not conf.enabled:
            continue
        where = f"{path}: merchants.{merchant_id}.webhook"
        _check_url(where, conf.url, allow_http_localhost=allow_http_localhost)
        current = _secret(where, conf.secret, conf.secret_env, required=True)
        previous = _secret(where, conf.previous_secret, conf.previous_secret_env, required=False)
        assert current is not None
        hooks[merchant_id] = MerchantWebhook(
            merchant_id=merchant_id,
            url=conf.url,
            secrets=(current,) if previous is None else (current, previous),
            events=frozenset(conf.events),
        )
    return MerchantDirectory(hooks, limits, default.limit() if default is not None else None)
