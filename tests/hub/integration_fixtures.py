"""Fixtures and helpers of the integration tests (connections, OAuth, actions), imported
explicitly by those modules. Providers are mocked with respx, shaped like the real
Salesforce samples in ../shared/provider-samples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from sqlalchemy import select

from connectors.oauth import OAuthClient
from connectors.sdk import RetryPolicy
from core.db import Database
from core.models import AuditEvent, OutboxEvent
from core.roles import Role
from tests.conftest import TenantHandle

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "provider-samples"
SF_TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"
SF_AUTHORIZE_URL = "https://login.salesforce.com/services/oauth2/authorize"
SF_CLIENT = OAuthClient("3MVG9sf-test-client-id", "sf-client-secret-7f3a9c1e5b2d4e6f")


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


SF_TOKEN = sample("salesforce_oauth_token_success.json")  # no refresh_token, no expires_in, like Salesforce
SF_INSTANCE = SF_TOKEN["instance_url"]
SF_API = f"{SF_INSTANCE}/services/data/v62.0"
SF_REFRESH_TOKEN = "5Aep861TSESvWeug_xvFHRBTTbf_REFRESH_TOKEN_9x2k"
SF_REFRESHED_ACCESS = "00Dx0000000BV7z!AR8AQ.REFRESHED.ACCESS.TOKEN.ae81f"


@pytest.fixture
def host(app: Any) -> Any:
    return app.state.hub.connector_host


@pytest.fixture(autouse=True)
def fast_provider_calls(host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without waiting, so failure tests stay fast."""

    async def no_sleep(_seconds: float) -> None:
        return None

    monkeypatch.setattr(host, "sleep", no_sleep)
    monkeypatch.setattr(host, "retry", RetryPolicy(max_attempts=2, base_delay=0.0))


@pytest.fixture
def salesforce_client(host: Any, monkeypatch: pytest.MonkeyPatch) -> OAuthClient:
    """The hub's Salesforce connected app (HUB_OAUTH_CLIENTS in production)."""
    monkeypatch.setattr(host, "oauth_clients", {**host.oauth_clients, "salesforce": SF_CLIENT})
    return SF_CLIENT


@pytest.fixture
def provider() -> Iterator[respx.MockRouter]:
    """Every outbound call is mocked; anything unmocked fails the request (never the network)."""
    with respx.mock(assert_all_called=False) as router:
        yield router


async def create_connection(
    client: httpx.AsyncClient, tenant: TenantHandle, connector_key: str, *, name: str | None = None, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = {"connector_key": connector_key, "name": name or f"{connector_key} connection", "config": config or {}}
    r = await client.post("/api/v1/connections", json=body, headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 201, r.text
    return r.json()


async def outbox(db: Database, tenant_id: str, event_type: str | None = None) -> list[OutboxEvent]:
    async with db.read(tenant_id) as session:
        stmt = select(OutboxEvent).order_by(OutboxEvent.created_at, OutboxEvent.id)
        if event_type is not None:
            stmt = stmt.where(OutboxEvent.event_type == event_type)
        return list((await session.execute(stmt)).scalars())


async def audit_trail(db: Database, tenant_id: str, event_type: str | None = None) -> list[AuditEvent]:
    async with db.read(tenant_id) as session:
        stmt = select(AuditEvent).order_by(AuditEvent.seq)
        if event_type is not None:
            stmt = stmt.where(AuditEvent.event_type == event_type)
        return list((await session.execute(stmt)).scalars())


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def form_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


async def authorize_salesforce(
    client: httpx.AsyncClient, tenant: TenantHandle, provider: respx.MockRouter, *, refresh_token: str = SF_REFRESH_TOKEN
) -> dict[str, Any]:
    """Create a Salesforce connection and run the whole authorization; the token endpoint
    answers the sample token (plus a refresh token)."""
    connection = await create_connection(client, tenant, "salesforce", config={"environment": "production"})
    r = await client.post(f"/api/v1/connections/{connection['id']}/oauth/start", headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 200, r.text
    params = query_of(r.json()["authorization_url"])
    # Named: a test replaces it by defining a route of the same name.
    provider.post(SF_TOKEN_URL, name="sf_token").respond(200, json={**SF_TOKEN, "refresh_token": refresh_token})
    callback = await client.get("/api/v1/oauth/callback", params={"code": "aPrxsmIEeqM9PiQroGEWx1UiMQ", "state": params["state"]})
    assert callback.status_code == 200, callback.text
    assert callback.json()["status"] == "CONNECTED"
    return connection

