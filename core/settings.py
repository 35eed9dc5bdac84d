"""One validated settings object, built at start-up from the environment.

Variables carry the `HUB_` prefix, except the two that deployment tooling
conventionally names on its own: `DATABASE_URL` and `REDIS_URL`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Values people paste from examples; a secret equal to one of these is refused.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "password", "dev", "test", "example", "xxx", "todo"}
)
MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore", populate_by_name=True)

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

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'hub.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once, on first use."""
    return Settings()
