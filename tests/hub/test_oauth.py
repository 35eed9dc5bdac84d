"""OAuth: the authorization-code flow with PKCE and a signed, single-use, expiring state;
refresh on 401 with the rotated token written back sealed; a refused refresh marking the
connection AUTH_ERROR with an `integration.auth_failed` event; client credentials. The
token endpoint answers like Salesforce's (shared/provider-samples)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from core import credentials as credential_store
from core import oauth_states
from core.changes import ChangeContext, mutation
from core.identity import Principal
from core.models import OAuthState, utcnow
from core.roles import Role
from core.tenants import set_limits
from core.vault import Vault, generate_key_line, parse_keyring
from tests.hub.integration_connectors import TOKEN_BASE, TOKEN_URL
from tests.hub.integration_fixtures import (  # noqa: F401 - fixtures
    SF_API,
    SF_AUTHORIZE_URL,
    SF_CLIENT,
    SF_REFRESH_TOKEN,
    SF_REFRESHED_ACCESS,
    SF_TOKEN,
    SF_TOKEN_URL,
    audit_trail,
    authorize_salesforce,
    create_connection,
    fast_provider_calls,
    form_of,
    host,
    outbox,
    provider,
    query_of,
    salesforce_client,
    sample,
)
from tests.hub.test_auth import assert_problem

UPSERT_URL = f"{SF_API}/sobjects/Opportunity/Hub_Deal_Id__c/D-42"
UPSERT = {"external_id_field": "Hub_Deal_Id__c", "external_id": "D-42", "fields": {"Name": "Acme Series B"}}
CODE = "aPrxsmIEeqM9PiQroGEWx1UiMQ"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


async def _start(client, tenant, connection_id: str) -> dict[str, str]:
    r = await client.post(f"/api/v1/connections/{connection_id}/oauth/start", headers=tenant.headers())
    assert r.status_code == 200, r.text
    return query_of(r.json()["authorization_url"])


async def test_start_then_callback_with_pkce_connects(client, tenant, provider, salesforce_client, db, app):
    connection = await create_connection(client, tenant, "salesforce")
    r = await client.post(f"/api/v1/connections/{connection['id']}/oauth/start", headers=tenant.headers())
    assert r.status_code == 200, r.text
    url = r.json()["authorization_url"]
    assert url.startswith(SF_AUTHORIZE_URL + "?")
    params = query_of(url)
    assert params["response_type"] == "code"
    assert params["client_id"] == SF_CLIENT.client_id
    assert params["redirect_uri"] == "http://127.0.0.1:8000/api/v1/oauth/callback"
    assert params["scope"] == "api refresh_token"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert SF_CLIENT.client_secret not in url

    exchanged: list[dict[str, str]] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        form = form_of(request)
        exchanged.append(form)
        # The verifier the hub kept matches the challenge it sent: PKCE proven end to end.
        assert s256(form["code_verifier"]) == params["code_challenge"]
        return httpx.Response(200, json={**SF_TOKEN, "refresh_token": SF_REFRESH_TOKEN})

    provider.post(SF_TOKEN_URL).mock(side_effect=token_endpoint)
    callback = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": params["state"]})
    assert callback.status_code == 200, callback.text
    assert callback.json() == {"connection_id": connection["id"], "connector_key": "salesforce", "status": "CONNECTED"}
    (form,) = exchanged
    assert form["grant_type"] == "authorization_code" and form["code"] == CODE
    assert form["redirect_uri"] == params["redirect_uri"]
    assert (form["client_id"], form["client_secret"]) == (SF_CLIENT.client_id, SF_CLIENT.client_secret)

    shown = (await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers())).json()
    assert shown["status"] == "CONNECTED" and shown["last_error"] is None
    assert shown["credentials"]["status"] == "valid"
    async with db.read(tenant.id) as session:
        stored = await credential_store.load(session, app.state.hub.vault, connection["id"])
    assert stored is not None and stored.token is not None
    assert stored.token["access_token"] == SF_TOKEN["access_token"]
    assert stored.token["refresh_token"] == SF_REFRESH_TOKEN
    connected = await outbox(db, tenant.id, "integration.connected")
    assert [(e.resource_id, e.payload["previous_status"]) for e in connected] == [(connection["id"], "AUTH_ERROR")]
    (event,) = await audit_trail(db, tenant.id, "integration.connected")
    assert event.actor_kind == "api_key"  # the admin who started it, not "anonymous"
    assert SF_TOKEN["access_token"] not in json.dumps(event.changes)


async def test_the_state_works_once(client, tenant, provider, salesforce_client):
    connection = await create_connection(client, tenant, "salesforce")
    params = await _start(client, tenant, connection["id"])
    route = provider.post(SF_TOKEN_URL).respond(200, json=SF_TOKEN)
    first = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": params["state"]})
    assert first.status_code == 200
    replayed = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": params["state"]})
    assert_problem(replayed, 400, "OAUTH_STATE_INVALID")
    assert route.call_count == 1


async def test_concurrent_callbacks_with_one_state_exchange_once(client, tenant, provider, salesforce_client):
    connection = await create_connection(client, tenant, "salesforce")
    params = await _start(client, tenant, connection["id"])
    route = provider.post(SF_TOKEN_URL).respond(200, json=SF_TOKEN)
    answers = await asyncio.gather(
        *(client.get("/api/v1/oauth/callback", params={"code": CODE, "state": params["state"]}) for _ in range(4))
    )
    assert sorted(r.status_code for r in answers) == [200, 400, 400, 400]
    assert route.call_count == 1


async def test_an_expired_state_is_refused(client, tenant, provider, salesforce_client, app, db):
    connection = await create_connection(client, tenant, "salesforce")
    route = provider.post(SF_TOKEN_URL).respond(200, json=SF_TOKEN)
    # Expired by its own signed expiry...
    past = oauth_states.StateClaims("s" * 43, tenant.id, connection["id"], utcnow() - timedelta(seconds=1))
    r = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": oauth_states.sign(app.state.hub.vault, past)})
    assert_problem(r, 400, "OAUTH_STATE_INVALID")
    # ...or by its row (the signature still valid).
    params = await _start(client, tenant, connection["id"])
    async with db.write(tenant.id) as session:
        await session.execute(update(OAuthState).values(expires_at=utcnow() - timedelta(seconds=1)))
    r = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": params["state"]})
    assert_problem(r, 400, "OAUTH_STATE_INVALID")
    assert not route.called


def _tamper(state: str, **changes: str) -> str:
    payload, signature = state.split(".", 1)
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{forged}.{signature}"


async def test_a_forged_state_is_refused(client, tenant, other_tenant, provider, salesforce_client):
    mine = await create_connection(client, tenant, "salesforce")
    theirs = await create_connection(client, other_tenant, "salesforce")
    route = provider.post(SF_TOKEN_URL).respond(200, json=SF_TOKEN)
    state = (await _start(client, tenant, mine["id"]))["state"]
    stranger = Vault(parse_keyring(generate_key_line("k1")))
    claims = oauth_states.StateClaims("x" * 43, other_tenant.id, theirs["id"], utcnow() + timedelta(minutes=5))
    for forged in (
        _tamper(state, tid=other_tenant.id, cid=theirs["id"]),  # moved to another tenant's connection
        _tamper(state, exp=str(2**40)),  # lifetime extended
        state[:-4] + "AAAA",  # signature changed
        state.split(".", 1)[0],  # unsigned
        oauth_states.sign(stranger, claims),  # signed by another key
        "not-a-state",
    ):
        r = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": forged})
        assert_problem(r, 400, "OAUTH_STATE_INVALID")
    assert not route.called
    other = (await client.get(f"/api/v1/connections/{theirs['id']}", headers=other_tenant.headers())).json()
    assert other["status"] == "AUTH_ERROR"
    # The genuine state still works afterwards: forgeries did not consume it.
    assert (await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": state})).status_code == 200


async def test_a_rate_limited_callback_keeps_the_state_for_the_retry(client, make_tenant, provider, salesforce_client, db, app):
    """A 429 changes nothing: the state is still unused, so the admin's browser can
    follow the same redirect again once Retry-After has passed."""
    tenant = await make_tenant()
    admin = Principal(tenant.id, "system", "test", frozenset({Role.ADMIN}))
    async with mutation(db, ChangeContext(admin)) as m:
        await set_limits(m, {"user_per_minute": 2, "burst_multiplier": 1})
    connection = await create_connection(client, tenant, "salesforce")
    state = (await _start(client, tenant, connection["id"]))["state"]  # the second and last request allowed
    route = provider.post(SF_TOKEN_URL).respond(200, json=SF_TOKEN)
    limited = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": state})
    assert_problem(limited, 429, "RATE_LIMITED")
    assert int(limited.headers["retry-after"]) >= 1
    assert not route.called
    await app.state.hub.redis.delete(f"ratelimit:{tenant.id}:user")  # Retry-After has passed: the bucket is full
    retried = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": state})
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "CONNECTED"
    assert route.call_count == 1


async def test_a_declined_authorization_consumes_the_state(client, tenant, provider, salesforce_client):
    connection = await create_connection(client, tenant, "salesforce")
    state = (await _start(client, tenant, connection["id"]))["state"]
    r = await client.get(
        "/api/v1/oauth/callback", params={"error": "access_denied", "error_description": "end-user denied", "state": state}
    )
    assert_problem(r, 400, "OAUTH_AUTHORIZATION_DENIED")
    assert_problem(await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": state}), 400, "OAUTH_STATE_INVALID")


async def test_a_refused_code_answers_502_and_keeps_the_connection_as_it_was(client, tenant, provider, salesforce_client):
    connection = await create_connection(client, tenant, "salesforce")
    state = (await _start(client, tenant, connection["id"]))["state"]
    provider.post(SF_TOKEN_URL).respond(400, json={"error": "invalid_grant", "error_description": "authentication failure"})
    r = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": state})
    assert_problem(r, 502, "UPSTREAM_AUTH_FAILED")
    shown = (await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers())).json()
    assert shown["status"] == "AUTH_ERROR" and shown["credentials"]["status"] == "missing"


async def test_start_needs_an_oauth_client_and_an_oauth_connector(client, tenant, host, monkeypatch):
    monkeypatch.setattr(host, "oauth_clients", {})
    sf = await create_connection(client, tenant, "salesforce")
    r = await client.post(f"/api/v1/connections/{sf['id']}/oauth/start", headers=tenant.headers())
    assert_problem(r, 409, "CONFLICT")
    fake = await create_connection(client, tenant, "fake_crm")
    r = await client.post(f"/api/v1/connections/{fake['id']}/oauth/start", headers=tenant.headers())
    assert_problem(r, 409, "CONFLICT")


async def test_the_sandbox_authorizes_at_its_own_login_host(client, tenant, salesforce_client):
    connection = await create_connection(client, tenant, "salesforce", config={"environment": "sandbox"})
    r = await client.post(f"/api/v1/connections/{connection['id']}/oauth/start", headers=tenant.headers())
    assert r.json()["authorization_url"].startswith("https://test.salesforce.com/services/oauth2/authorize?")


async def test_a_401_refreshes_once_and_writes_the_rotated_token_back(client, tenant, provider, salesforce_client, db, app):
    connection = await authorize_salesforce(client, tenant, provider)
    refreshes: list[dict[str, str]] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        refreshes.append(form_of(request))
        return httpx.Response(200, json={**SF_TOKEN, "access_token": SF_REFRESHED_ACCESS})

    provider.post(SF_TOKEN_URL, name="sf_token").mock(side_effect=token_endpoint)
    upsert = provider.patch(UPSERT_URL).mock(
        side_effect=[
            httpx.Response(401, json=sample("salesforce_error_invalid_session.json")),
            httpx.Response(201, json={**sample("salesforce_upsert_created.json"), "created": True}),
        ]
    )
    r = await client.post(f"/api/v1/connections/{connection['id']}/actions/upsert_record", json=UPSERT, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"id": "00190000001pPvHAAU", "created": True}
    (form,) = refreshes
    assert form == {
        "grant_type": "refresh_token", "refresh_token": SF_REFRESH_TOKEN,
        "client_id": SF_CLIENT.client_id, "client_secret": SF_CLIENT.client_secret,
    }  # fmt: skip
    first, second = upsert.calls
    assert first.request.headers["authorization"] == f"Bearer {SF_TOKEN['access_token']}"
    assert second.request.headers["authorization"] == f"Bearer {SF_REFRESHED_ACCESS}"

    async with db.read(tenant.id) as session:
        row = await credential_store.find(session, connection["id"])
        assert row is not None
        stored = credential_store.unseal(app.state.hub.vault, row)
    assert stored.token is not None
    assert stored.token["access_token"] == SF_REFRESHED_ACCESS
    assert stored.token["refresh_token"] == SF_REFRESH_TOKEN  # Salesforce sends none back: the old one is kept
    assert SF_REFRESHED_ACCESS.encode() not in row.ciphertext
    assert row.refreshed_at is not None
    assert len(await outbox(db, tenant.id, "integration.credentials_refreshed")) == 1
    assert len(await outbox(db, tenant.id, "integration.method.executed")) == 1

    # The next call uses the stored, refreshed token straight away.
    provider.patch(UPSERT_URL).respond(200, json={"id": "00190000001pPvHAAU", "created": False, "success": True, "errors": []})
    r = await client.post(f"/api/v1/connections/{connection['id']}/actions/upsert_record", json=UPSERT, headers=tenant.headers())
    assert r.status_code == 200
    assert len(refreshes) == 1


async def test_a_refused_refresh_marks_auth_error_and_emits_auth_failed(client, tenant, provider, salesforce_client, db):
    connection = await authorize_salesforce(client, tenant, provider)
    provider.post(SF_TOKEN_URL, name="sf_token").respond(400, json=sample("salesforce_oauth_refresh_invalid_grant.json"))
    provider.patch(UPSERT_URL).respond(401, json=sample("salesforce_error_invalid_session.json"))
    r = await client.post(f"/api/v1/connections/{connection['id']}/actions/upsert_record", json=UPSERT, headers=tenant.headers())
    problem = assert_problem(r, 502, "UPSTREAM_AUTH_FAILED")
    assert "invalid_grant" in problem["detail"]

    shown = (await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers())).json()
    assert shown["status"] == "AUTH_ERROR"
    assert shown["credentials"]["status"] == "revoked"
    assert "invalid_grant" in shown["last_error"]
    (failed,) = await outbox(db, tenant.id, "integration.auth_failed")
    assert failed.resource_id == connection["id"]
    assert failed.payload["previous_status"] == "CONNECTED" and failed.payload["status"] == "AUTH_ERROR"
    (method_failed,) = await audit_trail(db, tenant.id, "integration.method.failed")
    assert method_failed.resource_id == connection["id"]
    (payload,) = [e.payload for e in await outbox(db, tenant.id, "integration.method.failed")]
    assert (payload["action"], payload["outcome"], payload["status"]) == ("upsert_record", "auth_failed", "AUTH_ERROR")

    # A revoked connection does not call the provider again until it is re-authorized.
    r = await client.post(f"/api/v1/connections/{connection['id']}/actions/upsert_record", json=UPSERT, headers=tenant.headers())
    assert_problem(r, 409, "CONFLICT")
    state = (await _start(client, tenant, connection["id"]))["state"]
    provider.post(SF_TOKEN_URL, name="sf_token").respond(200, json={**SF_TOKEN, "refresh_token": "5Aep-NEW"})
    assert (await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": state})).json()["status"] == "CONNECTED"
    shown = (await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers())).json()
    assert shown["credentials"]["status"] == "valid"


async def test_refresh_on_demand(client, tenant, provider, salesforce_client, db):
    connection = await authorize_salesforce(client, tenant, provider)
    provider.post(SF_TOKEN_URL, name="sf_token").respond(200, json={**SF_TOKEN, "access_token": SF_REFRESHED_ACCESS, "expires_in": 7200})
    r = await client.post(f"/api/v1/connections/{connection['id']}/credentials/refresh", headers=tenant.headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "valid" and body["refreshed_at"] and body["expires_at"]
    assert SF_REFRESHED_ACCESS not in r.text and SF_REFRESH_TOKEN not in r.text

    provider.post(SF_TOKEN_URL, name="sf_token").respond(400, json=sample("salesforce_oauth_refresh_invalid_grant.json"))
    r = await client.post(f"/api/v1/connections/{connection['id']}/credentials/refresh", headers=tenant.headers())
    assert_problem(r, 502, "UPSTREAM_AUTH_FAILED")
    assert len(await outbox(db, tenant.id, "integration.auth_failed")) == 1
    r = await client.get(f"/api/v1/connections/{connection['id']}/credentials", headers=tenant.headers())
    assert r.json()["status"] == "revoked"


async def test_client_credentials_mint_a_token_on_first_use(client, tenant, provider, db, app):
    connection = await create_connection(
        client, tenant, "token_crm", config={"client_id": "tc-client", "client_secret": "tc-secret-9d8c7b6a"}
    )
    assert connection["status"] == "CONNECTED" and connection["config"] == {"client_id": "tc-client"}
    minted = provider.post(TOKEN_URL).respond(
        200, json={"access_token": "tc-access-1f2e3d", "token_type": "Bearer", "expires_in": 3600}
    )
    ping = provider.get(f"{TOKEN_BASE}/ping").respond(200, json={"ok": True})
    r = await client.post(f"/api/v1/connections/{connection['id']}/actions/ping", json={}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"ok": True}
    form = form_of(minted.calls.last.request)
    assert form == {"grant_type": "client_credentials", "client_id": "tc-client", "client_secret": "tc-secret-9d8c7b6a", "scope": "deals.read"}
    assert ping.calls.last.request.headers["authorization"] == "Bearer tc-access-1f2e3d"
    credentials = (await client.get(f"/api/v1/connections/{connection['id']}/credentials", headers=tenant.headers())).json()
    assert credentials["status"] == "valid" and credentials["expires_at"]
    async with db.read(tenant.id) as session:
        stored = await credential_store.load(session, app.state.hub.vault, connection["id"])
    assert stored is not None and stored.secrets == {"client_secret": "tc-secret-9d8c7b6a"}
    assert stored.token is not None and stored.token["access_token"] == "tc-access-1f2e3d"

    # A second call reuses the stored token.
    await client.post(f"/api/v1/connections/{connection['id']}/actions/ping", json={}, headers=tenant.headers())
    assert minted.call_count == 1

    provider.post(TOKEN_URL).respond(401, json={"error": "invalid_client"})
    r = await client.post(f"/api/v1/connections/{connection['id']}/credentials/refresh", headers=tenant.headers())
    assert_problem(r, 502, "UPSTREAM_AUTH_FAILED")


async def test_the_callback_needs_no_credential_but_the_rest_does(client, tenant):
    r = await client.get("/api/v1/oauth/callback", params={"code": CODE, "state": "x"})
    assert_problem(r, 400, "OAUTH_STATE_INVALID")
    r = await client.post(f"/api/v1/connections/{tenant.id}/oauth/start")
    assert_problem(r, 401, "UNAUTHORIZED")


@pytest.mark.parametrize("params", [{}, {"code": CODE}, {"state": ""}, {"state": "x" * 2000}])
async def test_malformed_callbacks_are_problems(client, params):
    r = await client.get("/api/v1/oauth/callback", params=params)
    assert r.status_code in (400, 422)
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_two_processes_refreshing_at_once_make_one_grant(client, tenant, provider, salesforce_client, db, app, host):
    """A provider that rotates refresh tokens accepts each once. The API and a worker (two
    hosts: two processes) refresh the same connection at once: the shared lock lets one
    grant run, the other uses the token it stored, and the connection stays CONNECTED
    (without the lock the second grant is refused and marks it AUTH_ERROR)."""
    from redis.asyncio import Redis

    from connectors.host import connector_host_for
    from connectors.locks import RedisLock
    from connectors.sdk import RedisBreakerStorage
    from core.changes import ChangeContext
    from core.connections import ConnectionStore

    connection = await authorize_salesforce(client, tenant, provider, refresh_token="R-1")
    issued = {"R-1"}
    grants: list[str] = []

    async def rotating(request: httpx.Request) -> httpx.Response:
        presented = form_of(request)["refresh_token"]
        grants.append(presented)
        await asyncio.sleep(0.2)  # both processes are waiting on the provider at once
        if presented not in issued:
            return httpx.Response(400, json=sample("salesforce_oauth_refresh_invalid_grant.json"))
        issued.discard(presented)
        fresh = f"R-{len(grants) + 1}"
        issued.add(fresh)
        return httpx.Response(200, json={**SF_TOKEN, "access_token": f"ACCESS-{fresh}", "refresh_token": fresh})

    provider.post(SF_TOKEN_URL, name="sf_token").mock(side_effect=rotating)
    hub = app.state.hub
    redis = Redis.from_url(hub.settings.redis_url)
    other = connector_host_for(hub.settings, httpx.AsyncClient(), RedisBreakerStorage(redis), refresh_lock=RedisLock(redis))
    other.oauth_clients = {"salesforce": SF_CLIENT}
    store = ConnectionStore(db, hub.vault, ChangeContext(Principal(tenant.id, "user", "test", frozenset({Role.ADMIN}))))
    loaded = await store.load(connection["id"])
    assert loaded.credentials is not None

    async def refresh_on(process: Any) -> dict[str, Any]:
        return await process.refresh_now(
            hub.connectors.get("salesforce"), connection_id=connection["id"], config=loaded.config,
            secrets=loaded.credentials.secrets, token=loaded.credentials.token, store=store,
        )  # fmt: skip

    try:
        first, second = await asyncio.gather(refresh_on(host), refresh_on(other))
    finally:
        await redis.aclose()
        await other.client.aclose()
    assert grants == ["R-1"]
    assert first["access_token"] == second["access_token"] == "ACCESS-R-2"
    shown = (await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers())).json()
    assert shown["status"] == "CONNECTED" and shown["credentials"]["status"] == "valid"
    assert (await store.current_token(connection["id"]))["refresh_token"] == "R-2"


async def test_a_refreshed_token_that_could_not_be_stored_still_serves_its_call(
    client, tenant, provider, salesforce_client, db, monkeypatch, caplog
):
    """The database fails just as the refreshed token is saved: the call that refreshed it
    still goes through with it (logged), rather than failing with a token in hand."""
    from core.connections import ConnectionStore

    connection = await authorize_salesforce(client, tenant, provider)
    provider.post(SF_TOKEN_URL, name="sf_token").respond(200, json={**SF_TOKEN, "access_token": SF_REFRESHED_ACCESS})
    upsert = provider.patch(UPSERT_URL).mock(
        side_effect=[
            httpx.Response(401, json=sample("salesforce_error_invalid_session.json")),
            httpx.Response(201, json={**sample("salesforce_upsert_created.json"), "created": True}),
        ]
    )

    async def database_away(self: Any, connection_id: str, token: dict[str, Any]) -> None:
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(ConnectionStore, "save_token", database_away)
    r = await client.post(f"/api/v1/connections/{connection['id']}/actions/upsert_record", json=UPSERT, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert upsert.calls[1].request.headers["authorization"] == f"Bearer {SF_REFRESHED_ACCESS}"
    assert "could not be stored" in caplog.text and SF_REFRESHED_ACCESS not in caplog.text

    # Asked for explicitly, a refresh that cannot be stored is an error, not a success.
    r = await client.post(f"/api/v1/connections/{connection['id']}/credentials/refresh", headers=tenant.headers())
    assert r.status_code >= 500 and r.headers["content-type"] == "application/problem+json"
