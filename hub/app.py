"""The app factory. Everything the app holds is built in its lifespan, not at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from redis.asyncio import Redis
from starlette.types import Scope

from connectors.host import connector_host_for, pooled_client
from connectors.locks import RedisLock
from connectors.registry import ConnectorRegistry
from connectors.sdk import RedisBreakerStorage
from core import apikeys, tenants
from core.changes import ChangeContext, mutation
from core.db import Database
from core.embedded_redis import EmbeddedRedis
from core.identity import Principal
from core.jobs import Keys
from core.migrate import upgrade_to_head
from core.ratelimit import RateLimiter
from core.roles import Role
from core.settings import Settings, get_settings
from core.tokens import JWTVerifier
from core.vault import Vault, load_keyring
from hub.group_commit import UpsertCommitter
from hub.metrics import HubMetrics
from hub.middleware import EdgeMiddleware
from hub.outbox_nudge import OutboxNudge
from hub.problems import EXCEPTION_HANDLERS, MEDIA_TYPE, Problem
from hub.routers import (
    api_keys,
    audit,
    connections,
    connectors,
    deals,
    health,
    identity,
    oauth,
    runs,
    webhooks,
)
from hub.state import HubState, TTLCache

log = logging.getLogger("hub")
request_log = logging.getLogger("hub.request")
API_VERSION = "1.0.0"
DEMO_TENANT = "demo"


async def bootstrap_demo_tenant(db: Database) -> str | None:
    """On an empty hub, create the demo tenant and return its ADMIN key (shown once)."""
    if await tenants.list_all(db):
        return None
    tenant = await tenants.create(db, DEMO_TENANT)
    system = Principal(tenant.id, "system", "bootstrap", frozenset({Role.ADMIN}))
    async with mutation(db, ChangeContext(system)) as m:
        issued = await apikeys.issue(m, name="demo admin", roles={Role.ADMIN})
    return issued.plaintext


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, openapi_version="3.1.0"
    )
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    # Errors are problem+json only; FastAPI would also advertise application/json, and
    # adds a 422 `HTTPValidationError` of its own to routes with parameters.
    problem_content = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                if status[0] in "45":
                    content = response.get("content", {})
                    response["content"] = {MEDIA_TYPE: content[MEDIA_TYPE]} if MEDIA_TYPE in content else dict(problem_content)
    app.openapi_schema = schema
    return schema


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    # Unmatched paths share one label: raw paths would let callers mint label values.
    return getattr(route, "path", None) or "unmatched"


# Any other method token (a server may pass one through) shares one label, as unmatched paths do.
_METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _on_request(scope: Scope, status: int, seconds: float) -> None:
    app = scope.get("app")
    state: HubState | None = getattr(getattr(app, "state", None), "hub", None)
    route = _route_label(scope)
    if state is not None:
        method = scope["method"] if scope["method"] in _METHOD_LABELS else "OTHER"
        state.metrics.observe_request(method, route, status, seconds)
    request_state = scope.get("state", {})
    principal = request_state.get("principal")
    request_log.info(
        "request",
        extra={
            "request_id": request_state.get("request_id"),
            "tenant_id": getattr(principal, "tenant_id", None),
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        },
    )


def _vault(settings: Settings) -> Vault:
    configured = settings.vault_keys.get_secret_value() if settings.vault_keys else None
    if configured is None and not settings.is_sqlite:
        log.warning(
            "HUB_VAULT_KEYS is not set: credentials are sealed with a key file in %s, which every hub "
            "process must share; set HUB_VAULT_KEYS in production",
            settings.data_dir,
        )
    return Vault(load_keyring(configured, settings.vault_key_file))


def create_app(settings: Settings | None = None, *, connector_registry: ConnectorRegistry | None = None) -> FastAPI:
    """The hub's ASGI app.

    :param connector_registry: the connectors to offer; by default the built-ins and the
        installed plugins, filtered by HUB_CONNECTORS / HUB_DISABLED_CONNECTORS (tests pass
        their own, without entry points).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        embedded_redis = None
        redis_url = settings.redis_url
        if redis_url is None:
            embedded_redis = EmbeddedRedis(settings.data_dir / "redis")
            redis_url = embedded_redis.start()
            log.info("embedded Redis started", extra={"port": embedded_redis.port})
        await upgrade_to_head(settings.effective_database_url)
        db = Database(settings.effective_database_url, pool_size=settings.db_pool_size, echo=settings.sql_echo)
        redis = Redis.from_url(
            redis_url,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
        metrics = HubMetrics()
        registry = connector_registry or ConnectorRegistry(
            allow=settings.connectors, block=settings.disabled_connectors
        )
        registry.load()
        http_client = pooled_client()
        connector_host = connector_host_for(settings, http_client, RedisBreakerStorage(redis), refresh_lock=RedisLock(redis))
        app.state.hub = HubState(
            settings=settings,
            db=db,
            jwt=JWTVerifier(settings),
            redis=redis,
            limiter=RateLimiter(redis, on_fail_open=metrics.rate_limit_fail_open.inc),
            metrics=metrics,
            connectors=registry,
            vault=_vault(settings),
            connector_host=connector_host,
            principals=TTLCache(settings.api_key_cache_seconds),
        )
        app.state.hub.upserts = UpsertCommitter(app.state.hub)
        worker = None
        if settings.effective_worker_in_process:
            # The embedded default runs the worker here (production runs `hub worker`).
            from worker.runtime import WorkerRuntime

            worker = WorkerRuntime(
                settings, redis_url=redis_url, db=db, vault=app.state.hub.vault, registry=metrics.registry,
                connectors=registry, connector_host=connector_host,
            )  # fmt: skip
            await worker.start()
        app.state.hub.worker = worker
        app.state.hub.outbox_nudge = OutboxNudge(
            redis, Keys(settings.worker_namespace), local=worker.wake if worker is not None else None
        )
        if settings.demo_tenant:
            key = await bootstrap_demo_tenant(db)
            if key is not None:
                # Printed, never logged: this is the only time the key is ever shown.
                print(
                    f"\nCreated tenant '{DEMO_TENANT}'. Its ADMIN API key, shown once:\n\n    HUB_API_KEY={key}\n",
                    flush=True,
                )
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await app.state.hub.outbox_nudge.close()
            await http_client.aclose()
            await redis.aclose()
            await db.dispose()
            if embedded_redis is not None:
                embedded_redis.stop()

    app = FastAPI(
        title="Deal hub",
        version=API_VERSION,
        description="The integration layer between a deal team's platform and its CRMs, data rooms and enrichment providers.",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        # The hub has its own metrics and logs; FastAPI's OpenTelemetry bridge cost a
        # look at the environment per request even with no provider configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    for module in (health, identity, deals, audit, api_keys, connectors, connections, oauth, webhooks, runs):
        app.include_router(module.router)
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes, on_request=_on_request)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
