"""One validated settings object, built at start-up from the environment.

Variables carry the `HUB_` prefix, except the two that deployment tooling
conventionally names on its own: `DATABASE_URL` and `REDIS_URL`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.vault import KeyringInvalid, parse_keyring

# Values people paste from examples; a secret equal to one of these is refused.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "password", "dev", "test", "example", "xxx", "todo"}
)
MIN_SECRET_LENGTH = 32


class OAuthClientSettings(BaseModel):
    """The hub's registration with one provider (its OAuth app)."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None


class Settings(BaseSettings):
    # Errors never echo the input: it may be a secret (a vault key, the JWT secret).
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore", populate_by_name=True, hide_input_in_errors=True)

    data_dir: Path = Field(default=Path(".hub-data"), description="Where the embedded default keeps its files")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "HUB_DATABASE_URL"),
        description="SQLAlchemy async URL; unset means an SQLite file in data_dir",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "HUB_REDIS_URL"),
        description="Redis URL; unset means an embedded Redis server started by `hub serve`",
    )
    db_pool_size: int = 10
    sql_echo: bool = False

    # Identity
    jwt_secret: SecretStr | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256", "RS256", "ES256"]
    jwt_leeway_seconds: int = 30
    api_key_cache_seconds: float = 5.0

    # Edges
    max_body_bytes: int = 2 * 1024 * 1024
    idempotency_ttl_hours: int = Field(default=24, ge=24)
    idempotency_wait_seconds: float = 10.0
    batch_max_items: int = 1000
    demo_tenant: bool = True

    log_level: str = "INFO"
    log_json: bool = True

    # Rate limits per tenant (overridable per tenant: `hub tenants limits`)
    rate_limit_user_per_minute: int = Field(default=600, ge=1)
    rate_limit_integration_per_minute: int = Field(default=1200, ge=1)
    rate_limit_burst_multiplier: float = Field(default=2.0, ge=1.0)
    redis_timeout_seconds: float = Field(default=0.25, gt=0)

    # Worker (arq on Redis): jobs, the outbox relay and webhook delivery
    worker_in_process: bool | None = Field(
        default=None,
        description="Run the worker inside `hub serve`; unset means yes on the embedded default (no REDIS_URL)",
    )
    worker_namespace: str = Field(
        default="hub",
        pattern=r"^[A-Za-z0-9_.:\-]{1,64}$",
        description="Prefix of the worker's Redis keys (arq queue, outbox nudges, heartbeats); one per deployment",
    )
    worker_max_jobs: int = Field(default=10, ge=1)
    worker_poll_seconds: float = Field(default=0.5, gt=0, description="How often the arq queue is polled")
    worker_job_timeout_seconds: float = Field(default=600.0, gt=0)
    worker_job_max_tries: int = Field(default=5, ge=1)
    worker_job_retry_seconds: float = Field(default=5.0, ge=0, description="First retry delay of a job; doubles per try")
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0, description="Heartbeat period; the key lives 3 periods")
    sync_slice_seconds: float = Field(
        default=300.0, gt=0, description="A sync job works this long, then queues the rest of the sync as a new job"
    )
    sync_pause_seconds: float = Field(
        default=60.0, gt=0, description="First pause of a sync whose provider is away (no Retry-After); doubles per pause"
    )
    sync_max_pause_seconds: float = Field(
        default=3600.0, gt=0, description="Longest pause of a sync whose provider is away without a Retry-After"
    )
    sync_max_retry_after_seconds: float = Field(
        default=86400.0, gt=0, description="Longest pause a provider's Retry-After can ask of a sync (a daily quota's reset)"
    )
    sync_max_pauses: int = Field(default=12, ge=0, description="Pauses in a row, without a page stored, before a sync fails")
    worker_metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="A separate worker serves /metrics here (unset: not served)"
    )
    worker_metrics_host: str = "127.0.0.1"
    outbox_sweep_seconds: float = Field(default=1.0, gt=0, description="Unpublished outbox rows are looked for this often")
    outbox_linger_seconds: float = Field(
        default=0.05, ge=0, description="A woken relay waits this long, so the events of many commits go in one pass"
    )
    outbox_batch_size: int = Field(default=500, ge=1, le=5000)

    # Webhooks
    webhooks_allow_private: bool = Field(
        default=False, description="Allow endpoint URLs on private, loopback or link-local addresses (development only)"
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Seconds between attempts; a delivery makes len(schedule) + 1 attempts (default: 10 over ~24 h).
    webhook_retry_schedule: Annotated[list[float], NoDecode] = [5, 30, 120, 600, 1800, 3600, 7200, 14400, 57600]
    webhook_retry_jitter: float = Field(default=0.2, ge=0, le=1, description="Each delay varies by up to this fraction")
    webhook_retry_after_max_seconds: float = Field(default=86400.0, ge=0)
    webhook_secret_overlap_seconds: float = Field(default=86400.0, ge=0, description="The old secret keeps signing this long")
    webhook_disable_after_seconds: float = Field(default=5 * 86400.0, gt=0, description="Failing this long disables an endpoint")
    webhook_endpoint_concurrency: int = Field(default=8, ge=1, description="Requests in flight per endpoint and worker")
    webhook_max_in_flight: int = Field(default=256, ge=1, description="Requests in flight per worker")
    webhook_lease_seconds: float = Field(default=60.0, gt=0, description="A claimed delivery is another worker's after this")
    webhook_response_excerpt_bytes: int = Field(default=1024, ge=0, le=65536)
    # History the worker deletes (core.retention); 0 keeps it for ever.
    delivery_retention_days: float = Field(
        default=30.0, ge=0, description="Finished deliveries (and their attempts) are deleted this long after they began"
    )
    outbox_retention_days: float = Field(
        default=7.0, ge=0, description="Published events left with no delivery are deleted this long after they were written"
    )

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(part) for part in value.replace(" ", "").split(",") if part]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: list[float]) -> list[float]:
        if len(value) > 30 or any(not 0 <= delay <= 7 * 86400 for delay in value):
            raise ValueError("at most 30 delays, each between 0 and 604800 seconds")
        return value

    # Integrations
    connectors: Annotated[list[str] | None, NoDecode] = Field(
        default=None, description="HUB_CONNECTORS: connector keys to enable (comma-separated); unset enables all"
    )
    disabled_connectors: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="HUB_DISABLED_CONNECTORS: connector keys to disable (comma-separated)"
    )
    vault_keys: SecretStr | None = Field(
        default=None,
        description="HUB_VAULT_KEYS: `kid:base64key,...` (32-byte keys, first = active); "
        "unset means a generated key file in data_dir",
    )
    oauth_clients: dict[str, OAuthClientSettings] = Field(
        default_factory=dict,
        description='HUB_OAUTH_CLIENTS: JSON {"<connector key>": {"client_id": ..., "client_secret": ...}}',
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="The hub's external base URL; OAuth redirects to <public_url>/api/v1/oauth/callback",
    )
    oauth_state_ttl_seconds: int = Field(default=600, ge=60, le=3600)
    connector_timeout_seconds: float = Field(default=60.0, gt=0)
    connector_retry_attempts: int = Field(default=4, ge=1, le=10)
    breaker_fail_max: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=60.0, gt=0)

    @field_validator("connectors", "disabled_connectors", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("vault_keys")
    @classmethod
    def _refuse_weak_vault_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            parse_keyring(value.get_secret_value())
        except KeyringInvalid as exc:
            raise ValueError(f"HUB_VAULT_KEYS: {exc}") from None
        return value

    @property
    def vault_key_file(self) -> Path:
        return self.data_dir / "vault.keys"

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _refuse_placeholder_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if raw.strip().lower() in PLACEHOLDER_SECRETS or len(raw) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"HUB_JWT_SECRET must be a random value of at least {MIN_SECRET_LENGTH} characters"
            )
        return value

    @model_validator(mode="after")
    def _jwks_one_source(self) -> Settings:
        if self.jwks_url and self.jwks_file:
            raise ValueError("set HUB_JWKS_URL or HUB_JWKS_FILE, not both")
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_request(self) -> Settings:
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError("HUB_WEBHOOK_LEASE_SECONDS must exceed HUB_WEBHOOK_TIMEOUT_SECONDS")
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'hub.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def effective_worker_in_process(self) -> bool:
        """Whether `hub serve` runs the worker itself: by default only on the embedded Redis."""
        return self.redis_url is None if self.worker_in_process is None else self.worker_in_process


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once, on first use."""
    return Settings()
