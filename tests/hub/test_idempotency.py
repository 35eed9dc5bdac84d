"""Idempotency-Key: a repeat gets the first response and causes nothing twice, also
when the repeats arrive concurrently; a key is bound to one route, payload and actor."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.models import ApiKey, AuditEvent, Deal, IdempotencyRecord, OutboxEvent
from core.roles import Role
from tests.conftest import deal_body

DEALS = "/api/v1/deals"


def _key() -> str:
    return f"idem-{uuid.uuid4()}"


async def _count(db, tenant_id, model, *where):
    async with db.read(tenant_id) as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()


async def _records(db, tenant_id, key):
    async with db.read(tenant_id) as s:
        return list((await s.execute(select(IdempotencyRecord).where(IdempotencyRecord.key == key))).scalars())


def _same_response(a, b):
    assert a.status_code == b.status_code
    assert a.content == b.content
    for header in ("location", "content-type", "x-upsert-outcome"):
        assert a.headers.get(header) == b.headers.get(header), header


async def test_replay_returns_the_first_response_and_does_nothing_again(client, tenant, db):
    key = _key()
    body = deal_body(external_refs=[{"system": "salesforce", "external_id": "IDEM-1"}])
    first = await client.post(DEALS, json=body, headers=tenant.headers(**{"Idempotency-Key": key}))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    deal_id = first.json()["id"]

    for _ in range(2):
        again = await client.post(DEALS, json=body, headers=tenant.headers(**{"Idempotency-Key": key}))
        _same_response(first, again)
        assert again.headers["idempotent-replayed"] == "true"

    assert await _count(db, tenant.id, Deal) == 1
    assert await _count(db, tenant.id, AuditEvent, AuditEvent.resource_id == deal_id) == 1
    assert await _count(db, tenant.id, OutboxEvent, OutboxEvent.resource_id == deal_id) == 1
    # The audit event carries the key.
    async with db.read(tenant.id) as s:
        event = (await s.execute(select(AuditEvent).where(AuditEvent.resource_id == deal_id))).scalar_one()
    assert event.idempotency_key == key

    # Without the key, the same body is a new request (here: a conflict on the ref).
    r = await client.post(DEALS, json=body, headers=tenant.headers())
    assert r.status_code == 409 and r.json()["code"] == "CONFLICT"


async def test_replay_of_a_patch_does_not_apply_it_twice(client, tenant, db):
    deal = (await client.post(DEALS, json=deal_body(), headers=tenant.headers())).json()
    key = _key()
    url = f"{DEALS}/{deal['id']}"
    first = await client.patch(url, json={"stage": "ic_review"}, headers=tenant.headers(**{"Idempotency-Key": key}))
    assert first.status_code == 200 and first.json()["version"] == 2
    # Someone else changes the deal; the replay still answers what the first call answered.
    await client.patch(url, json={"stage": "closing"}, headers=tenant.headers())
    again = await client.patch(url, json={"stage": "ic_review"}, headers=tenant.headers(**{"Idempotency-Key": key}))
    _same_response(first, again)
    assert again.headers["idempotent-replayed"] == "true"
    current = (await client.get(url, headers=tenant.headers())).json()
    assert current["stage"] == "closing" and current["version"] == 3
    assert await _count(db, tenant.id, AuditEvent, AuditEvent.resource_id == deal["id"]) == 3


async def test_same_key_with_another_payload_is_409(client, tenant, db):
    key = _key()
    headers = tenant.headers(**{"Idempotency-Key": key})
    assert (await client.post(DEALS, json=deal_body("First"), headers=headers)).status_code == 201
    r = await client.post(DEALS, json=deal_body("Second"), headers=headers)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert "idempotent-replayed" not in r.headers
    assert await _count(db, tenant.id, Deal) == 1


async def test_same_key_on_another_route_is_409(client, tenant, db):
    key = _key()
    headers = tenant.headers(**{"Idempotency-Key": key})
    created = await client.put(f"{DEALS}/by-ref/salesforce/K-1", json=deal_body(), headers=headers)
    assert created.status_code == 201
    # Another path with the same body...
    r = await client.put(f"{DEALS}/by-ref/salesforce/K-2", json=deal_body(), headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    # ...another method and route.
    r = await client.post(DEALS, json=deal_body(), headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    r = await client.patch(f"{DEALS}/{created.json()['id']}", json={"stage": "x"}, headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await _count(db, tenant.id, Deal) == 1
    assert (await client.get(f"{DEALS}/{created.json()['id']}", headers=tenant.headers())).json()["stage"] == "diligence"


async def test_keys_are_scoped_per_actor(client, tenant, other_tenant, db):
    key = _key()
    body = deal_body()
    responses = []
    for handle, role in ((tenant, Role.ADMIN), (tenant, Role.ANALYST), (tenant, Role.PARTNER), (other_tenant, Role.ADMIN)):
        r = await client.post(DEALS, json=body, headers=handle.headers(role, **{"Idempotency-Key": key}))
        assert r.status_code == 201, r.text
        assert "idempotent-replayed" not in r.headers
        responses.append(r.json()["id"])
    assert len(set(responses)) == 4
    assert await _count(db, tenant.id, Deal) == 3
    assert await _count(db, other_tenant.id, Deal) == 1
    # Each actor replays its own response.
    r = await client.post(DEALS, json=body, headers=tenant.headers(Role.ANALYST, **{"Idempotency-Key": key}))
    assert r.headers["idempotent-replayed"] == "true" and r.json()["id"] == responses[1]


async def test_invalid_key_is_422(client, tenant, db):
    for key in ("k" * 256, ""):
        r = await client.post(DEALS, json=deal_body(), headers=tenant.headers(**{"Idempotency-Key": key}))
        assert r.status_code == 422, (key, r.text)
        assert r.json()["code"] == "VALIDATION_FAILED"
    # The longest valid key works.
    r = await client.post(DEALS, json=deal_body(), headers=tenant.headers(**{"Idempotency-Key": "k" * 255}))
    assert r.status_code == 201
    assert await _count(db, tenant.id, Deal) == 1


async def test_concurrent_duplicates_run_once(client, tenant, db):
    key = _key()
    headers = tenant.headers(Role.INTEGRATION_SERVICE, **{"Idempotency-Key": key})
    url = f"{DEALS}/by-ref/salesforce/CONC-1"
    responses = await asyncio.gather(*(client.put(url, json=deal_body(), headers=headers) for _ in range(50)))

    assert {r.status_code for r in responses} == {201}, [r.text for r in responses if r.status_code != 201][:3]
    assert len({r.content for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    deal_id = responses[0].json()["id"]
    assert await _count(db, tenant.id, Deal) == 1
    assert await _count(db, tenant.id, AuditEvent, AuditEvent.resource_id == deal_id) == 1
    assert await _count(db, tenant.id, OutboxEvent, OutboxEvent.resource_id == deal_id) == 1
    assert len(await _records(db, tenant.id, key)) == 1


async def test_concurrent_creates_with_one_key_make_one_deal(client, tenant, db):
    """POST has no natural key: only the idempotency key stops the duplicates."""
    key = _key()
    headers = tenant.headers(**{"Idempotency-Key": key})
    responses = await asyncio.gather(*(client.post(DEALS, json=deal_body(), headers=headers) for _ in range(20)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert await _count(db, tenant.id, Deal) == 1


async def test_api_key_issue_replay_never_returns_the_secret(client, tenant, db):
    key = _key()
    body = {"name": "salesforce push", "roles": ["INTEGRATION_SERVICE"]}
    first = await client.post("/api/v1/api-keys", json=body, headers=tenant.headers(**{"Idempotency-Key": key}))
    assert first.status_code == 201, first.text
    secret = first.json()["key"]
    assert secret and secret.startswith("hub_")

    again = await client.post("/api/v1/api-keys", json=body, headers=tenant.headers(**{"Idempotency-Key": key}))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["key"] is None
    assert {k: v for k, v in again.json().items() if k != "key"} == {k: v for k, v in first.json().items() if k != "key"}
    assert secret not in again.text

    # One key was issued, and its secret is nowhere in the idempotency store.
    assert await _count(db, tenant.id, ApiKey, ApiKey.name == "salesforce push") == 1
    (record,) = await _records(db, tenant.id, key)
    stored = (record.body or b"") + repr(record.headers).encode()
    assert secret.encode() not in stored
    assert secret.split("_")[-1].encode() not in stored
    # The issued key works.
    r = await client.get(f"{DEALS}", headers={"X-API-Key": secret})
    assert r.status_code == 200


async def test_a_failed_request_does_not_keep_the_key(client, tenant, db):
    key = _key()
    headers = tenant.headers(**{"Idempotency-Key": key})
    missing = f"{DEALS}/{uuid.uuid4()}"
    r = await client.patch(missing, json={"stage": "x"}, headers=headers)
    assert r.status_code == 404
    assert await _records(db, tenant.id, key) == []
    # The key is still free: the retry runs again (still 404, not a replay)...
    r = await client.patch(missing, json={"stage": "x"}, headers=headers)
    assert r.status_code == 404 and "idempotent-replayed" not in r.headers
    # ...and may be used for another request.
    r = await client.post(DEALS, json=deal_body(), headers=headers)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    assert len(await _records(db, tenant.id, key)) == 1


async def test_a_conflict_does_not_keep_the_key(client, tenant, db):
    refs = [{"system": "salesforce", "external_id": "TAKEN"}]
    assert (await client.post(DEALS, json=deal_body(external_refs=refs), headers=tenant.headers())).status_code == 201
    key = _key()
    body = deal_body("Second", external_refs=refs)
    r = await client.post(DEALS, json=body, headers=tenant.headers(**{"Idempotency-Key": key}))
    assert r.status_code == 409 and r.json()["code"] == "CONFLICT"
    assert await _records(db, tenant.id, key) == []
    assert await _count(db, tenant.id, Deal) == 1


async def test_delete_with_a_key_is_replayed(client, tenant, db):
    deal = (await client.post(DEALS, json=deal_body(), headers=tenant.headers())).json()
    key = _key()
    headers = tenant.headers(**{"Idempotency-Key": key})
    first = await client.delete(f"{DEALS}/{deal['id']}", headers=headers)
    assert first.status_code == 204
    again = await client.delete(f"{DEALS}/{deal['id']}", headers=headers)
    assert again.status_code == 204 and again.headers["idempotent-replayed"] == "true"
    assert await _count(db, tenant.id, AuditEvent, AuditEvent.resource_id == deal["id"],
                        AuditEvent.event_type == "deal.deleted") == 1


async def test_records_expire_after_at_least_24_hours(client, tenant, db):
    key = _key()
    r = await client.post(DEALS, json=deal_body(), headers=tenant.headers(**{"Idempotency-Key": key}))
    assert r.status_code == 201
    (record,) = await _records(db, tenant.id, key)
    assert (record.expires_at - record.created_at).total_seconds() >= 24 * 3600


async def _expire(db, tenant_id, key):
    async with db.write(tenant_id) as s:
        (record,) = (await s.execute(select(IdempotencyRecord).where(IdempotencyRecord.key == key))).scalars()
        record.expires_at = record.created_at - timedelta(seconds=1)


@pytest.mark.parametrize("route", ["create", "upsert"])
async def test_an_expired_key_is_taken_afresh(client, tenant, db, route):
    """Past its lifetime a key is free: the same key with another payload is a new request,
    not a reuse (both the single-transaction and the group-committed write paths)."""
    key = _key()

    async def send(name):
        headers = tenant.headers(**{"Idempotency-Key": key})
        if route == "create":
            return await client.post(DEALS, json=deal_body(name), headers=headers)
        return await client.put(f"{DEALS}/by-ref/salesforce/EXP-{key}", json=deal_body(name), headers=headers)

    first = await send("First")
    assert first.status_code == 201, first.text
    reused = await send("Second")
    assert reused.status_code == 409 and reused.headers["content-type"] == "application/problem+json"
    await _expire(db, tenant.id, key)

    again = await send("Second")
    assert again.status_code in (200, 201), again.text
    assert "idempotent-replayed" not in again.headers
    assert again.json()["name"] == "Second"
    (record,) = await _records(db, tenant.id, key)
    assert record.status_code == again.status_code and record.expires_at > record.created_at
