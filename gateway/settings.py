"""Every knob of the gateway, read from ``GATEWAY_*`` environment variables (and an optional
``.env`` file); precedence env > file > defaults. The README's configuration table lists them."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEV_JWT_SECRET",
    "PROVIDER_NAMES",
    "SANDBOX_SECRETS",
    "ProviderConfig",
    "Settings",
    "SettingsError",
]

PROVIDER_NAMES = ("stripe", "adyen", "paypal")

#: Used only in sandbox mode when no key is configured; start-up warns loudly.
DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me-0123456789"  # noqa: S105

#: Credentials the built-in sandbox accepts and signs webhooks with (sandbox mode only).
SANDBOX_SECRETS: dict[str, dict[str, str]] = {
    "stripe": {"api_key": "sk_test_sandbox", "webhook_secret": "whsec_sandbox"},
    "adyen": {
        "api_key": "adyen_test_sandbox_key",
        "merchant_account": "SandboxMerchantECOM",
        # 32 bytes, hex: Adyen HMAC keys are hex strings
        "hmac_key": "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
    },
    "paypal": {
        "client_id": "sandbox-client-id",
        "client_secret": "sandbox-client-secret",
        # PayPal webhook ids are alphanumeric (verify-webhook-signature: ^[a-zA-Z0-9]+$)
        "webhook_id": "WHSANDBOX0001",
    },
}


class SettingsError(ValueError):
    """A configuration that must stop start-up, with a message saying what to set."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """Resolved settings of one provider adapter."""

    name: str
    base_url: str
    api_key: str | None = None
    merchant_account: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    webhook_secret: str | None = None
    hmac_key: str | None = None
    webhook_id: str | None = None
    sandbox: bool = False


_DATABASE_HOST = re.compile(r"(\[[0-9A-Fa-f:.%\w]+\]|[^\[\]:/?#]*)(:([0-9]{1,5}))?")


def _database_url_problem(url: str) -> str | None:
    """What is wrong with a PostgreSQL URL (``postgresql://user:pw@host:port,host2/db``), in
    words that never quote it (it may hold a password); None when it is well-formed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        return "must start with postgresql:// or postgres://"
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    for host in netloc.split(",") if netloc else ():
        match = _DATABASE_HOST.fullmatch(host)
        if match is None or not 0 < int(match[3] or 5432) <= 65535:
            return "has a malformed host or port (host:port, ports 1 to 65535)"
    return None


def _redis_mode_problem(settings: Settings) -> str | None:
    """What is wrong with the Redis mode settings, in words that never quote the URL (it may
    hold a password) nor a password; None when they fit together."""
    if settings.redis_mode == "cluster":
        url = settings.redis_url
        if not url.startswith(("redis://", "rediss://")):
            return "redis_url must start with redis:// or rediss:// in cluster mode"
        path = urlsplit(url).path.strip("/")
        if path not in ("", "0"):
            return (
                "redis_url must name database 0 (or none) in cluster mode: "
                "a Redis Cluster has no other database"
            )
        if "db=" in urlsplit(url).query:
            return "redis_url must not choose a database (db=) in cluster mode"
        for item in settings.redis_cluster_nodes.split(","):
            host, sep, port = item.strip().rpartition(":")
            if item.strip() and (
                not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535
            ):
                return "redis_cluster_nodes must be host:port pairs separated by commas"
    if settings.redis_mode == "sentinel":
        if not settings.redis_sentinels.strip():
            return "redis_sentinels (host:port,host:port) is required in sentinel mode"
        if not settings.redis_sentinel_service.strip():
            return "redis_sentinel_service (the master's name) is required in sentinel mode"
        for item in settings.redis_sentinels.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                return "redis_sentinels must be host:port pairs separated by commas"
    return None


class Settings(BaseSettings):
    """Gateway configuration. Every field maps to ``GATEWAY_<FIELD_NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # a validation error must not echo the input: it holds secrets (the database URL's
        # password, the JWT secret)
        hide_input_in_errors=True,
    )

    env: Literal["sandbox", "production"] = "sandbox"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = Field(
        None, description="Base URL clients and providers reach the gateway at"
    )
    workers: int = Field(1, ge=1, le=64)
    log_level: str = "INFO"
    metrics_merchants: str = Field(
        "",
        description="Comma-separated merchant ids that may appear as a metric label "
        "(every other merchant is counted as 'other')",
    )

    store: Literal["memory", "redis", "postgres"] = "memory"
    coordination: Literal["memory", "redis"] | None = Field(
        None,
        description="Where circuits, routing statistics and rate limits live "
        "(default: redis with GATEWAY_STORE=redis, else memory)",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="standalone: the server; cluster: one seed node (database 0)",
    )
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    redis_cluster_nodes: str = Field(
        "",
        description="cluster mode: more seed nodes, comma-separated host:port (asked with the "
        "URL's credentials), so a gateway starts while the URL's node is down",
    )
    redis_sentinels: str = Field(
        "", description="sentinel mode: comma-separated host:port of the Sentinels"
    )
    redis_sentinel_service: str = Field("", description="sentinel mode: the master's name")
    redis_sentinel_password: SecretStr | None = Field(
        None, description="sentinel mode: the Sentinels' password (the data nodes' is in the URL)"
    )
    redis_wait_replicas: int | Literal["auto"] = Field(
        "auto",
        description="Replicas a create or lifecycle write must reach before it is answered "
        "(WAIT); auto: 1 when the primary has replicas (always behind Sentinel), else 0",
    )
    redis_wait_timeout_ms: int = Field(
        500, ge=1, le=10_000, description="How long a write waits for its replicas (then 503)"
    )
    redis_prefix: str = "gw:"
    redis_max_connections: int = Field(64, ge=1, le=10_000)
    redis_pool_timeout_seconds: float = Field(
        5.0, gt=0, description="How long a request waits for a free pooled connection"
    )
    redis_connect_timeout_seconds: float = Field(1.0, gt=0)
    redis_socket_timeout_seconds: float = Field(1.0, gt=0)
    redis_connect_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Further attempts to open a connection (commands are never re-sent)",
    )
    redis_warm_connections: int = Field(
        16, ge=0, description="Connections opened at start-up, before the server listens"
    )

    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/gateway"),
        description="PostgreSQL URL of the records (GATEWAY_STORE=postgres); may hold a password",
    )
    database_pool_min_size: int = Field(
        2, ge=0, le=1000, description="Connections each process opens at start and keeps"
    )
    database_pool_max_size: int = Field(20, ge=1, le=1000)
    database_connect_timeout_seconds: float = Field(2.0, gt=0)
    database_command_timeout_seconds: float = Field(
        5.0, gt=0, description="A statement that takes longer is cancelled (the request: 503)"
    )
    database_pool_timeout_seconds: float = Field(
        1.0,
        gt=0,
        description="How long a request waits for a pooled connection (then 503); a create "
        "finishing after its provider call waits up to the command timeout",
    )
    retention_interval_seconds: float = Field(
        60.0, gt=0, description="How often records past their retention are purged (postgres)"
    )
    retention_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Rows one purge statement deletes at most"
    )

    rules_path: Path = Path("routing_rules.yaml")
    rules_watch_interval_seconds: float = Field(2.0, gt=0)

    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_private_key_file: Path | None = Field(
        None, description="Only for `gateway token` with RS256/ES256"
    )
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_seconds: int = Field(30, ge=0, le=300)

    idempotency_ttl_seconds: int = Field(86_400, ge=60)
    idempotency_lease_seconds: int = Field(60, ge=5)
    order_reference_guard: bool = True

    provider_timeout_seconds: float = Field(5.0, gt=0)
    request_deadline_seconds: float = Field(15.0, gt=0)
    failover_on_rejection: bool = False
    circuit_failure_threshold: int = Field(5, ge=1)
    circuit_window_seconds: float = Field(30.0, gt=0)
    circuit_open_seconds: float = Field(30.0, gt=0)
    circuit_half_open_probes: int = Field(2, ge=1)
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    keepalive_timeout_seconds: float = Field(
        5.0, gt=0, description="An idle connection (no byte of a next request) is closed after"
    )
    request_header_timeout_seconds: float = Field(
        10.0, gt=0, description="Time from a request's first byte to the end of its headers"
    )
    request_body_timeout_seconds: float = Field(
        10.0, gt=0, description="Time from the end of a request's headers to the end of its body"
    )
    session_retention_seconds: int = Field(30 * 86_400, ge=3600)

    merchants_path: Path = Field(
        Path("merchants.yaml"), description="Merchants and their webhook (notification) settings"
    )
    webhook_dedup_ttl_seconds: int = Field(7 * 86_400, ge=60)
    expiry_sweep_interval_seconds: float = Field(5.0, gt=0)
    return_wait_seconds: float = Field(
        5.0, ge=0, le=30, description="How long the return page waits for the payment outcome"
    )
    return_page_rate_per_second: float = Field(
        100.0, gt=0, description="Return-page requests per second, for the whole gateway"
    )
    return_page_burst: int = Field(200, ge=1)
    return_page_max_waiting: int = Field(
        64, ge=0, description="Return pages of one process waiting for an outcome at once"
    )
    notification_max_attempts: int = Field(12, ge=1, le=100)
    notification_backoff_base_seconds: float = Field(5.0, gt=0)
    notification_backoff_max_seconds: float = Field(3600.0, gt=0)
    notification_timeout_seconds: float = Field(10.0, gt=0)
    notification_poll_interval_seconds: float = Field(1.0, gt=0)
    notification_lease_seconds: float = Field(60.0, gt=0)

    sandbox_embedded: bool = Field(
        True, description="Serve the built-in sandbox providers under /sandbox (sandbox mode)"
    )

    provider_stripe_base_url: str | None = None
    provider_stripe_api_key: SecretStr | None = None
    provider_stripe_webhook_secret: SecretStr | None = None

    provider_adyen_base_url: str | None = None
    provider_adyen_api_key: SecretStr | None = None
    provider_adyen_merchant_account: str | None = None
    provider_adyen_hmac_key: SecretStr | None = None

    provider_paypal_base_url: str | None = None
    provider_paypal_client_id: str | None = None
    provider_paypal_client_secret: SecretStr | None = None
    provider_paypal_webhook_id: str | None = None

    @model_validator(mode="after")
    def _deadline_covers_a_call(self) -> Settings:
        if self.request_deadline_seconds < self.provider_timeout_seconds:
            raise ValueError("request_deadline_seconds must be >= provider_timeout_seconds")
        if self.idempotency_lease_seconds < self.request_deadline_seconds:
            raise ValueError("idempotency_lease_seconds must be >= request_deadline_seconds")
        if self.database_pool_min_size > self.database_pool_max_size:
            raise ValueError("database_pool_min_size must be <= database_pool_max_size")
        problem = _database_url_problem(self.database_url.get_secret_value())
        if problem is not None:
            raise ValueError(f"database_url {problem}")
        problem = _redis_mode_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def coordination_backend(self) -> Literal["memory", "redis"]:
        """Where the coordination state lives: ``GATEWAY_COORDINATION``, else Redis when the
        records are in Redis (one server for both) and memory otherwise."""
        if self.coordination is not None:
            return self.coordination
        return "redis" if self.store == "redis" else "memory"

    @property
    def is_sandbox(self) -> bool:
        return self.env == "sandbox"

    @property
    def base_url(self) -> str:
        """Where clients, browsers and the sandbox reach this gateway."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def provider(self, name: str) -> ProviderConfig:
        """The resolved config of provider ``name``; raises SettingsError when incomplete."""

        def secret(field: str) -> str | None:
            value = getattr(self, f"provider_{name}_{field}", None)
            if isinstance(value, SecretStr):
                return value.get_secret_value() or None
            return value or None

        base_url = secret("base_url")
        if base_url is None:
            if not self.is_sandbox:
                raise SettingsError(
                    f"GATEWAY_PROVIDER_{name.upper()}_BASE_URL is required in production "
                    f"(provider {name!r} is enabled in the routing rules)"
                )
            defaults = SANDBOX_SECRETS[name]
            return ProviderConfig(
                name=name,
                base_url=f"{self.base_url}/sandbox/{name}",
                api_key=defaults.get("api_key"),
                merchant_account=defaults.get("merchant_account"),
                client_id=defaults.get("client_id"),
                client_secret=defaults.get("client_secret"),
                webhook_secret=defaults.get("webhook_secret"),
                hmac_key=defaults.get("hmac_key"),
                webhook_id=defaults.get("webhook_id"),
                sandbox=True,
            )
        config = ProviderConfig(
            name=name,
            base_url=base_url.rstrip("/"),
            api_key=secret("api_key"),
            merchant_account=secret("merchant_account"),
            client_id=secret("client_id"),
            client_secret=secret("client_secret"),
            webhook_secret=secret("webhook_secret"),
            hmac_key=secret("hmac_key"),
            webhook_id=secret("webhook_id"),
        )
        required = {
            "stripe": ("api_key", "webhook_secret"),
            "adyen": ("api_key", "merchant_account", "hmac_key"),
            "paypal": ("client_id", "client_secret", "webhook_id"),
        }[name]
        missing = [f for f in required if getattr(config, f) is None]
        if missing and not self.is_sandbox:
            names = ", ".join(f"GATEWAY_PROVIDER_{name.upper()}_{f.upper()}" for f in missing)
            raise SettingsError(f"provider {name!r} is enabled but {names} is not set")
        if missing:
            defaults = SANDBOX_SECRETS[name]
            filled: dict[str, Any] = {f: defaults.get(f) for f in missing}
            config = replace(config, **filled)
        return config

    def jwt_key_problem(self) -> str | None:
        """Why the JWT configuration cannot start, or None."""
        if self.jwt_secret is None and self.jwt_public_key_file is None and not self.is_sandbox:
            return (
                "production needs GATEWAY_JWT_SECRET (HS256) or GATEWAY_JWT_PUBLIC_KEY_FILE "
                "(RS256/ES256)"
            )
        if self.jwt_secret is not None and self.jwt_public_key_file is not None:
            return "set only one of GATEWAY_JWT_SECRET and GATEWAY_JWT_PUBLIC_KEY_FILE"
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            return "GATEWAY_JWT_SECRET must be at least 32 characters"
        if self.jwt_public_key_file is not None and not self.jwt_public_key_file.is_file():
            return f"GATEWAY_JWT_PUBLIC_KEY_FILE {self.jwt_public_key_file} does not exist"
        return None
