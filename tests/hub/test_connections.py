"""Connections: lifecycle (create, list, get, update, disable/enable, delete), health status,
credential status and removal, events, and tenant isolation on every route."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from core import credentials as credential_store
from core.models import ConnectionCredential, IdempotencyRecord
from core.roles import Role
from tests.hub.integration_connectors import KEYED_BASE
from tests.hub.integration_fixtures import (  # noqa: F401 - fixtures
    audit_trail,
    create_connection,
    fast_provider_calls,
    host,
    outbox,
    provider,
    salesforce_client,
)
from tests.hub.test_auth import assert_problem

API_KEY = "kc_live_51Hx9QpLmN3oRtY7uVwXz2AbCdEf"
PAGE = {"data": [{"id": 1, "title": "Series A"}], "meta": {"next_cursor": None}}


async def test_create_keeps_secrets_out_of_the_row_and_the_response(app, client, tenant, db):
    body = await create_connection(client, tenant, "keyed_crm", name="Keyed", config={"api_key": API_KEY, "region": "us"})
    assert body["status"] == "CONNECTED"
    assert body["config"] == {"region": "us"}
    assert body["credentials"] == {
        "status": "valid", "scheme": "api_key", "expires_at": None, "refreshed_at": None, "revoked_at": None,
        "updated_at": body["credentials"]["updated_at"],
    }  # fmt: skip
    assert body["breaker_state"] == "closed"
    assert API_KEY not in str(body)
    # Stored sealed: the row holds ciphertext only, and it opens to the key.
    async with db.read(tenant.id) as session:
        row = await credential_store.find(session, body["id"])
        assert isinstance(row, ConnectionCredential)
        assert API_KEY.encode() not in row.ciphertext
        opened = credential_store.unseal(app.state.hub.vault, row)
    assert opened.secrets == {"api_key": API_KEY}
    created = await outbox(db, tenant.id, "integration.created")
    assert [e.resource_id for e in created] == [body["id"]]
    trail = await audit_trail(db, tenant.id, "integration.created")
    assert trail[0].changes["after"]["secret_fields"] == ["api_key"]
    assert API_KEY not in str(trail[0].changes) + str(created[0].payload)


async def test_an_oauth_connector_starts_unauthorized(client, tenant):
    body = await create_connection(client, tenant, "salesforce")
    assert body["status"] == "AUTH_ERROR"
    assert body["credentials"]["status"] == "missing"
    assert "authoriz" in body["last_error"].lower()


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"connector_key": "no_such_connector", "name": "x", "config": {}}, ["body", "connector_key"]),
        ({"connector_key": "keyed_crm", "name": "x", "config": {}}, ["body", "config", "api_key"]),
        ({"connector_key": "keyed_crm", "name": "x", "config": {"api_key": API_KEY, "region": "mars"}}, ["body", "config", "region"]),
        ({"connector_key": "keyed_crm", "name": "x", "config": {"api_key": API_KEY, "surprise": 1}}, ["body", "config", "surprise"]),
        ({"connector_key": "keyed_crm", "name": "", "config": {"api_key": API_KEY}}, ["body", "name"]),
    ],
    ids=["unknown-connector", "missing-secret", "bad-value", "extra-field", "empty-name"],
)
async def test_invalid_connections_are_422_without_echoing_input(client, tenant, payload, where):
    r = await client.post("/api/v1/connections", json=payload, headers=tenant.headers())
    problem = assert_problem(r, 422, "VALIDATION_FAILED")
    assert where in [d["loc"] for d in problem["details"]]
    assert API_KEY not in r.text


async def test_names_are_unique_per_tenant(client, tenant, other_tenant):
    await create_connection(client, tenant, "fake_crm", name="CRM")
    r = await client.post(
        "/api/v1/connections", json={"connector_key": "fake_crm", "name": "CRM"}, headers=tenant.headers()
    )
    assert_problem(r, 409, "CONFLICT")
    await create_connection(client, other_tenant, "fake_crm", name="CRM")  # another tenant may


async def test_list_filters_and_paginates(client, tenant):
    made = [await create_connection(client, tenant, "fake_crm", name=f"fake {i}") for i in range(3)]
    await create_connection(client, tenant, "salesforce", name="sf")
    r = await client.get("/api/v1/connections", params={"connector_key": "fake_crm", "limit": 2}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    first = r.json()
    assert [c["id"] for c in first["items"]] == [m["id"] for m in made[:2]]
    r = await client.get(
        "/api/v1/connections", params={"connector_key": "fake_crm", "limit": 2, "cursor": first["next_cursor"]},
        headers=tenant.headers(),
    )  # fmt: skip
    assert [c["id"] for c in r.json()["items"]] == [made[2]["id"]]
    assert r.json()["next_cursor"] is None
    r = await client.get("/api/v1/connections", params={"status": "AUTH_ERROR"}, headers=tenant.headers())
    assert [c["name"] for c in r.json()["items"]] == ["sf"]


async def test_get_has_a_strong_etag_and_patch_honours_if_match(app, client, tenant, db):
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY})
    url = f"/api/v1/connections/{made['id']}"
    r = await client.get(url, headers=tenant.headers())
    assert r.status_code == 200 and r.json()["id"] == made["id"]
    tag = r.headers["etag"]
    assert not tag.startswith("W/")
    assert (await client.get(url, headers=tenant.headers(**{"If-None-Match": tag}))).status_code == 304

    r = await client.patch(url, json={"name": "Renamed", "config": {"region": "us"}}, headers=tenant.headers(**{"If-Match": tag}))
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Renamed" and r.json()["config"] == {"region": "us"}
    assert r.json()["version"] == made["version"] + 1
    stale = await client.patch(url, json={"name": "Again"}, headers=tenant.headers(**{"If-Match": tag}))
    assert_problem(stale, 412, "PRECONDITION_FAILED")

    # A secret field is patched into the vault; the audit names the field, never the value.
    new_key = "kc_live_ROTATED_0000111122223333"
    r = await client.patch(url, json={"config": {"api_key": new_key}}, headers=tenant.headers())
    assert r.status_code == 200 and new_key not in r.text
    async with db.read(tenant.id) as session:
        opened = await credential_store.load(session, app.state.hub.vault, made["id"])
    assert opened is not None and opened.secrets["api_key"] == new_key
    updates = await audit_trail(db, tenant.id, "integration.updated")
    assert updates[-1].changes["after"]["secret_fields_changed"] == ["api_key"]
    assert new_key not in str([u.changes for u in updates])

    # Removing a required secret by merge patch fails validation; nothing changes.
    r = await client.patch(url, json={"config": {"api_key": None}}, headers=tenant.headers())
    assert_problem(r, 422, "VALIDATION_FAILED")


async def test_disable_enable_delete(client, tenant, db):
    made = await create_connection(client, tenant, "fake_crm")
    url = f"/api/v1/connections/{made['id']}"
    r = await client.post(f"{url}/disable", headers=tenant.headers())
    assert r.status_code == 200 and r.json()["status"] == "DISABLED"
    # Nothing runs while disabled.
    r = await client.post(f"{url}/actions/push_status", json={"external_id": "FAKE-1", "status": "x"}, headers=tenant.headers())
    assert_problem(r, 409, "CONFLICT")
    assert_problem(await client.post(f"{url}/check", headers=tenant.headers()), 409, "CONFLICT")
    r = await client.post(f"{url}/enable", headers=tenant.headers())
    assert r.status_code == 200 and r.json()["status"] == "CONNECTED"
    changes = await outbox(db, tenant.id, "integration.status_changed")
    assert [(e.payload["previous_status"], e.payload["status"]) for e in changes] == [
        ("CONNECTED", "DISABLED"),
        ("DISABLED", "CONNECTED"),
    ]
    assert (await client.delete(url, headers=tenant.headers())).status_code == 204
    assert_problem(await client.get(url, headers=tenant.headers()), 404, "NOT_FOUND")
    assert [e.resource_id for e in await outbox(db, tenant.id, "integration.deleted")] == [made["id"]]


async def test_an_unauthorized_oauth_connection_enables_into_auth_error(client, tenant):
    made = await create_connection(client, tenant, "salesforce")
    url = f"/api/v1/connections/{made['id']}"
    await client.post(f"{url}/disable", headers=tenant.headers())
    r = await client.post(f"{url}/enable", headers=tenant.headers())
    assert r.json()["status"] == "AUTH_ERROR"


async def test_check_reports_health_live(client, tenant, provider, db):
    made = await create_connection(
        client, tenant, "keyed_crm", config={"api_key": API_KEY, "base_url": "https://check.keyed-crm.test/v1"}
    )
    url = f"/api/v1/connections/{made['id']}"
    deals = provider.get("https://check.keyed-crm.test/v1/deals", name="deals")

    deals.respond(503)
    r = await client.post(f"{url}/check", headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is False and r.json()["error"]["status"] == 503
    assert r.json()["connection"]["status"] == "DEGRADED"
    assert r.json()["connection"]["error_count"] == 1

    provider.get("https://check.keyed-crm.test/v1/deals", name="deals").respond(200, json=PAGE)
    r = await client.post(f"{url}/check", headers=tenant.headers())
    body = r.json()
    assert body["ok"] is True and body["connection"]["status"] == "CONNECTED"
    assert body["connection"]["error_count"] == 0 and body["connection"]["last_success_at"]
    assert provider.routes["deals"].calls.last.request.headers["authorization"] == f"Bearer {API_KEY}"

    provider.get("https://check.keyed-crm.test/v1/deals", name="deals").respond(401, json={"message": "bad key"})
    r = await client.post(f"{url}/check", headers=tenant.headers())
    assert r.json()["ok"] is False and r.json()["connection"]["status"] == "AUTH_ERROR"
    assert len(await outbox(db, tenant.id, "integration.auth_failed")) == 1
    statuses = [
        e.payload["status"] for e in await outbox(db, tenant.id)
        if e.event_type.startswith("integration.") and e.event_type != "integration.checked"
    ]
    assert statuses == ["CONNECTED", "DEGRADED", "CONNECTED", "AUTH_ERROR"]
    assert len(await audit_trail(db, tenant.id, "integration.checked")) == 3


async def test_credentials_report_status_only_and_can_be_removed(client, tenant, db):
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY})
    url = f"/api/v1/connections/{made['id']}/credentials"
    r = await client.get(url, headers=tenant.headers())
    assert r.status_code == 200
    assert r.json()["status"] == "valid" and r.json()["scheme"] == "api_key"
    assert API_KEY not in r.text

    assert (await client.delete(url, headers=tenant.headers())).status_code == 204
    assert (await client.get(url, headers=tenant.headers())).json()["status"] == "missing"
    connection = (await client.get(f"/api/v1/connections/{made['id']}", headers=tenant.headers())).json()
    assert connection["status"] == "AUTH_ERROR"
    async with db.read(tenant.id) as session:
        assert await credential_store.find(session, made["id"]) is None
    assert len(await outbox(db, tenant.id, "integration.credentials_removed")) == 1
    # Without its key the connection cannot run until an admin patches a new one in.
    r = await client.post(f"/api/v1/connections/{made['id']}/check", headers=tenant.headers())
    assert_problem(r, 409, "CONFLICT")
    r = await client.patch(f"/api/v1/connections/{made['id']}", json={"config": {"api_key": "kc_new_key_42"}}, headers=tenant.headers())
    assert r.status_code == 200 and r.json()["credentials"]["status"] == "valid"


async def test_credentials_status_has_a_strong_etag(client, tenant):
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY})
    url = f"/api/v1/connections/{made['id']}/credentials"
    tag = (await client.get(url, headers=tenant.headers())).headers["etag"]
    assert tag.startswith('"') and tag.endswith('"')
    unchanged = await client.get(url, headers=tenant.headers(**{"If-None-Match": tag}))
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == tag
    assert (await client.delete(url, headers=tenant.headers())).status_code == 204
    changed = await client.get(url, headers=tenant.headers(**{"If-None-Match": tag}))
    assert changed.status_code == 200 and changed.json()["status"] == "missing" and changed.headers["etag"] != tag


async def test_refresh_is_refused_for_a_connector_without_tokens(client, tenant):
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY})
    r = await client.post(f"/api/v1/connections/{made['id']}/credentials/refresh", headers=tenant.headers())
    assert_problem(r, 409, "CONFLICT")


def _routes(connection_id: str) -> list[tuple[str, str, dict[str, object] | None]]:
    base = f"/api/v1/connections/{connection_id}"
    return [
        ("GET", base, None),
        ("PATCH", base, {"name": "stolen"}),
        ("DELETE", base, None),
        ("POST", f"{base}/disable", None),
        ("POST", f"{base}/enable", None),
        ("POST", f"{base}/check", None),
        ("GET", f"{base}/credentials", None),
        ("POST", f"{base}/credentials/refresh", None),
        ("DELETE", f"{base}/credentials", None),
        ("POST", f"{base}/oauth/start", None),
        ("POST", f"{base}/actions/push_status", {"external_id": "FAKE-1", "status": "x"}),
    ]


@pytest.mark.parametrize("connector_key", ["fake_crm", "salesforce"])
async def test_another_tenants_connection_is_404_on_every_route(client, tenant, other_tenant, connector_key, salesforce_client):
    theirs = await create_connection(client, other_tenant, connector_key)
    for method, path, body in _routes(theirs["id"]):
        r = await client.request(method, path, json=body, headers=tenant.headers())
        assert_problem(r, 404, "NOT_FOUND")
        assert theirs["name"] not in r.text
    listing = await client.get("/api/v1/connections", headers=tenant.headers())
    assert theirs["id"] not in listing.text
    # ...and nothing of theirs changed.
    again = await client.get(f"/api/v1/connections/{theirs['id']}", headers=other_tenant.headers())
    assert again.status_code == 200 and again.json()["version"] == theirs["version"]
    assert again.json()["name"] == theirs["name"]


async def test_unknown_ids_are_404(client, tenant):
    for method, path, body in _routes(str(uuid.uuid4())):
        r = await client.request(method, path, json=body, headers=tenant.headers())
        assert_problem(r, 404, "NOT_FOUND")


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.ADMIN])
async def test_only_admins_manage_connections(client, tenant, role):
    made = await create_connection(client, tenant, "fake_crm")
    for method, path, body in [("GET", "/api/v1/connections", None), ("POST", "/api/v1/connections", {}), *_routes(made["id"])]:
        r = await client.request(method, path, json=body, headers=tenant.headers(role))
        assert_problem(r, 403, "FORBIDDEN")


async def test_connections_of_a_keyed_provider_use_its_default_base_url(client, tenant, provider):
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY})
    route = provider.get(f"{KEYED_BASE}/deals").respond(200, json=PAGE)
    r = await client.post(f"/api/v1/connections/{made['id']}/check", headers=tenant.headers())
    assert r.json()["ok"] is True
    assert route.called


async def test_idempotent_check_calls_the_provider_once(client, tenant, provider):
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY, "base_url": "https://idem.keyed-crm.test/v1"})
    route = provider.get("https://idem.keyed-crm.test/v1/deals").respond(200, json=PAGE)
    headers = tenant.headers(**{"Idempotency-Key": f"check-{uuid.uuid4()}"})
    first = await client.post(f"/api/v1/connections/{made['id']}/check", headers=headers)
    second = await client.post(f"/api/v1/connections/{made['id']}/check", headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers.get("idempotent-replayed") == "true"
    assert second.json() == first.json()
    assert route.call_count == 1


async def test_a_failed_idempotent_call_releases_its_key(client, tenant, provider):
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY, "base_url": "https://rel.keyed-crm.test/v1"})
    provider.post("https://rel.keyed-crm.test/v1/notes", name="notes").respond(400, json={"message": "nope"})
    headers = tenant.headers(**{"Idempotency-Key": f"note-{uuid.uuid4()}"})
    url = f"/api/v1/connections/{made['id']}/actions/create_note"
    params = {"deal_id": "D-1", "text": "hello"}
    assert_problem(await client.post(url, json=params, headers=headers), 502, "UPSTREAM_ERROR")
    provider.post("https://rel.keyed-crm.test/v1/notes", name="notes").respond(201, json={"id": "N-9"})
    r = await client.post(url, json=params, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"id": "N-9", "deal_id": "D-1"}



async def test_a_key_whose_call_died_unanswered_is_free_again_after_its_lease(app, client, tenant, provider, monkeypatch):
    """A request that dies mid-call never releases its key (here: the release is lost).
    Its claim is a lease of twice the call's time limit, not the key's day-long lifetime,
    so the retry runs the call once the lease is over; the answer is then kept a day."""
    from hub import provider_calls

    monkeypatch.setattr(app.state.hub.settings, "connector_timeout_seconds", 0.25)
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY, "base_url": "https://died.keyed-crm.test/v1"})
    provider.post("https://died.keyed-crm.test/v1/notes", name="notes").respond(500, json={"message": "down"})
    headers = tenant.headers(**{"Idempotency-Key": f"note-{uuid.uuid4()}"})
    url = f"/api/v1/connections/{made['id']}/actions/create_note"
    params = {"deal_id": "D-1", "text": "hello"}

    async def lost(*args: object) -> None:
        return None

    with monkeypatch.context() as died:
        died.setattr(provider_calls, "_release", lost)
        assert (await client.post(url, json=params, headers=headers)).status_code >= 500
    provider.post("https://died.keyed-crm.test/v1/notes", name="notes").respond(201, json={"id": "N-7"})
    await asyncio.sleep(0.6)
    r = await client.post(url, json=params, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"id": "N-7", "deal_id": "D-1"}
    async with app.state.hub.db.read(tenant.id) as session:
        (record,) = (await session.execute(select(IdempotencyRecord).where(IdempotencyRecord.key == headers["Idempotency-Key"]))).scalars()
    assert record.expires_at > datetime.now(UTC) + timedelta(hours=23)


async def test_a_call_whose_key_lapsed_mid_call_does_not_overwrite_the_next_holders_answer(app, client, tenant, provider, monkeypatch):
    """Request A's provider call outlives its claim's lease; request B takes the key, calls
    and answers. A's late answer is still A's to read, but the key keeps B's: a replay
    gives B's answer."""
    from hub import provider_calls

    monkeypatch.setattr(provider_calls, "_claim_lease", lambda state: timedelta(seconds=0.3))
    made = await create_connection(client, tenant, "keyed_crm", config={"api_key": API_KEY, "base_url": "https://lapse.keyed-crm.test/v1"})
    answers = iter([("N-slow", 0.8), ("N-fast", 0.0)])

    async def notes(request: object) -> httpx.Response:
        note_id, delay = next(answers)
        await asyncio.sleep(delay)
        return httpx.Response(201, json={"id": note_id})

    provider.post("https://lapse.keyed-crm.test/v1/notes").mock(side_effect=notes)
    headers = tenant.headers(**{"Idempotency-Key": f"note-{uuid.uuid4()}"})
    url = f"/api/v1/connections/{made['id']}/actions/create_note"
    params = {"deal_id": "D-1", "text": "hello"}

    async def b_after_the_lease() -> httpx.Response:
        await asyncio.sleep(0.5)
        return await client.post(url, json=params, headers=headers)

    a, b = await asyncio.gather(client.post(url, json=params, headers=headers), b_after_the_lease())
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["result"]["id"] == "N-slow" and b.json()["result"]["id"] == "N-fast"
    replay = await client.post(url, json=params, headers=headers)
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.json()["result"]["id"] == "N-fast"
