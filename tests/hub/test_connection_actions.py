"""Executing connector actions: parameters validated against the action's schema, every
call audited (`integration.method.executed` / `integration.method.failed`), provider
failures answered as problems and reflected in the connection's health; and one circuit
breaker per tenant connection, shared through Redis, so one tenant's failing provider
never slows another tenant's calls."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from redis.asyncio import Redis

from connectors.host import ConnectorHost
from connectors.sdk import RedisBreakerStorage, RetryPolicy
from core.roles import Role
from tests.hub.integration_fixtures import (  # noqa: F401 - fixtures
    audit_trail,
    create_connection,
    fast_provider_calls,
    host,
    outbox,
    provider,
)
from tests.hub.test_auth import assert_problem

PUSH = {"external_id": "FAKE-00001", "status": "ic_review", "note": "moved to IC"}


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"status": "x"}, ["body", "external_id"]),
        ({**PUSH, "priority": "high"}, ["body", "priority"]),
        ({**PUSH, "status": 5}, ["body", "status"]),
        (None, ["body", "external_id"]),
    ],
    ids=["missing", "extra", "wrong-type", "no-body"],
)
async def test_parameters_are_validated_against_the_action_schema(client, tenant, db, params, loc):
    made = await create_connection(client, tenant, "fake_crm")
    r = await client.post(f"/api/v1/connections/{made['id']}/actions/push_status", json=params, headers=tenant.headers())
    problem = assert_problem(r, 422, "VALIDATION_FAILED")
    assert loc in [d["loc"] for d in problem["details"]]
    assert await outbox(db, tenant.id, "integration.method.executed") == []


async def test_a_body_that_is_not_an_object_is_422(client, tenant):
    made = await create_connection(client, tenant, "fake_crm")
    r = await client.post(f"/api/v1/connections/{made['id']}/actions/push_status", json=[PUSH], headers=tenant.headers())
    assert_problem(r, 422, "VALIDATION_FAILED")


async def test_an_unknown_action_is_404(client, tenant):
    made = await create_connection(client, tenant, "fake_crm")
    r = await client.post(f"/api/v1/connections/{made['id']}/actions/launch_rockets", json={}, headers=tenant.headers())
    assert_problem(r, 404, "NOT_FOUND")


async def test_a_successful_call_is_audited(client, tenant, db):
    made = await create_connection(client, tenant, "fake_crm")
    r = await client.post(
        f"/api/v1/connections/{made['id']}/actions/push_status",
        json=PUSH,
        headers=tenant.headers(**{"X-Request-ID": "req-push-1"}),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == {"external_id": "FAKE-00001", "status": "ic_review", "accepted": True}
    assert body["action"] == "push_status" and body["connection_id"] == made["id"]
    (event,) = await outbox(db, tenant.id, "integration.method.executed")
    assert (event.resource_type, event.resource_id) == ("connection", made["id"])
    assert event.payload["action"] == "push_status" and event.payload["outcome"] == "succeeded"
    (audited,) = await audit_trail(db, tenant.id, "integration.method.executed")
    assert audited.request_id == "req-push-1" and audited.actor_kind == "api_key"
    assert audited.changes["after"]["last_success_at"]
    shown = (await client.get(f"/api/v1/connections/{made['id']}", headers=tenant.headers())).json()
    assert shown["last_success_at"] is not None


@pytest.mark.parametrize(
    ("answer", "status", "code", "health"),
    [
        (httpx.Response(400, json={"message": "deal_id unknown"}), 502, "UPSTREAM_ERROR", "CONNECTED"),
        (httpx.Response(403, json={"message": "missing scope notes:write"}), 502, "UPSTREAM_ERROR", "DEGRADED"),
        (httpx.Response(503), 503, "UPSTREAM_UNAVAILABLE", "DEGRADED"),
        (httpx.Response(429, headers={"Retry-After": "120"}), 503, "UPSTREAM_UNAVAILABLE", "CONNECTED"),
        (httpx.Response(401, json={"message": "bad key"}), 502, "UPSTREAM_AUTH_FAILED", "AUTH_ERROR"),
    ],
    ids=["rejected", "misconfigured", "outage", "rate-limited", "bad-key"],
)
async def test_a_failed_call_is_audited_and_answered(client, tenant, provider, db, answer, status, code, health):
    made = await create_connection(
        client, tenant, "keyed_crm", config={"api_key": "kc_live_fail", "base_url": "https://fail.keyed-crm.test/v1"}
    )
    provider.post("https://fail.keyed-crm.test/v1/notes").mock(return_value=answer)
    r = await client.post(
        f"/api/v1/connections/{made['id']}/actions/create_note", json={"deal_id": "D-1", "text": "hi"}, headers=tenant.headers()
    )
    assert_problem(r, status, code)
    if answer.status_code == 429:
        assert r.headers["retry-after"] == "120"
    (event,) = await outbox(db, tenant.id, "integration.method.failed")
    assert event.payload["action"] == "create_note"
    assert event.payload["provider_status"] == answer.status_code
    assert len(await audit_trail(db, tenant.id, "integration.method.failed")) == 1
    shown = (await client.get(f"/api/v1/connections/{made['id']}", headers=tenant.headers())).json()
    assert shown["status"] == health


async def test_a_recovered_provider_makes_a_degraded_connection_connected(client, tenant, provider, db):
    made = await create_connection(
        client, tenant, "keyed_crm", config={"api_key": "kc_live_x", "base_url": "https://flaky.keyed-crm.test/v1"}
    )
    url = f"/api/v1/connections/{made['id']}/actions/create_note"
    provider.post("https://flaky.keyed-crm.test/v1/notes", name="notes").respond(502)
    await client.post(url, json={"deal_id": "D-1", "text": "a"}, headers=tenant.headers())
    provider.post("https://flaky.keyed-crm.test/v1/notes", name="notes").respond(201, json={"id": "N-1"})
    r = await client.post(url, json={"deal_id": "D-1", "text": "b"}, headers=tenant.headers())
    assert r.status_code == 200
    shown = (await client.get(f"/api/v1/connections/{made['id']}", headers=tenant.headers())).json()
    assert (shown["status"], shown["error_count"]) == ("CONNECTED", 0)
    changes = [(e.payload["previous_status"], e.payload["status"]) for e in await outbox(db, tenant.id, "integration.status_changed")]
    assert changes == [("CONNECTED", "DEGRADED"), ("DEGRADED", "CONNECTED")]


SHARED_PROVIDER = "https://shared.keyed-crm.test/v1"


async def test_one_tenants_failing_provider_never_slows_another_tenant(
    client, make_tenant, provider, host, monkeypatch, redis_url
):
    """Two tenants on the same provider host; A's account is broken (slow 503s)."""
    monkeypatch.setattr(host, "breaker_fail_max", 2)
    monkeypatch.setattr(host, "retry", RetryPolicy(max_attempts=1))
    a, b = await make_tenant((Role.ADMIN,)), await make_tenant((Role.ADMIN,))
    conn_a = await create_connection(client, a, "keyed_crm", config={"api_key": "key-of-a", "base_url": SHARED_PROVIDER})
    conn_b = await create_connection(client, b, "keyed_crm", config={"api_key": "key-of-b", "base_url": SHARED_PROVIDER})

    async def notes(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer key-of-a":
            await asyncio.sleep(0.3)
            return httpx.Response(503)
        return httpx.Response(201, json={"id": "N-b"})

    route = provider.post(f"{SHARED_PROVIDER}/notes").mock(side_effect=notes)

    async def run(tenant, connection) -> tuple[int, float]:
        started = time.perf_counter()
        r = await client.post(
            f"/api/v1/connections/{connection['id']}/actions/create_note",
            json={"deal_id": "D-1", "text": "x"},
            headers=tenant.headers(),
        )
        return r.status_code, time.perf_counter() - started

    # While A's calls hang and fail, B's calls are answered at once.
    for _ in range(2):
        (status_a, took_a), (status_b, took_b) = await asyncio.gather(run(a, conn_a), run(b, conn_b))
        assert status_a == 503 and took_a >= 0.3
        assert status_b == 200 and took_b < 0.25
    calls_from_a = sum(1 for c in route.calls if c.request.headers["authorization"] == "Bearer key-of-a")
    assert calls_from_a == 2

    # A's breaker is open now: A is refused without reaching the provider...
    status_a, took_a = await run(a, conn_a)
    assert status_a == 503 and took_a < 0.25
    assert sum(1 for c in route.calls if c.request.headers["authorization"] == "Bearer key-of-a") == 2
    # ...and B is untouched.
    assert (await run(b, conn_b))[0] == 200
    shown_a = (await client.get(f"/api/v1/connections/{conn_a['id']}", headers=a.headers())).json()
    shown_b = (await client.get(f"/api/v1/connections/{conn_b['id']}", headers=b.headers())).json()
    assert (shown_a["status"], shown_a["breaker_state"]) == ("DEGRADED", "open")
    assert (shown_b["status"], shown_b["breaker_state"]) == ("CONNECTED", "closed")

    # The breaker lives in Redis: another hub process sees it open too.
    redis = Redis.from_url(redis_url)
    try:
        other_process = ConnectorHost(client=httpx.AsyncClient(), breaker_storage=RedisBreakerStorage(redis))
        assert await other_process.breaker(a.id, conn_a["id"]).state() == "open"
        assert await other_process.breaker(b.id, conn_b["id"]).state() == "closed"
        await other_process.client.aclose()
    finally:
        await redis.aclose()


async def test_an_open_breaker_answers_retry_after(client, tenant, provider, host, monkeypatch):
    monkeypatch.setattr(host, "breaker_fail_max", 1)
    monkeypatch.setattr(host, "retry", RetryPolicy(max_attempts=1))
    made = await create_connection(
        client, tenant, "keyed_crm", config={"api_key": "kc", "base_url": "https://down.keyed-crm.test/v1"}
    )
    provider.post("https://down.keyed-crm.test/v1/notes").respond(500)
    url = f"/api/v1/connections/{made['id']}/actions/create_note"
    assert_problem(await client.post(url, json={"deal_id": "D", "text": "t"}, headers=tenant.headers()), 503, "UPSTREAM_UNAVAILABLE")
    r = await client.post(url, json={"deal_id": "D", "text": "t"}, headers=tenant.headers())
    problem = assert_problem(r, 503, "UPSTREAM_UNAVAILABLE")
    assert "circuit breaker" in problem["detail"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
