"""No credential value (API keys, client secrets, access and refresh tokens, vault keys)
ever reaches a response body, a log line at any level, or a clear-text column (audit
trail, outbox, plain configuration, stored idempotent responses)."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import httpx
from sqlalchemy import select

from core.models import AuditEvent, Connection, IdempotencyRecord, OutboxEvent
from tests.hub.integration_connectors import TOKEN_BASE, TOKEN_URL
from tests.hub.integration_fixtures import (  # noqa: F401 - fixtures
    SF_API,
    SF_CLIENT,
    SF_REFRESH_TOKEN,
    SF_REFRESHED_ACCESS,
    SF_TOKEN,
    SF_TOKEN_URL,
    authorize_salesforce,
    create_connection,
    fast_provider_calls,
    host,
    provider,
    salesforce_client,
    sample,
)

API_KEY = "kc_live_LEAKCHECK_8a7b6c5d4e3f"
NEW_API_KEY = "kc_live_LEAKCHECK_ROTATED_1a2b3c"
TC_SECRET = "tc-secret-LEAKCHECK-0f9e8d7c"
TC_ACCESS = "tc-access-LEAKCHECK-5a4b3c2d"


def _log_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), str(record.args or "")]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    parts.extend(str(v) for k, v in record.__dict__.items() if k not in {"msg", "args", "exc_info"})
    return "\n".join(parts)


async def test_no_credential_appears_in_any_response_log_or_clear_text_column(
    app, client, tenant, provider, salesforce_client, db, caplog
):
    caplog.set_level(logging.DEBUG)
    responses: list[httpx.Response] = []

    async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", tenant.headers(**{"Idempotency-Key": str(uuid.uuid4())}))
        r = await client.request(method, url, **kwargs)
        responses.append(r)
        return r

    # An API-key connector: create, patch the key, check, run, and fail.
    keyed = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY, "base_url": "https://leak.keyed-crm.test/v1"})
    base = f"/api/v1/connections/{keyed['id']}"
    provider.get("https://leak.keyed-crm.test/v1/deals").respond(200, json={"data": [], "meta": {}})
    notes = provider.post("https://leak.keyed-crm.test/v1/notes", name="notes")
    notes.respond(201, json={"id": "N-1"})
    await call("PATCH", base, json={"config": {"api_key": NEW_API_KEY}})
    await call("POST", f"{base}/check")
    await call("POST", f"{base}/actions/create_note", json={"deal_id": "D-1", "text": "hello"})
    provider.post("https://leak.keyed-crm.test/v1/notes", name="notes").respond(401, json={"message": "invalid key"})
    await call("POST", f"{base}/actions/create_note", json={"deal_id": "D-1", "text": "again"})
    await call("POST", "/api/v1/connections", json={"connector_key": "keyed_crm", "name": "bad", "config": {"api_key": API_KEY, "region": "mars"}})

    # Client credentials: the secret in the config, a minted token, a refused refresh.
    tc = await create_connection(client, tenant, "token_crm", config={"client_id": "tc-client", "client_secret": TC_SECRET})
    provider.post(TOKEN_URL, name="tc_token").respond(200, json={"access_token": TC_ACCESS, "expires_in": 3600})
    provider.get(f"{TOKEN_BASE}/ping").respond(200, json={"ok": True})
    await call("POST", f"/api/v1/connections/{tc['id']}/actions/ping", json={})
    await call("POST", f"/api/v1/connections/{tc['id']}/credentials/refresh")
    provider.post(TOKEN_URL, name="tc_token").respond(401, json={"error": "invalid_client"})
    await call("POST", f"/api/v1/connections/{tc['id']}/credentials/refresh")

    # Salesforce: authorization, a 401 with a refresh, then a refused refresh.
    sf = await authorize_salesforce(client, tenant, provider)
    sf_base = f"/api/v1/connections/{sf['id']}"
    provider.post(SF_TOKEN_URL, name="sf_token").respond(200, json={**SF_TOKEN, "access_token": SF_REFRESHED_ACCESS})
    upsert_url = f"{SF_API}/sobjects/Opportunity/Ext__c/E-1"
    provider.patch(upsert_url).mock(
        side_effect=[
            httpx.Response(401, json=sample("salesforce_error_invalid_session.json")),
            httpx.Response(201, json=sample("salesforce_upsert_created.json")),
        ]
    )
    upsert = {"external_id_field": "Ext__c", "external_id": "E-1", "fields": {"Name": "x"}}
    await call("POST", f"{sf_base}/actions/upsert_record", json=upsert)
    provider.post(SF_TOKEN_URL, name="sf_token").respond(400, json=sample("salesforce_oauth_refresh_invalid_grant.json"))
    provider.patch(upsert_url).respond(401, json=sample("salesforce_error_invalid_session.json"))
    await call("POST", f"{sf_base}/actions/upsert_record", json=upsert)

    # Everything an admin can read back.
    for connection in (keyed, tc, sf):
        await call("GET", f"/api/v1/connections/{connection['id']}")
        await call("GET", f"/api/v1/connections/{connection['id']}/credentials")
    await call("GET", "/api/v1/connections")
    await call("GET", "/api/v1/connectors/keyed_crm/schemas")
    await call("GET", "/api/v1/audit-events", params={"limit": 500}, headers=tenant.headers())

    vault_key = app.state.hub.vault.keyring.active.material
    secrets = {
        "api key": API_KEY,
        "rotated api key": NEW_API_KEY,
        "salesforce client secret": SF_CLIENT.client_secret,
        "salesforce access token": SF_TOKEN["access_token"],
        "salesforce refreshed access token": SF_REFRESHED_ACCESS,
        "salesforce refresh token": SF_REFRESH_TOKEN,
        "client-credentials secret": TC_SECRET,
        "client-credentials access token": TC_ACCESS,
        "vault key": base64.b64encode(vault_key).decode(),
        "hub API key": tenant.keys[next(iter(tenant.keys))],
    }
    assert len(responses) >= 15 and all(r.status_code < 500 or r.status_code in (502, 503) for r in responses)

    async with db.read(tenant.id) as session:
        stored = [
            *(json.dumps(e.changes) for e in (await session.execute(select(AuditEvent))).scalars()),
            *(json.dumps(e.payload) for e in (await session.execute(select(OutboxEvent))).scalars()),
            *(json.dumps(c.config) for c in (await session.execute(select(Connection))).scalars()),
            *((r.body or b"").decode() for r in (await session.execute(select(IdempotencyRecord))).scalars()),
        ]
    logs = [_log_text(record) for record in caplog.records]
    assert logs, "nothing was logged: the capture is not working"
    for label, value in secrets.items():
        assert value
        for r in responses:
            assert value not in r.text, f"{label} in the response to {r.request.method} {r.request.url.path}"
            assert value not in str(r.headers), f"{label} in a response header"
        for text in logs:
            assert value not in text, f"{label} in a log line: {text[:200]}"
        for text in stored:
            assert value not in text, f"{label} in a clear-text column"
