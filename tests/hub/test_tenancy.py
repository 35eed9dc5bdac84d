"""Tenant isolation: one tenant's data can never be read, listed, counted, changed
or guessed with another tenant's credential, and the storage layer enforces the
scope by construction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from core.db import TenantScopeMissing
from core.models import ApiKey, AuditEvent, Base, Deal, DealRef, IdempotencyRecord, OutboxEvent, TenantOwned
from core.roles import Role
from tests.conftest import TenantHandle, deal_body
from tests.keys import make_token


@dataclass
class Seeded:
    handle: TenantHandle
    deal_ids: list[str]
    refs: list[str]  # external ids in system "salesforce"
    deal_names: list[str]


async def seed(client, handle: TenantHandle, label: str) -> Seeded:
    """Deals created the way a CRM does: upserts by external reference."""
    ids, refs, names = [], [], []
    for i in range(3):
        ext = f"{label}-{uuid.uuid4().hex[:10]}"
        name = f"{label} deal {i} {uuid.uuid4().hex[:6]}"
        r = await client.put(
            f"/api/v1/deals/by-ref/salesforce/{ext}",
            json=deal_body(name, company=f"{label} company"),
            headers=handle.headers(Role.INTEGRATION_SERVICE),
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        refs.append(ext)
        names.append(name)
    return Seeded(handle, ids, refs, names)


async def snapshot(client, b: Seeded) -> dict[str, Any]:
    """Everything B can see of its own data."""
    deals = []
    for deal_id in b.deal_ids:
        r = await client.get(f"/api/v1/deals/{deal_id}", headers=b.handle.headers(Role.ANALYST))
        assert r.status_code == 200, r.text
        deals.append(r.json())
    listing = await client.get("/api/v1/deals", params={"limit": 200}, headers=b.handle.headers(Role.ANALYST))
    trail = await client.get("/api/v1/audit-events", params={"limit": 500}, headers=b.handle.headers(Role.AUDITOR))
    keys = await client.get("/api/v1/api-keys", headers=b.handle.headers(Role.ADMIN))
    verify = await client.get("/api/v1/audit-events/verify", headers=b.handle.headers(Role.AUDITOR))
    assert verify.status_code == 200
    assert verify.json()["intact"] is True
    return {
        "deals": deals,
        "listing": listing.json()["items"],
        "trail": trail.json()["items"],
        "keys": keys.json()["items"],
        "verify": verify.json(),
    }


def secrets_of(b: Seeded, b_key_ids: list[str]) -> list[str]:
    """Strings that must never appear in a response given to another tenant."""
    return [b.handle.id, b.handle.name, *b.deal_ids, *b.refs, *b.deal_names, *b_key_ids, "B company"]


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


@pytest.fixture(params=["api_key", "jwt"])
def a_admin(request):
    """Tenant A's ADMIN credential, as an API key or as a JWT."""

    def headers(a: TenantHandle) -> dict[str, str]:
        if request.param == "api_key":
            return a.headers(Role.ADMIN)
        return {"Authorization": f"Bearer {make_token(tenant_id=a.id, roles=['ADMIN'], sub='a-admin')}"}

    return headers


async def test_cross_tenant_access_answers_404_and_reveals_nothing(client, make_tenant, a_admin):
    a_handle, b_handle = await make_tenant(), await make_tenant()
    a = await seed(client, a_handle, "A")
    b = await seed(client, b_handle, "B")
    b_keys = (await client.get("/api/v1/api-keys", headers=b_handle.headers())).json()["items"]
    b_key_ids = [k["id"] for k in b_keys]
    before = await snapshot(client, b)
    forbidden = secrets_of(b, b_key_ids)
    as_a = a_admin(a_handle)
    b_deal, b_ref = b.deal_ids[0], b.refs[0]
    unknown = str(uuid.uuid4())

    def assert_reveals_nothing(text: str) -> None:
        for value in forbidden:
            assert value not in text, value

    async def assert_same_404(method: str, path_b: str, path_unknown: str, **kwargs: Any) -> None:
        """B's id answers exactly like an id that exists nowhere."""
        r_b = await client.request(method, path_b, headers=as_a, **kwargs)
        r_unknown = await client.request(method, path_unknown, headers=as_a, **kwargs)
        assert r_b.status_code == 404, (method, path_b, r_b.text)
        assert r_b.headers["content-type"].startswith("application/problem+json")
        assert r_b.json()["code"] == "NOT_FOUND"
        assert without_request_id(r_b.json()) == without_request_id(r_unknown.json())
        assert r_unknown.status_code == 404
        assert "etag" not in r_b.headers
        assert_reveals_nothing(r_b.text)

    # Single resources by id.
    await assert_same_404("GET", f"/api/v1/deals/{b_deal}", f"/api/v1/deals/{unknown}")
    await assert_same_404(
        "PATCH", f"/api/v1/deals/{b_deal}", f"/api/v1/deals/{unknown}", json={"name": "hijacked", "stage": "lost"}
    )
    await assert_same_404(
        "PATCH", f"/api/v1/deals/{b_deal}", f"/api/v1/deals/{unknown}", json={"stage": "lost"},
    )
    await assert_same_404("DELETE", f"/api/v1/deals/{b_deal}", f"/api/v1/deals/{unknown}")
    await assert_same_404("DELETE", f"/api/v1/api-keys/{b_key_ids[0]}", f"/api/v1/api-keys/{unknown}")
    await assert_same_404(
        "GET", f"/api/v1/deals/by-ref/salesforce/{b_ref}", f"/api/v1/deals/by-ref/salesforce/{unknown}"
    )

    # Lists and filters: never a row, a count or a cursor from B.
    r = await client.get("/api/v1/deals", params={"system": "salesforce", "external_id": b_ref}, headers=as_a)
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    r = await client.get("/api/v1/deals", params={"limit": 200, "sort": "name"}, headers=as_a)
    assert r.status_code == 200
    assert sorted(d["id"] for d in r.json()["items"]) == sorted(a.deal_ids)
    assert_reveals_nothing(r.text)
    r = await client.get("/api/v1/audit-events", params={"resource_id": b_deal}, headers=as_a)
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    r = await client.get("/api/v1/audit-events", params={"limit": 500}, headers=as_a)
    assert r.status_code == 200
    a_trail = r.json()["items"]
    assert a_trail  # A has events of its own, and only those
    assert {e["resource"]["id"] for e in a_trail}.isdisjoint({*b.deal_ids, *b_key_ids})
    assert {e["id"] for e in a_trail}.isdisjoint({e["id"] for e in before["trail"]})
    assert_reveals_nothing(r.text)
    verify = (await client.get("/api/v1/audit-events/verify", headers=as_a)).json()
    assert verify["intact"] is True
    assert verify["events_checked"] == len(a_trail)  # B's events are not even counted
    r = await client.get("/api/v1/api-keys", headers=as_a)
    assert r.status_code == 200
    assert {k["id"] for k in r.json()["items"]}.isdisjoint(b_key_ids)
    assert_reveals_nothing(r.text)

    # A cursor B was given, replayed by A, still pages A's rows only.
    b_page = await client.get("/api/v1/deals", params={"limit": 1}, headers=b_handle.headers(Role.ANALYST))
    b_cursor = b_page.json()["next_cursor"]
    assert b_cursor
    r = await client.get("/api/v1/deals", params={"limit": 200, "cursor": b_cursor}, headers=as_a)
    assert r.status_code == 200, r.text
    assert {d["id"] for d in r.json()["items"]} <= set(a.deal_ids)
    assert_reveals_nothing(r.text)

    # Upserting B's external reference creates A's own deal; B's deal is untouched.
    r = await client.put(f"/api/v1/deals/by-ref/salesforce/{b_ref}", json=deal_body("A's own"), headers=as_a)
    assert r.status_code == 201, r.text
    assert r.json()["id"] not in b.deal_ids
    assert r.json()["name"] == "A's own" and r.json()["version"] == 1
    assert_reveals_nothing(r.text.replace(b_ref, ""))
    r = await client.get(f"/api/v1/deals/by-ref/salesforce/{b_ref}", headers=as_a)
    assert r.status_code == 200 and r.json()["name"] == "A's own"
    # The same for a create naming B's reference and for a batch upsert.
    r = await client.post(
        "/api/v1/deals",
        json=deal_body("A create", external_refs=[{"system": "salesforce", "external_id": b.refs[1]}]),
        headers=as_a,
    )
    assert r.status_code == 201, r.text
    assert r.json()["id"] not in b.deal_ids
    r = await client.post(
        "/api/v1/deals/batch-upsert",
        json={"items": [{"system": "salesforce", "external_id": b.refs[2], "deal": deal_body("A batch")}]},
        headers=as_a,
    )
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 1 and r.json()["results"][0]["deal_id"] not in b.deal_ids

    # B sees exactly what it saw before, and its trail is intact and no longer.
    after = await snapshot(client, b)
    assert after == before
    for deal_id, ref in zip(b.deal_ids, b.refs, strict=True):
        r = await client.get(f"/api/v1/deals/by-ref/salesforce/{ref}", headers=b_handle.headers(Role.ANALYST))
        assert r.json()["id"] == deal_id
    # B's key that A tried to revoke still works.
    assert (await client.get("/api/v1/me", headers=b_handle.headers(Role.ADMIN))).status_code == 200


@pytest.mark.parametrize("role", list(Role))
async def test_every_role_of_a_sees_none_of_b(client, make_tenant, role):
    a_handle, b_handle = await make_tenant(), await make_tenant()
    b = await seed(client, b_handle, "B")
    headers = a_handle.headers(role)
    for path in (
        "/api/v1/deals",
        f"/api/v1/deals/{b.deal_ids[0]}",
        f"/api/v1/deals/by-ref/salesforce/{b.refs[0]}",
        "/api/v1/audit-events",
        f"/api/v1/audit-events?resource_id={b.deal_ids[0]}",
        "/api/v1/api-keys",
        "/api/v1/me",
    ):
        r = await client.get(path, headers=headers)
        assert r.status_code in (200, 403, 404), (path, r.status_code)
        for value in secrets_of(b, []):
            assert value not in r.text, (path, value)


# --------------------------------------------------------------------------- storage layer


TENANT_MODELS = sorted(
    (m.class_ for m in Base.registry.mappers if issubclass(m.class_, TenantOwned)), key=lambda c: c.__name__
)


def test_every_tenant_table_is_tenant_owned():
    names = {cls.__name__ for cls in TENANT_MODELS}
    assert {"ApiKey", "Deal", "DealRef", "AuditEvent", "AuditHead", "OutboxEvent", "IdempotencyRecord"} <= names
    # Every table with a tenant_id column is scoped by the mixin.
    for mapper in Base.registry.mappers:
        if "tenant_id" in mapper.columns:
            assert issubclass(mapper.class_, TenantOwned), mapper.class_.__name__


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda m: m.__name__)
async def test_query_without_tenant_scope_raises(db, tenant, model):
    async with db.read(None) as session:
        with pytest.raises(TenantScopeMissing):
            await session.execute(select(model))
        with pytest.raises(TenantScopeMissing):
            await session.execute(select(func.count()).select_from(model))


async def test_write_without_tenant_scope_raises(db, tenant):
    async with db.write(None) as session:
        with pytest.raises(TenantScopeMissing):
            await session.execute(update(Deal).values(name="x"))
    async with db.write(None) as session:
        with pytest.raises(TenantScopeMissing):
            await session.execute(delete(Deal))


async def test_cross_tenant_opt_out_is_explicit(db, tenant, other_tenant):
    async with db.read(None) as session:
        stmt = select(ApiKey.tenant_id).execution_options(cross_tenant=True)
        owners = set((await session.execute(stmt)).scalars())
    assert {tenant.id, other_tenant.id} <= owners


async def test_tenant_session_cannot_see_or_change_another_tenants_rows(client, db, make_tenant):
    a_handle, b_handle = await make_tenant(), await make_tenant()
    b = await seed(client, b_handle, "B")
    b_id = b.deal_ids[0]

    async with db.read(a_handle.id) as session:
        assert (await session.execute(select(Deal).where(Deal.id == b_id))).scalar_one_or_none() is None
        assert await session.get(Deal, b_id) is None
        assert (await session.execute(select(DealRef).where(DealRef.deal_id == b_id))).all() == []
        joined = select(Deal).join(DealRef, DealRef.deal_id == Deal.id).where(DealRef.external_id == b.refs[0])
        assert (await session.execute(joined)).all() == []
        assert (await session.execute(select(func.count(Deal.id)))).scalar_one() == 0
        assert (await session.execute(select(func.count()).select_from(Deal))).scalar_one() == 0
        assert (await session.execute(select(func.count()).select_from(DealRef))).scalar_one() == 0
        assert (await session.execute(select(AuditEvent).where(AuditEvent.resource_id == b_id))).all() == []
        assert (await session.execute(select(OutboxEvent).where(OutboxEvent.resource_id == b_id))).all() == []
        assert (await session.execute(select(ApiKey).where(ApiKey.tenant_id == b_handle.id))).all() == []
        assert (await session.execute(select(IdempotencyRecord))).all() == []

    async with db.write(a_handle.id) as session:
        updated = await session.execute(update(Deal).where(Deal.id == b_id).values(name="hijacked"))
        assert updated.rowcount == 0
        deleted = await session.execute(delete(DealRef).where(DealRef.deal_id == b_id))
        assert deleted.rowcount == 0

    async with db.read(b_handle.id) as session:
        deal = await session.get(Deal, b_id)
        assert deal is not None
        assert deal.name == b.deal_names[0]
        assert [r.external_id for r in deal.refs] == [b.refs[0]]
        assert (await session.execute(select(func.count(Deal.id)))).scalar_one() == 3
        assert (await session.execute(select(func.count()).select_from(Deal))).scalar_one() == 3


async def test_tenant_session_cannot_insert_rows_for_another_tenant(db, make_tenant):
    a_handle, b_handle = await make_tenant(), await make_tenant()
    with pytest.raises(TenantScopeMissing):
        async with db.write(a_handle.id) as session:
            session.add(Deal(id=str(uuid.uuid4()), tenant_id=b_handle.id, name="planted", attributes={}))
            await session.flush()
    async with db.read(b_handle.id) as session:
        assert (await session.execute(select(func.count(Deal.id)))).scalar_one() == 0
    # A row without a tenant takes the session's tenant.
    async with db.write(a_handle.id) as session:
        deal = Deal(id=str(uuid.uuid4()), name="stamped", attributes={})
        session.add(deal)
        await session.flush()
        assert deal.tenant_id == a_handle.id
