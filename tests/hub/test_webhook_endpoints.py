"""The webhook endpoint and run routes: secrets shown once, conditional requests,
validation, tenancy, and URLs that may not receive webhooks."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core import addresses
from core.models import AuditEvent, OutboxEvent, WebhookDelivery, WebhookEndpoint, utcnow
from core.roles import Role
from hub.app import create_app
from tests.conftest import TenantHandle, deal_body

PROBLEM = "application/problem+json"
URL = "http://127.0.0.1:9/hooks"  # the test settings allow loopback receivers


async def create(client: Any, tenant: TenantHandle, **body: Any) -> httpx.Response:
    payload = {"url": URL, "event_types": ["deal.*"], **body}
    return await client.post("/api/v1/webhook-endpoints", json=payload, headers=tenant.headers())


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["code"] == code
    return body


async def test_create_shows_the_secret_once(client, db, tenant):
    r = await create(client, tenant, description="CRM sync")
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert created["enabled"] is True and created["event_types"] == ["deal.*"] and created["description"] == "CRM sync"
    assert r.headers["location"] == f"/api/v1/webhook-endpoints/{created['id']}"

    fetched = await client.get(r.headers["location"], headers=tenant.headers())
    assert fetched.status_code == 200 and "secret" not in fetched.json()
    listed = await client.get("/api/v1/webhook-endpoints", headers=tenant.headers())
    assert [e["id"] for e in listed.json()["items"]] == [created["id"]]
    assert secret not in fetched.text + listed.text
    # Stored sealed, and absent from the audit trail.
    async with db.read(tenant.id) as session:
        row = (await session.execute(select(WebhookEndpoint))).scalar_one()
        trail = (await session.execute(select(AuditEvent))).scalars().all()
    assert secret.encode() not in row.secret_ciphertext and row.secret_key_id
    assert all(secret not in str(event.changes) for event in trail)


async def test_an_idempotent_replay_of_create_does_not_show_the_secret_again(client, tenant):
    headers = tenant.headers(**{"Idempotency-Key": str(uuid.uuid4())})
    body = {"url": URL, "event_types": ["*"]}
    first = await client.post("/api/v1/webhook-endpoints", json=body, headers=headers)
    again = await client.post("/api/v1/webhook-endpoints", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["secret"] and again.json()["secret"] is None
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]


async def test_conditional_get_and_patch(client, tenant):
    created = (await create(client, tenant)).json()
    url = f"/api/v1/webhook-endpoints/{created['id']}"
    first = await client.get(url, headers=tenant.headers())
    tag = first.headers["etag"]
    assert (await client.get(url, headers=tenant.headers(**{"If-None-Match": tag}))).status_code == 304

    r = await client.patch(url, json={"event_types": ["deal.created", "sync.*"], "description": "x"}, headers=tenant.headers(**{"If-Match": tag}))
    assert r.status_code == 200, r.text
    assert r.json()["event_types"] == ["deal.created", "sync.*"] and r.json()["version"] == 2
    stale = await client.patch(url, json={"description": "y"}, headers=tenant.headers(**{"If-Match": tag}))
    assert_problem(stale, 412, "PRECONDITION_FAILED")

    r = await client.patch(url, json={"enabled": False}, headers=tenant.headers())
    assert r.json()["enabled"] is False and r.json()["disabled_reason"] == "manual" and r.json()["disabled_at"]
    r = await client.patch(url, json={"enabled": True}, headers=tenant.headers())
    assert r.json()["enabled"] is True and r.json()["disabled_reason"] is None
    listed = await client.get("/api/v1/webhook-endpoints", params={"enabled": "false"}, headers=tenant.headers())
    assert listed.json()["items"] == []


async def _failed_delivery(client: Any, db: Any, tenant: TenantHandle, endpoint_id: str) -> str:
    """A delivery whose attempts all failed, as the worker leaves it (no worker runs here)."""
    r = await client.post("/api/v1/deals", json=deal_body(), headers=tenant.headers())
    assert r.status_code == 201, r.text
    async with db.write(tenant.id) as session:
        event = (await session.execute(select(OutboxEvent).where(OutboxEvent.event_type == "deal.created"))).scalar_one()
        delivery = WebhookDelivery(
            tenant_id=tenant.id, endpoint_id=endpoint_id, event_id=event.id, event_type=event.event_type,
            status="failed", attempts=4, total_attempts=4, last_status_code=500, last_error="HTTP 500",
            last_attempt_at=utcnow(), completed_at=utcnow(),
        )  # fmt: skip
        session.add(delivery)
        await session.flush()
        return delivery.id


async def test_conditional_get_of_a_delivery_follows_its_changes(client, db, tenant):
    """Clients poll a delivery while its status changes: its strong ETag answers 304 while
    the delivery is as it was, and changes with it."""
    endpoint_id = (await create(client, tenant)).json()["id"]
    url = f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{await _failed_delivery(client, db, tenant, endpoint_id)}"
    first = await client.get(url, headers=tenant.headers())
    assert first.status_code == 200 and first.json()["status"] == "failed"
    tag = first.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"')
    unchanged = await client.get(url, headers=tenant.headers(**{"If-None-Match": tag}))
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == tag

    assert (await client.post(f"{url}/replay", headers=tenant.headers())).status_code == 202
    changed = await client.get(url, headers=tenant.headers(**{"If-None-Match": tag}))
    assert changed.status_code == 200 and changed.json()["status"] == "pending"
    assert changed.headers["etag"] != tag
    again = await client.get(url, headers=tenant.headers(**{"If-None-Match": changed.headers["etag"]}))
    assert again.status_code == 304


async def test_rotation_returns_a_new_secret_and_an_overlap(client, tenant):
    created = (await create(client, tenant)).json()
    url = f"/api/v1/webhook-endpoints/{created['id']}/rotate-secret"
    r = await client.post(url, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["secret"] != created["secret"] and r.json()["secret"].startswith("whsec_")
    assert r.json()["previous_secret_expires_at"] > r.json()["updated_at"]  # 24 h by default
    r = await client.post(url, json={"overlap_seconds": 0}, headers=tenant.headers())
    assert r.json()["previous_secret_expires_at"] is None


async def test_delete(client, tenant):
    created = (await create(client, tenant)).json()
    url = f"/api/v1/webhook-endpoints/{created['id']}"
    assert (await client.delete(url, headers=tenant.headers())).status_code == 204
    assert_problem(await client.get(url, headers=tenant.headers()), 404, "NOT_FOUND")
    assert_problem(await client.delete(url, headers=tenant.headers()), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/x", "event_types": ["*"]},
        {"url": "https://user:pw@example.com/x", "event_types": ["*"]},
        {"url": "https://example.com/x#frag", "event_types": ["*"]},
        {"url": "https://no-such-host.invalid/x", "event_types": ["*"]},
        {"url": URL, "event_types": []},
        {"url": URL, "event_types": ["Deal.Created"]},
        {"url": URL, "event_types": ["deal.*.x"]},
        {"url": URL},
        {"url": URL, "event_types": ["*"], "secret": "whsec_mine"},
    ],
)
async def test_invalid_endpoints_are_refused(client, tenant, body):
    r = await client.post("/api/v1/webhook-endpoints", json=body, headers=tenant.headers())
    assert_problem(r, 422, "VALIDATION_FAILED")


async def test_another_tenants_endpoint_is_not_found(client, tenant, other_tenant):
    created = (await create(client, tenant)).json()
    base = f"/api/v1/webhook-endpoints/{created['id']}"
    for method, path in [
        ("GET", base),
        ("PATCH", base),
        ("DELETE", base),
        ("POST", f"{base}/rotate-secret"),
        ("POST", f"{base}/test"),
        ("GET", f"{base}/deliveries"),
        ("POST", f"{base}/replay"),
    ]:
        body = {"since": "2026-01-01T00:00:00Z"} if path.endswith("/replay") else ({} if method != "GET" and method != "DELETE" else None)
        r = await client.request(method, path, json=body, headers=other_tenant.headers())
        assert_problem(r, 404, "NOT_FOUND")


async def test_only_admins_manage_endpoints(client, tenant):
    for role in Role:
        r = await client.get("/api/v1/webhook-endpoints", headers=tenant.headers(role))
        assert r.status_code == (200 if role == Role.ADMIN else 403), role


async def test_unknown_deliveries_runs_and_bad_windows(client, tenant):
    created = (await create(client, tenant)).json()
    base = f"/api/v1/webhook-endpoints/{created['id']}"
    missing = str(uuid.uuid4())
    assert_problem(await client.get(f"{base}/deliveries/{missing}", headers=tenant.headers()), 404, "NOT_FOUND")
    assert_problem(await client.get(f"{base}/deliveries/{missing}/attempts", headers=tenant.headers()), 404, "NOT_FOUND")
    assert_problem(await client.post(f"{base}/deliveries/{missing}/replay", headers=tenant.headers()), 404, "NOT_FOUND")
    assert_problem(await client.post(f"{base}/replay", json={"since": "2026-01-01T00:00:00"}, headers=tenant.headers()), 422, "VALIDATION_FAILED")
    assert_problem(await client.get(f"/api/v1/runs/{missing}", headers=tenant.headers()), 404, "NOT_FOUND")
    assert_problem(await client.post(f"/api/v1/runs/{missing}/cancel", headers=tenant.headers()), 404, "NOT_FOUND")


async def test_a_queued_run_can_be_cancelled_once(client, tenant):
    created = (await create(client, tenant)).json()
    # No worker runs in this test: the replay's run stays queued.
    r = await client.post(
        f"/api/v1/webhook-endpoints/{created['id']}/replay", json={"since": "2026-01-01T00:00:00Z"}, headers=tenant.headers()
    )
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["status"] == "queued" and run["progress"] == {"records_read": 0, "records_written": 0, "records_skipped": 0, "pages": 0}
    r = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=tenant.headers(Role.INTEGRATION_SERVICE))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert_problem(await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=tenant.headers()), 409, "CONFLICT")
    listed = await client.get("/api/v1/runs", params={"status": "cancelled"}, headers=tenant.headers())
    assert [x["id"] for x in listed.json()["items"]] == [run["id"]]
    assert (await client.get("/api/v1/runs", params={"connection_id": str(uuid.uuid4())}, headers=tenant.headers())).json()["items"] == []
    # Replaying a disabled endpoint's deliveries is refused.
    await client.patch(f"/api/v1/webhook-endpoints/{created['id']}", json={"enabled": False}, headers=tenant.headers())
    r = await client.post(
        f"/api/v1/webhook-endpoints/{created['id']}/replay", json={"since": "2026-01-01T00:00:00Z"}, headers=tenant.headers()
    )
    assert_problem(r, 409, "CONFLICT")


# --------------------------------------------------------------------------- private addresses


@pytest.fixture(scope="module")
async def strict_client(settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app with the production default: private addresses refused."""
    app = create_app(settings.model_copy(update={"webhooks_allow_private": False}))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub.test") as c,
    ):
        yield c


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://10.1.2.3/hook",
        "https://172.16.0.1/hook",
        "https://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data",  # the cloud metadata service
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
    ],
)
async def test_private_loopback_and_metadata_addresses_are_refused(strict_client, tenant, url):
    r = await strict_client.post("/api/v1/webhook-endpoints", json={"url": url, "event_types": ["*"]}, headers=tenant.headers())
    body = assert_problem(r, 422, "VALIDATION_FAILED")
    assert body["details"][0]["loc"] == ["body", "url"]
    assert "HUB_WEBHOOKS_ALLOW_PRIVATE" in body["detail"]


async def test_a_public_address_is_accepted_and_a_patch_is_checked_too(strict_client, tenant):
    r = await strict_client.post(
        "/api/v1/webhook-endpoints", json={"url": "https://93.184.215.14/hook", "event_types": ["*"]}, headers=tenant.headers()
    )
    assert r.status_code == 201, r.text
    r = await strict_client.patch(
        f"/api/v1/webhook-endpoints/{r.json()['id']}", json={"url": "http://127.0.0.1/x"}, headers=tenant.headers()
    )
    assert_problem(r, 422, "VALIDATION_FAILED")


def test_every_address_of_a_host_must_be_public():
    addresses.check_addresses("example.com", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
    with pytest.raises(addresses.AddressRefused, match="private"):
        addresses.check_addresses("rebind.example", ["93.184.215.14", "10.0.0.5"])
    assert addresses.refusal("169.254.169.254") is not None
    assert addresses.refusal("224.0.0.1") == "multicast"
    assert addresses.refusal("8.8.8.8") is None
