"""Rate limits, conditional requests, health, metrics and logs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from core.changes import ChangeContext, mutation
from core.jobs import Keys, beat, forget
from core.identity import Principal
from core.roles import Role
from core.tenants import set_limits
from hub.app import create_app
from hub.logs import JsonFormatter
from tests.conftest import TenantHandle, deal_body
from tests.keys import make_token


async def _limit(db: Any, tenant: TenantHandle, **limits: Any) -> None:
    system = Principal(tenant.id, "system", "test", frozenset({Role.ADMIN}))
    async with mutation(db, ChangeContext(system)) as m:
        await set_limits(m, limits)


@pytest.fixture
async def limited_tenant(db, make_tenant) -> TenantHandle:
    tenant = await make_tenant()
    await _limit(db, tenant, user_per_minute=3, integration_per_minute=5, burst_multiplier=1)
    return tenant


async def test_every_authenticated_response_carries_rate_limit_headers(client, tenant):
    r = await client.get("/api/v1/deals", headers=tenant.headers())
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit"] == "600"
    assert 0 < int(r.headers["x-ratelimit-remaining"]) <= 1200
    assert int(r.headers["x-ratelimit-reset"]) >= 0
    missing = await client.get(f"/api/v1/deals/{'0' * 36}", headers=tenant.headers())
    assert missing.status_code == 404 and "x-ratelimit-remaining" in missing.headers


async def test_requests_refused_before_their_route_runs_are_counted_and_carry_the_headers(client, limited_tenant):
    """Malformed JSON, no such route, a method the route does not take: with a good
    credential they count against the tenant and say so, and past the limit they are 429."""
    h = limited_tenant.headers()
    malformed = await client.post("/api/v1/deals", content=b"{", headers={**h, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.headers["x-ratelimit-remaining"] == "2"
    no_route = await client.get("/api/v1/no-such-thing", headers=h)
    assert no_route.status_code == 404 and no_route.headers["x-ratelimit-remaining"] == "1"
    wrong_method = await client.put("/api/v1/deals", json={}, headers=h)
    assert wrong_method.status_code == 405 and wrong_method.headers["x-ratelimit-remaining"] == "0"
    over = await client.post("/api/v1/deals", content=b"{", headers={**h, "Content-Type": "application/json"})
    assert over.status_code == 429 and over.json()["code"] == "RATE_LIMITED" and int(over.headers["retry-after"]) >= 1
    bearer = {"Authorization": f"Bearer {make_token(tenant_id=limited_tenant.id, roles=['ANALYST'])}"}
    assert (await client.get("/api/v1/no-such-thing", headers=bearer)).status_code == 429  # a JWT names the tenant too
    # A bad credential is answered first (401, not 400), and names no tenant to charge.
    anonymous = await client.post("/api/v1/deals", content=b"{", headers={"X-API-Key": "hub_nope", "Content-Type": "application/json"})
    assert anonymous.status_code == 401 and "x-ratelimit-limit" not in anonymous.headers
    nobody = await client.get("/api/v1/no-such-thing")
    assert nobody.status_code == 404 and "x-ratelimit-limit" not in nobody.headers


async def test_a_malformed_push_to_an_integration_route_uses_the_integration_budget(client, limited_tenant):
    h = {**limited_tenant.headers(Role.INTEGRATION_SERVICE), "Content-Type": "application/json"}
    r = await client.put("/api/v1/deals/by-ref/crm/1", content=b"{", headers=h)
    assert r.status_code == 400 and r.headers["x-ratelimit-remaining"] == "4"  # of the integration route's 5


async def test_exceeding_the_limit_answers_429_problem_with_retry_after(client, limited_tenant):
    statuses = [(await client.get("/api/v1/deals", headers=limited_tenant.headers())).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    r = await client.get("/api/v1/deals", headers=limited_tenant.headers())
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "RATE_LIMITED"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-remaining"] == "0"


async def test_integration_routes_have_their_own_larger_budget(client, limited_tenant):
    for _ in range(3):
        await client.get("/api/v1/deals", headers=limited_tenant.headers())
    assert (await client.get("/api/v1/deals", headers=limited_tenant.headers())).status_code == 429
    h = limited_tenant.headers(Role.INTEGRATION_SERVICE)
    statuses = [
        (await client.put(f"/api/v1/deals/by-ref/crm/{i}", json=deal_body(), headers=h)).status_code for i in range(6)
    ]
    assert statuses == [201] * 5 + [429]


async def test_limits_are_per_tenant(client, limited_tenant, tenant):
    for _ in range(4):
        await client.get("/api/v1/deals", headers=limited_tenant.headers())
    assert (await client.get("/api/v1/deals", headers=tenant.headers())).status_code == 200


async def test_default_burst_is_twice_the_minute_rate(client, db, make_tenant):
    tenant = await make_tenant()
    await _limit(db, tenant, user_per_minute=4)
    statuses = [(await client.get("/api/v1/deals", headers=tenant.headers())).status_code for _ in range(9)]
    assert statuses == [200] * 8 + [429]


async def _second_app(settings: Any, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update=changes))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub2.test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


async def test_buckets_are_shared_by_all_hub_processes(client, settings, limited_tenant):
    """Two app instances (as two processes would) draw from one bucket in Redis."""
    async for other in _second_app(settings):
        a = [(await client.get("/api/v1/deals", headers=limited_tenant.headers())).status_code for _ in range(2)]
        b = [(await other.get("/api/v1/deals", headers=limited_tenant.headers())).status_code for _ in range(2)]
        assert a + b == [200, 200, 200, 429]


async def test_unreachable_redis_fails_open_logs_and_counts(settings, make_tenant, caplog):
    tenant = await make_tenant()
    async for other in _second_app(settings, redis_url="redis://127.0.0.1:1/0", redis_timeout_seconds=0.05):
        with caplog.at_level(logging.WARNING, logger="hub.ratelimit"):
            responses = [await other.get("/api/v1/deals", headers=tenant.headers()) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert responses[0].headers["x-ratelimit-limit"] == "600"
        assert "x-ratelimit-remaining" not in responses[0].headers
        assert any("rate limiter unavailable" in r.getMessage() for r in caplog.records)
        metrics = (await other.get("/metrics")).text
        assert "hub_rate_limit_fail_open_total 3.0" in metrics
        ready = await other.get("/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "degraded"
        assert body["components"]["redis"]["status"] == "down"
        assert body["components"]["database"]["status"] == "up"


async def test_ready_is_503_problem_when_the_database_is_down(settings, tmp_path):
    async for other in _second_app(settings):
        await other.app.state.hub.db.dispose()  # type: ignore[attr-defined]
        broken = "sqlite+aiosqlite:///" + str(tmp_path / "missing-dir" / "x.db")
        from core.db import Database

        other.app.state.hub.db = Database(broken)  # type: ignore[attr-defined]
        r = await other.get("/health/ready")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["components"]["database"]["status"] == "down"
        assert r.json()["code"] == "UPSTREAM_UNAVAILABLE"


async def test_health_and_ready(client, app, settings):
    assert (await client.get("/health")).json() == {"status": "ok"}
    # A worker's heartbeat, as `hub worker` writes it (tests/worker covers the real one).
    keys = Keys(settings.worker_namespace)
    await beat(app.state.hub.redis, keys, "test-worker", {}, ttl_seconds=30)
    r = await client.get("/health/ready")
    await forget(app.state.hub.redis, keys, "test-worker")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["components"]["database"]["latency_ms"] >= 0
    assert body["components"]["redis"]["status"] == "up"
    assert body["components"]["worker"] == {"status": "up", "required": False, "latency_ms": body["components"]["worker"]["latency_ms"], "error": None}


async def test_metrics_count_requests_replays_rejections_and_audit_events(client, limited_tenant):
    h = limited_tenant.headers(Role.INTEGRATION_SERVICE, **{"Idempotency-Key": "metrics-1"})
    before = (await client.get("/metrics")).text
    await client.put("/api/v1/deals/by-ref/crm/m1", json=deal_body(), headers=h)
    await client.put("/api/v1/deals/by-ref/crm/m1", json=deal_body(), headers=h)
    for _ in range(4):
        await client.get("/api/v1/deals", headers=limited_tenant.headers())
    after = (await client.get("/metrics")).text

    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    assert value(after, "hub_idempotent_replays_total") - value(before, "hub_idempotent_replays_total") == 1
    assert value(after, "hub_audit_events_written_total") - value(before, "hub_audit_events_written_total") == 1
    assert value(after, 'hub_rate_limit_rejections_total{route_class="user"}') - value(
        before, 'hub_rate_limit_rejections_total{route_class="user"}'
    ) == 1
    route = 'route="/api/v1/deals/by-ref/{system}/{external_id}"'
    assert f'hub_http_requests_total{{method="PUT",{route},status="201"}}' in after
    assert "hub_http_request_duration_seconds_bucket" in after


async def test_etag_if_none_match_and_if_match(client, tenant):
    created = await client.post("/api/v1/deals", json=deal_body(), headers=tenant.headers())
    url = f"/api/v1/deals/{created.json()['id']}"
    r = await client.get(url, headers=tenant.headers())
    tag = r.headers["etag"]
    assert tag.startswith('"') and tag == created.headers["etag"]
    r304 = await client.get(url, headers=tenant.headers(**{"If-None-Match": tag}))
    assert r304.status_code == 304 and r304.content == b""
    assert (await client.get(url, headers=tenant.headers(**{"If-None-Match": '"other"'}))).status_code == 200

    ok = await client.patch(url, json={"stage": "ic_review"}, headers=tenant.headers(**{"If-Match": tag}))
    assert ok.status_code == 200 and ok.headers["etag"] != tag
    stale = await client.patch(url, json={"stage": "closed"}, headers=tenant.headers(**{"If-Match": tag}))
    assert stale.status_code == 412 and stale.json()["code"] == "PRECONDITION_FAILED"
    assert (await client.get(url, headers=tenant.headers())).json()["stage"] == "ic_review"
    gone = await client.delete(url, headers=tenant.headers(**{"If-Match": tag}))
    assert gone.status_code == 412
    assert (await client.delete(url, headers=tenant.headers(**{"If-Match": ok.headers["etag"]}))).status_code == 204


async def test_if_match_passes_when_a_strong_tag_in_a_mixed_list_matches(client, tenant):
    """Strong comparison (RFC 9110 13.1.1): weak tags never match, but they do not spoil
    a list in which a strong tag does."""
    created = await client.post("/api/v1/deals", json=deal_body(), headers=tenant.headers())
    url = f"/api/v1/deals/{created.json()['id']}"
    tag = created.headers["etag"]
    weak_only = await client.patch(url, json={"stage": "closed"}, headers=tenant.headers(**{"If-Match": f'W/"x", W/{tag}'}))
    assert weak_only.status_code == 412 and weak_only.json()["code"] == "PRECONDITION_FAILED"
    mixed = await client.patch(url, json={"stage": "ic_review"}, headers=tenant.headers(**{"If-Match": f'W/"x", {tag}'}))
    assert mixed.status_code == 200, mixed.text
    assert mixed.json()["stage"] == "ic_review"


async def test_request_log_line_is_json_with_ids_and_no_secrets(client, tenant, caplog):
    token = make_token(tenant_id=tenant.id, roles=["ANALYST"])
    with caplog.at_level(logging.INFO):
        await client.get("/api/v1/deals", headers=tenant.headers(**{"X-Request-ID": "log-test-1"}))
        await client.get("/api/v1/deals", headers={"Authorization": f"Bearer {token}"})
        await client.get("/api/v1/deals", headers={"X-API-Key": tenant.keys[Role.ADMIN] + "x"})
        await client.post(
            "/api/v1/api-keys", json={"name": "n", "roles": ["ANALYST"]}, headers=tenant.headers()
        )
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    request_lines = [json.loads(line) for line in lines if '"msg":"request"' in line]
    first = next(r for r in request_lines if r["request_id"] == "log-test-1")
    assert first["tenant_id"] == tenant.id and first["route"] == "/api/v1/deals" and first["status"] == 200
    assert first["duration_ms"] >= 0 and first["method"] == "GET"
    everything = "\n".join(lines) + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (*tenant.keys.values(), token):
        assert secret not in everything


def test_scrubber_removes_keys_tokens_and_webhook_secrets():
    record = logging.LogRecord("x", logging.INFO, "", 0, "got %s and %s", ("hub_0123456789ab_SeCrEt-value", "Bearer abc.def.ghi"), None)
    record.webhook = "whsec_c2VjcmV0c2VjcmV0"
    line = JsonFormatter().format(record)
    assert "SeCrEt" not in line and "abc.def" not in line and "c2VjcmV0" not in line
    assert line.count("[REDACTED]") == 3


async def test_rate_limit_state_lives_in_redis(settings, limited_tenant, client):
    await client.get("/api/v1/deals", headers=limited_tenant.headers())
    redis = Redis.from_url(settings.redis_url)
    try:
        assert await redis.exists(f"ratelimit:{limited_tenant.id}:user") == 1
    finally:
        await redis.aclose()




async def test_unknown_methods_share_one_metrics_label(client, tenant):
    r = await client.request("BREW", "/api/v1/deals", headers=tenant.headers())
    assert r.status_code == 405
    metrics = (await client.get("/metrics")).text
    assert 'method="BREW"' not in metrics and 'method="OTHER"' in metrics


def test_a_request_id_with_a_trailing_newline_is_not_taken():
    from hub.middleware import _caller_request_id

    assert _caller_request_id({"headers": [(b"x-request-id", b"abc-123")]}) == "abc-123"
    assert _caller_request_id({"headers": [(b"x-request-id", b"abc-123\n")]}) is None
