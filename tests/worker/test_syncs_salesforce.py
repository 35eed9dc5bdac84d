"""Syncs of a Salesforce connection, the provider mocked with respx in the shapes of the
real samples: SOQL pages and deletions stored, the cursor carried to the next sync, and
what a sync does when Salesforce refuses: pause on its daily quota or an open breaker,
fail (with `sync.failed` and the connection in AUTH_ERROR) when the grant is gone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from connectors.sdk import RetryPolicy
from core.roles import Role
from tests.connectors.test_salesforce_connector import PAGE1, PAGE2, opportunity, sample
from tests.hub.integration_fixtures import (  # noqa: F401 - fixtures
    SF_API,
    SF_INSTANCE,
    SF_TOKEN_URL,
    audit_trail,
    authorize_salesforce,
    create_connection,
    fast_provider_calls,
    host,
    outbox,
    provider,
    salesforce_client,
)
from tests.worker.conftest import wait_for
from tests.worker.test_syncs import paused_run, settle, start_sync, stored_deals

DELETED = {
    **sample("salesforce_get_deleted.json"),
    "deletedRecords": [{"id": "006x000000002AAA", "deletedDate": "2024-05-03T09:00:00.000+0000"}],
}


def soql_of(request: httpx.Request) -> str:
    return parse_qs(urlsplit(str(request.url)).query)["q"][0]


@pytest.fixture
async def salesforce(client, tenant, provider, salesforce_client) -> dict[str, Any]:
    return await authorize_salesforce(client, tenant, provider)


async def test_a_salesforce_sync_stores_opportunities_and_deletions_and_resumes_from_its_cursor(
    client, db, tenant, provider, salesforce, start_worker
):
    query = provider.get(f"{SF_API}/query").respond(200, json=PAGE1)
    provider.get(SF_INSTANCE + PAGE1["nextRecordsUrl"]).respond(200, json=PAGE2)
    deleted = provider.get(f"{SF_API}/sobjects/Opportunity/deleted/").respond(200, json={"deletedRecords": []})
    await start_worker()
    first = await settle(client, tenant, (await start_sync(client, tenant, salesforce["id"]))["id"])
    assert first["status"] == "succeeded", first
    assert first["progress"]["records_read"] == 3 and first["progress"]["pages"] == 3  # 2 query pages + 1 deletions page
    assert "WHERE" not in soql_of(query.calls[0].request), "the first sync reads everything"
    deals = await stored_deals(db, tenant.id, "salesforce")
    assert sorted(deals) == ["006x000000001AAA", "006x000000002AAA", "006x000000003AAA"]
    assert deals["006x000000001AAA"].company == "Acme" and deals["006x000000001AAA"].owner == "Jane Doe"
    assert deals["006x000000003AAA"].amount == 3000

    # The next sync asks only for what changed since the last record stored, and turns
    # the deletions Salesforce reports into soft deletes.
    query.respond(200, json={**PAGE2, "records": [opportunity(3, "2024-05-02T08:00:00.000+0000")]})
    deleted.respond(200, json=DELETED)
    second = await settle(client, tenant, (await start_sync(client, tenant, salesforce["id"]))["id"])
    assert second["status"] == "succeeded", second
    assert "WHERE SystemModstamp >= 2024-05-02T08:00:00Z" in soql_of(query.calls[-1].request)
    assert second["progress"]["records_written"] == 1, "the re-read record is unchanged; one deal is deleted"
    deals = await stored_deals(db, tenant.id, "salesforce")
    assert deals["006x000000002AAA"].deleted_at is not None and deals["006x000000001AAA"].deleted_at is None
    assert len(await audit_trail(db, tenant.id, "deal.deleted")) == 1


async def test_the_daily_quota_pauses_the_sync_until_salesforce_allows_it_again(
    client, db, tenant, provider, salesforce, start_worker
):
    quota = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    provider.get(f"{SF_API}/query").respond(200, json=PAGE1)
    provider.get(SF_INSTANCE + PAGE1["nextRecordsUrl"]).respond(403, json=quota)
    await start_worker()
    run = await start_sync(client, tenant, salesforce["id"])
    paused = await wait_for(lambda: paused_run(client, tenant, run["id"]), timeout=20)
    assert paused["status"] == "queued" and paused["error"]["code"] == "RATE_LIMITED"
    wait = datetime.fromisoformat(paused["resume_at"]) - datetime.now(UTC)
    assert timedelta(minutes=14) < wait <= timedelta(minutes=15), "the rule for this quota says 900 s"
    assert paused["progress"]["pages"] == 1 and len(await stored_deals(db, tenant.id, "salesforce")) == 2
    assert await outbox(db, tenant.id, "sync.failed") == []


async def test_an_open_breaker_pauses_the_sync_instead_of_failing_it(
    client, tenant, provider, salesforce, start_worker, host, monkeypatch
):
    monkeypatch.setattr(host, "breaker_fail_max", 1)
    monkeypatch.setattr(host, "retry", RetryPolicy(max_attempts=1))
    provider.get(f"{SF_API}/query").respond(503, json=[{"message": "down", "errorCode": "SERVER_UNAVAILABLE"}])
    await start_worker(sync_pause_seconds=30.0)
    run = await start_sync(client, tenant, salesforce["id"])
    paused = await wait_for(lambda: paused_run(client, tenant, run["id"]), timeout=20)
    assert paused["status"] == "queued" and paused["error"]["code"] == "PROVIDER_UNAVAILABLE"
    r = await client.get(f"/api/v1/connections/{salesforce['id']}", headers=tenant.headers(Role.ADMIN))
    assert r.json()["breaker_state"] == "open"


async def test_a_refused_grant_fails_the_sync_with_an_event_and_asks_for_reconnection(
    client, db, tenant, provider, salesforce, start_worker
):
    provider.get(f"{SF_API}/query").respond(401, json=sample("salesforce_error_invalid_session.json"))
    provider.post(SF_TOKEN_URL, name="sf_token").respond(400, json=sample("salesforce_oauth_refresh_invalid_grant.json"))
    await start_worker()
    run = await start_sync(client, tenant, salesforce["id"])
    failed = await settle(client, tenant, run["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "AUTH_ERROR"
    events = await outbox(db, tenant.id, "sync.failed")
    assert len(events) == 1 and events[0].payload["run"]["error"]["code"] == "AUTH_ERROR"
    r = await client.get(f"/api/v1/connections/{salesforce['id']}", headers=tenant.headers(Role.ADMIN))
    assert r.json()["status"] == "AUTH_ERROR"
    # No credential reaches the run, its event or the log of it.
    assert "REFRESH" not in str(failed) and "REFRESH" not in str(events[0].payload)


async def test_a_provider_timeout_pauses_the_sync(client, tenant, provider, salesforce, start_worker):
    provider.get(f"{SF_API}/query").mock(side_effect=httpx.ReadTimeout("slow"))
    await start_worker()
    run = await start_sync(client, tenant, salesforce["id"])
    paused = await wait_for(lambda: paused_run(client, tenant, run["id"]), timeout=20)
    assert paused["status"] == "queued" and paused["error"]["code"] == "PROVIDER_UNAVAILABLE"



async def test_an_unauthorized_connection_cannot_start_a_sync(client, tenant, provider, salesforce_client):
    connection = await create_connection(client, tenant, "salesforce", name="not yet", config={})
    r = await client.post(f"/api/v1/connections/{connection['id']}/syncs", headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 409 and "oauth/start" in r.json()["detail"]
