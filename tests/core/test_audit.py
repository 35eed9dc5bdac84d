"""The audit trail: what each event records, how it is listed, that the database keeps
it append-only, and that the per-tenant hash chain exposes tampering."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from core.audit import event_hash
from core.db import Database
from core.roles import Role
from tests.conftest import deal_body

EVENTS = "/api/v1/audit-events"
VERIFY = f"{EVENTS}/verify"
DEALS = "/api/v1/deals"
ROLES = (Role.ADMIN, Role.AUDITOR, Role.ANALYST, Role.INTEGRATION_SERVICE)


@pytest.fixture
async def audited(make_tenant):
    return await make_tenant(ROLES)


async def _all_events(client, tenant, **params):
    r = await client.get(EVENTS, params={"limit": 500, **params}, headers=tenant.headers(Role.AUDITOR))
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def _key_id(client, tenant, role):
    prefix = tenant.keys[role].rsplit("_", 1)[0] + "_"
    keys = (await client.get("/api/v1/api-keys", headers=tenant.headers())).json()["items"]
    (key,) = [k for k in keys if k["prefix"] == prefix]
    return key["id"]


async def _make_deals(client, tenant, n):
    ids = []
    for i in range(n):
        r = await client.post(DEALS, json=deal_body(f"Deal {i}"), headers=tenant.headers())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


async def _verify(client, tenant):
    r = await client.get(VERIFY, headers=tenant.headers(Role.AUDITOR))
    assert r.status_code == 200, r.text
    return r.json()


# --- what an event records ------------------------------------------------------------------


async def test_events_record_who_did_what_to_which_resource(client, audited):
    before = datetime.now().astimezone()
    headers = audited.headers(Role.INTEGRATION_SERVICE, **{"X-Request-ID": "req-audit-42", "Idempotency-Key": "idem-audit-42"})
    r = await client.put(f"{DEALS}/by-ref/salesforce/AUD-1", json=deal_body(), headers=headers)
    assert r.status_code == 201, r.text
    assert r.headers["x-request-id"] == "req-audit-42"
    deal_id = r.json()["id"]
    r = await client.patch(f"{DEALS}/{deal_id}", json={"stage": "ic_review"},
                           headers=audited.headers(Role.ADMIN, **{"X-Correlation-ID": "corr-7"}))
    assert r.status_code == 200

    created, updated = await _all_events(client, audited, resource_id=deal_id)
    integration_key = await _key_id(client, audited, Role.INTEGRATION_SERVICE)
    assert created["event_type"] == "deal.created"
    assert created["actor"] == {"kind": "api_key", "id": integration_key, "roles": ["INTEGRATION_SERVICE"]}
    assert created["resource"] == {"type": "deal", "id": deal_id}
    assert created["request_id"] == "req-audit-42"
    assert created["idempotency_key"] == "idem-audit-42"
    assert created["changes"]["before"] is None
    assert created["changes"]["after"]["name"] == "Acme Series B"
    assert created["changes"]["after"]["amount"] == "25000000.00"
    occurred = datetime.fromisoformat(created["occurred_at"].replace("Z", "+00:00"))
    assert before <= occurred <= datetime.now().astimezone()

    assert updated["event_type"] == "deal.updated"
    assert updated["actor"] == {"kind": "api_key", "id": await _key_id(client, audited, Role.ADMIN), "roles": ["ADMIN"]}
    assert updated["request_id"] == "corr-7"
    assert updated["idempotency_key"] is None
    assert updated["changes"] == {"before": {"stage": "diligence"}, "after": {"stage": "ic_review"}}
    assert updated["seq"] == created["seq"] + 1
    assert updated["prev_hash"] == created["hash"]


async def test_a_request_without_an_id_gets_one_and_the_event_carries_it(client, audited):
    r = await client.post(DEALS, json=deal_body(), headers=audited.headers())
    request_id = r.headers["x-request-id"]
    assert request_id
    (event,) = await _all_events(client, audited, resource_id=r.json()["id"])
    assert event["request_id"] == request_id
    assert await _all_events(client, audited, request_id=request_id) == [event]


async def test_a_deal_delete_records_the_last_state(client, audited):
    (deal_id,) = await _make_deals(client, audited, 1)
    assert (await client.delete(f"{DEALS}/{deal_id}", headers=audited.headers())).status_code == 204
    event = (await _all_events(client, audited, resource_id=deal_id, event_type="deal.deleted"))[0]
    assert event["changes"]["after"] is None
    assert event["changes"]["before"]["name"] == "Deal 0"


# --- listing --------------------------------------------------------------------------------


async def test_filters(client, audited):
    a, b, c = await _make_deals(client, audited, 3)
    await client.patch(f"{DEALS}/{b}", json={"stage": "closing"}, headers=audited.headers())

    created = await _all_events(client, audited, event_type="deal.created")
    assert [e["resource"]["id"] for e in created] == [a, b, c]
    assert [e["event_type"] for e in await _all_events(client, audited, resource_id=b)] == ["deal.created", "deal.updated"]
    assert len(await _all_events(client, audited, event_type="api_key.created")) == len(ROLES)
    assert len(await _all_events(client, audited, resource_type="api_key")) == len(ROLES)
    assert await _all_events(client, audited, event_type="deal.nothing") == []

    # since is inclusive, until exclusive.
    t_b = created[1]["occurred_at"]
    since_b = await _all_events(client, audited, since=t_b)
    assert [e["resource"]["id"] for e in since_b] == [b, c, b]
    until_b = await _all_events(client, audited, until=t_b, resource_type="deal")
    assert [e["resource"]["id"] for e in until_b] == [a]
    between = await _all_events(client, audited, since=created[0]["occurred_at"], until=created[2]["occurred_at"])
    assert [e["resource"]["id"] for e in between] == [a, b]
    assert await _all_events(client, audited, since="2999-01-01T00:00:00Z") == []
    r = await client.get(EVENTS, params={"since": "2024-01-01T00:00:00"}, headers=audited.headers(Role.AUDITOR))
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED"  # no offset: refused, not guessed

    admin = await _key_id(client, audited, Role.ADMIN)
    assert len(await _all_events(client, audited, actor_id=admin, resource_type="deal")) == 4


async def test_pagination_and_order(client, audited):
    await _make_deals(client, audited, 5)
    everything = await _all_events(client, audited)
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))

    for order, expected in (("asc", everything), ("desc", everything[::-1])):
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 3, "order": order, **({"cursor": cursor} if cursor else {})}
            r = await client.get(EVENTS, params=params, headers=audited.headers(Role.AUDITOR))
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["items"]) <= 3
            seen += page["items"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [e["id"] for e in seen] == [e["id"] for e in expected], order
        assert pages == -(-len(expected) // 3)

    r = await client.get(EVENTS, params={"cursor": "abc"}, headers=audited.headers(Role.AUDITOR))
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED"
    r = await client.get(EVENTS, params={"order": "sideways"}, headers=audited.headers(Role.AUDITOR))
    assert r.status_code == 422


async def test_who_may_read_the_trail(client, audited):
    for role in (Role.AUDITOR, Role.ADMIN):
        assert (await client.get(EVENTS, headers=audited.headers(role))).status_code == 200
        assert (await client.get(VERIFY, headers=audited.headers(role))).status_code == 200
    for role in (Role.ANALYST, Role.INTEGRATION_SERVICE):
        for url in (EVENTS, VERIFY):
            r = await client.get(url, headers=audited.headers(role))
            assert r.status_code == 403, (role, url)
            assert r.json()["code"] == "FORBIDDEN"
    assert (await client.get(EVENTS)).status_code == 401


async def test_the_trail_is_per_tenant(client, make_tenant):
    mine, theirs = await make_tenant(ROLES), await make_tenant(ROLES)
    (deal_id,) = await _make_deals(client, mine, 1)
    assert await _all_events(client, theirs, resource_id=deal_id) == []
    assert all(e["resource"]["type"] == "api_key" for e in await _all_events(client, theirs))


# --- the hash chain -------------------------------------------------------------------------


async def test_verify_an_intact_chain(client, audited):
    baseline = await _verify(client, audited)
    assert baseline == {"intact": True, "events_checked": len(ROLES), "first_broken": None}
    await _make_deals(client, audited, 3)
    r = await client.post(f"{DEALS}/batch-upsert", headers=audited.headers(), json={
        "items": [{"system": "s", "external_id": str(i), "deal": {"name": f"n{i}", "attributes": {"x": [i, 0.5]}}}
                  for i in range(4)]})
    assert r.status_code == 200
    result = await _verify(client, audited)
    assert result == {"intact": True, "events_checked": len(ROLES) + 7, "first_broken": None}
    assert result["events_checked"] == len(await _all_events(client, audited))


async def test_the_database_refuses_to_change_events(db: Database, audited):
    for statement in ("UPDATE audit_events SET event_type = 'forged' WHERE tenant_id = :t",
                      "DELETE FROM audit_events WHERE tenant_id = :t"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.write(None) as session:
                await session.execute(text(statement), {"t": audited.id})


@asynccontextmanager
async def _without_append_only(db: Database) -> AsyncIterator[AsyncSession]:
    """An attacker with database admin rights: the protection is lifted, and put back in
    the same transaction, so no other test ever sees it missing."""
    async with db.write(None) as session:
        if db.dialect == "postgresql":
            await session.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
            yield session
            await session.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))
        else:
            rows = await session.execute(text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'"))
            triggers = dict(rows.all())
            assert set(triggers) == {"audit_events_no_update", "audit_events_no_delete"}
            for name in triggers:
                await session.execute(text(f"DROP TRIGGER {name}"))
            yield session
            for sql in triggers.values():
                await session.execute(text(sql))


async def _event_row(db, tenant_id, seq):
    async with db.read(tenant_id) as s:
        row = await s.execute(
            text("SELECT id, changes FROM audit_events WHERE tenant_id = :t AND seq = :s"), {"t": tenant_id, "s": seq})
        return row.one()


async def test_an_edited_event_is_named_by_verify(client, db, make_tenant):
    victim, bystander = await make_tenant(ROLES), await make_tenant(ROLES)
    for handle in (victim, bystander):
        await _make_deals(client, handle, 3)
    events = await _all_events(client, victim, event_type="deal.created")
    target = events[1]
    assert target["changes"]["after"]["amount"] == "25000000.00"

    forged = json.dumps({"before": None, "after": {**target["changes"]["after"], "amount": "1.00"}})
    async with _without_append_only(db) as session:
        cast = "CAST(:c AS jsonb)" if db.dialect == "postgresql" else ":c"
        result = await session.execute(
            text(f"UPDATE audit_events SET changes = {cast} WHERE id = :id"), {"c": forged, "id": target["id"]})
        assert result.rowcount == 1

    stored = await _event_row(db, victim.id, target["seq"])
    assert stored.id == target["id"] and "1.00" in str(stored.changes)
    result = await _verify(client, victim)
    assert result["intact"] is False
    assert result["first_broken"]["event_id"] == target["id"]
    assert result["first_broken"]["seq"] == target["seq"]
    assert result["events_checked"] == target["seq"] - 1
    assert "hash" in result["first_broken"]["reason"]

    # Another tenant's chain is untouched by it.
    assert (await _verify(client, bystander))["intact"] is True
    # The protection is back.
    for statement in ("UPDATE audit_events SET event_type = 'x' WHERE id = :id", "DELETE FROM audit_events WHERE id = :id"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.write(None) as session:
                await session.execute(text(statement), {"id": target["id"]})


async def test_a_rehashed_forgery_is_still_detected(client, db, audited):
    """Editing an event and recomputing its own hash breaks the next link."""
    await _make_deals(client, audited, 3)
    events = await _all_events(client, audited)
    target, following = events[-2], events[-1]
    row = {"id": target["id"], "tenant_id": audited.id, "seq": target["seq"], "event_type": "deal.created",
           "actor_kind": target["actor"]["kind"], "actor_id": target["actor"]["id"],
           "actor_roles": target["actor"]["roles"], "resource_type": "deal", "resource_id": "someone-else",
           "changes": target["changes"], "request_id": target["request_id"],
           "idempotency_key": target["idempotency_key"],
           "occurred_at": datetime.fromisoformat(target["occurred_at"].replace("Z", "+00:00"))}
    new_hash = event_hash(target["prev_hash"], row)
    async with _without_append_only(db) as session:
        await session.execute(text("UPDATE audit_events SET resource_id = 'someone-else', hash = :h WHERE id = :id"),
                              {"h": new_hash, "id": target["id"]})
    result = await _verify(client, audited)
    assert result["intact"] is False
    assert result["first_broken"]["event_id"] == following["id"]
    assert result["first_broken"]["seq"] == following["seq"]


async def test_a_deleted_event_is_detected(client, db, make_tenant):
    victim, bystander = await make_tenant(ROLES), await make_tenant(ROLES)
    for handle in (victim, bystander):
        await _make_deals(client, handle, 3)
    events = await _all_events(client, victim)
    middle, after_gap = events[-2], events[-1]
    async with _without_append_only(db) as session:
        result = await session.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": middle["id"]})
        assert result.rowcount == 1

    result = await _verify(client, victim)
    assert result["intact"] is False
    assert result["first_broken"]["event_id"] == after_gap["id"]
    assert result["first_broken"]["seq"] == after_gap["seq"]
    assert "sequence" in result["first_broken"]["reason"]
    assert (await _verify(client, bystander))["intact"] is True


async def test_deleting_the_newest_event_is_detected(client, db, audited):
    await _make_deals(client, audited, 2)
    newest = (await _all_events(client, audited, order="desc", limit=1))[0]
    async with _without_append_only(db) as session:
        await session.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": newest["id"]})
    result = await _verify(client, audited)
    assert result["intact"] is False
    assert result["first_broken"]["seq"] == newest["seq"]


async def test_numbers_a_json_column_rewrites_keep_the_chain_intact(client, audited):
    """PostgreSQL's jsonb turns 1e16 into 10000000000000000 and -0.0 into 0.0: the
    chain must hash what the database gives back."""
    attributes = {"whole": 1e16, "neg_zero": -0.0, "list": [2.5e17, 0.1, 1e-20], "max": 2**63 - 1}
    r = await client.post(DEALS, json=deal_body(attributes=attributes), headers=audited.headers())
    assert r.status_code == 201, r.text
    r = await client.patch(f"{DEALS}/{r.json()['id']}", json={"attributes": {"more": 1.5e18}}, headers=audited.headers())
    assert r.status_code == 200, r.text
    result = await _verify(client, audited)
    assert result["intact"] is True, result
    assert result["events_checked"] == len(ROLES) + 2
