"""What the running app holds: built once in the lifespan, reached through `request.app.state.hub`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from connectors.host import ConnectorHost
from connectors.registry import ConnectorRegistry
from core.db import Database
from core.identity import Principal
from core.models import Tenant
from core.ratelimit import RateLimiter
from core.settings import Settings
from core.tokens import JWTVerifier
from core.vault import Vault
from hub.metrics import HubMetrics

if TYPE_CHECKING:
    from hub.group_commit import UpsertCommitter


class TTLCache:
    """A small time-bounded cache for hot lookups (API keys, tenants)."""

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._items: dict[str, tuple[float, object]] = {}

    def get(self, key: str) -> object | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            self._items.pop(key, None)
            return None
        return value

    def put(self, key: str, value: object) -> None:
        if len(self._items) >= self.max_entries:
            self._items.clear()
        self._items[key] = (time.monotonic() + self.ttl, value)

    def clear(self) -> None:
        self._items.clear()


@dataclass
class HubState:
    settings: Settings
    db: Database
    jwt: JWTVerifier
    redis: Redis
    limiter: RateLimiter
    metrics: HubMetrics
    # Integrations: the connectors this process offers, the credential vault, and the
    # factory of live connectors (shared httpx client, Redis circuit breakers).
    connectors: ConnectorRegistry
    vault: Vault
    connector_host: ConnectorHost
    # API keys are re-read at most every `api_key_cache_seconds`; a revocation
    # through this process clears the cache at once.
    principals: TTLCache = field(default_factory=lambda: TTLCache(5.0))
    # Tenants (existence and limit overrides), re-read every 30 s.
    tenants: TTLCache = field(default_factory=lambda: TTLCache(30.0))

    # The CRM upsert's group committer, set by the app factory (it needs this state).
    upserts: UpsertCommitter | None = None
    # Nudges the outbox relay after commits (`hub.outbox_nudge.notify_outbox`), and the
    # in-process worker (`worker.runtime.WorkerRuntime`) when this process runs one.
    outbox_nudge: Any = None
    worker: Any = None

    def cached_principal(self, raw_key: str) -> Principal | None:
        value = self.principals.get(raw_key)
        return value if isinstance(value, Principal) else None

    async def tenant_limits(self, tenant_id: str) -> dict[str, Any] | None:
        """The tenant's limit overrides; None if the tenant does not exist."""
        cached = self.tenants.get(tenant_id)
        if isinstance(cached, dict):
            return cached
        async with self.db.read(tenant_id) as session:
            tenant = await session.get(Tenant, tenant_id)
        if tenant is None:
            return None
        limits = dict(tenant.limits or {})
        self.tenants.put(tenant_id, limits)
        return limits
