"""Deals over HTTP: create, read, merge-patch, soft delete, and the list with its
cursor pagination, filters and sorts."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta, timezone

import orjson
from sqlalchemy import func, select

from core.models import AuditEvent, OutboxEvent
from core.roles import Role
from tests.conftest import deal_body

DEALS = "/api/v1/deals"


async def _create(client, tenant, name="Acme Series B", refs=(), **fields):
    body = deal_body(name, **fields)
    body["external_refs"] = [{"system": s, "external_id": e} for s, e in refs]
    r = await client.post(DEALS, json=body, headers=tenant.headers())
    assert r.status_code == 201, r.text
    return r.json()


async def test_external_refs_keep_the_order_they_were_given_in(client, tenant, db):
    refs = [("zeta", "9"), ("alpha", "1"), ("mid", "5")]
    deal = await _create(client, tenant, refs=refs)
    expected = [{"system": s, "external_id": e} for s, e in refs]
    assert deal["external_refs"] == expected
    for _ in range(3):  # read back (the ORM) and through the upsert's own loading
        assert (await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())).json()["external_refs"] == expected
    r = await client.put(f"{DEALS}/by-ref/alpha/1", json=deal_body("Renamed"), headers=tenant.headers())
    assert r.status_code == 200 and r.json()["external_refs"] == expected


async def _audit_count(db, tenant_id, resource_id):
    async with db.read(tenant_id) as s:
        stmt = select(func.count()).select_from(AuditEvent).where(AuditEvent.resource_id == resource_id)
        return (await s.execute(stmt)).scalar_one()


async def _outbox_count(db, tenant_id, resource_id):
    async with db.read(tenant_id) as s:
        stmt = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.resource_id == resource_id)
        return (await s.execute(stmt)).scalar_one()


async def _walk(client, tenant, params):
    """Every page of a listing, following next_cursor; returns the pages' ids."""
    pages, cursor = [], None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = await client.get(DEALS, params=query, headers=tenant.headers())
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append([d["id"] for d in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not terminate"


def _problem(r, status, code):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["code"] == code
    assert body["request_id"] == r.headers["x-request-id"]
    return body


# --- create and read -------------------------------------------------------------------


async def test_create_returns_201_location_and_the_deal(client, tenant, db):
    body = deal_body(external_refs=[{"system": "salesforce", "external_id": "006X1"}])
    r = await client.post(DEALS, json=body, headers=tenant.headers(Role.ANALYST))
    assert r.status_code == 201, r.text
    deal = r.json()
    assert r.headers["location"] == f"{DEALS}/{deal['id']}"
    assert deal["name"] == "Acme Series B"
    assert deal["amount"] == "25000000.00"
    assert deal["close_date"] == "2027-03-31"
    assert deal["attributes"] == {"sector": "fintech"}
    assert deal["external_refs"] == [{"system": "salesforce", "external_id": "006X1"}]
    assert deal["version"] == 1

    got = await client.get(r.headers["location"], headers=tenant.headers(Role.ANALYST))
    assert got.status_code == 200
    assert got.json() == deal
    by_ref = await client.get(f"{DEALS}/by-ref/salesforce/006X1", headers=tenant.headers())
    assert by_ref.status_code == 200 and by_ref.json()["id"] == deal["id"]
    assert await _audit_count(db, tenant.id, deal["id"]) == 1
    assert await _outbox_count(db, tenant.id, deal["id"]) == 1


async def test_create_with_a_taken_ref_is_a_conflict_and_writes_nothing(client, tenant, db):
    first = await _create(client, tenant, refs=[("salesforce", "DUP-1")])
    body = deal_body("Other", external_refs=[{"system": "dealcloud", "external_id": "free"},
                                             {"system": "salesforce", "external_id": "DUP-1"}])
    r = await client.post(DEALS, json=body, headers=tenant.headers())
    problem = _problem(r, 409, "CONFLICT")
    assert "salesforce/DUP-1" in str(problem["details"])
    # The free ref was not taken by a half-created deal.
    assert (await client.get(f"{DEALS}/by-ref/dealcloud/free", headers=tenant.headers())).status_code == 404
    listed = (await client.get(DEALS, headers=tenant.headers())).json()["items"]
    assert [d["id"] for d in listed] == [first["id"]]


async def test_create_rejects_invalid_fields(client, tenant):
    for bad in ({"name": ""}, {"amount": "-1"}, {"currency": "usd"}, {"unknown": 1},
                {"external_refs": [{"system": "Sales Force", "external_id": "1"}]}):
        r = await client.post(DEALS, json=deal_body(**bad), headers=tenant.headers())
        _problem(r, 422, "VALIDATION_FAILED")
    assert (await client.get(DEALS, headers=tenant.headers())).json()["items"] == []


async def test_get_unknown_deal_is_404_problem(client, tenant):
    r = await client.get(f"{DEALS}/{uuid.uuid4()}", headers=tenant.headers())
    _problem(r, 404, "NOT_FOUND")


# --- PATCH ------------------------------------------------------------------------------


async def test_patch_changes_only_the_given_fields(client, tenant, db):
    deal = await _create(client, tenant)
    r = await client.patch(f"{DEALS}/{deal['id']}", json={"stage": "ic_review", "amount": "30000000"},
                           headers=tenant.headers(Role.PARTNER))
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["stage"] == "ic_review"
    assert patched["amount"] == "30000000"
    assert patched["version"] == 2
    for unchanged in ("name", "currency", "close_date", "company", "owner", "attributes", "created_at"):
        assert patched[unchanged] == deal[unchanged]
    assert patched["updated_at"] > deal["updated_at"]
    assert (await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())).json() == patched

    async with db.read(tenant.id) as s:
        event = (await s.execute(
            select(AuditEvent).where(AuditEvent.resource_id == deal["id"], AuditEvent.event_type == "deal.updated")
        )).scalar_one()
    assert event.changes == {
        "before": {"amount": "25000000.00", "stage": "diligence"},
        "after": {"amount": "30000000", "stage": "ic_review"},
    }


async def test_patch_null_clears_a_field(client, tenant):
    deal = await _create(client, tenant)
    r = await client.patch(f"{DEALS}/{deal['id']}", json={"company": None, "amount": None}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["company"] is None and r.json()["amount"] is None
    assert r.json()["name"] == deal["name"]


async def test_patch_merges_attributes_and_null_removes_keys(client, tenant):
    deal = await _create(client, tenant, attributes={"sector": "fintech", "hq": {"city": "Berlin", "country": "DE"},
                                                     "tier": 1})
    patch = {"attributes": {"sector": None, "hq": {"city": None, "zip": "10115"}, "lead": "jane"}}
    r = await client.patch(f"{DEALS}/{deal['id']}", json=patch, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["attributes"] == {"hq": {"country": "DE", "zip": "10115"}, "tier": 1, "lead": "jane"}
    got = await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())
    assert got.json()["attributes"] == {"hq": {"country": "DE", "zip": "10115"}, "tier": 1, "lead": "jane"}


async def test_patch_attributes_follow_rfc_7396_below_new_or_scalar_members(client, tenant):
    """Nulls inside an object patched onto a member that is absent or not an object remove
    nothing and are not stored: the object is merged into an empty one."""
    deal = await _create(client, tenant, attributes={"tier": 1, "hq": {"city": "Berlin"}})
    patch = {"attributes": {"fund": {"vintage": 2026, "lead": None}, "tier": {"level": 2, "old": None}}}
    r = await client.patch(f"{DEALS}/{deal['id']}", json=patch, headers=tenant.headers())
    assert r.status_code == 200, r.text
    expected = {"fund": {"vintage": 2026}, "tier": {"level": 2}, "hq": {"city": "Berlin"}}
    assert r.json()["attributes"] == expected
    assert (await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())).json()["attributes"] == expected


async def test_patch_attributes_null_clears_them(client, tenant):
    deal = await _create(client, tenant, attributes={"sector": "fintech"})
    r = await client.patch(f"{DEALS}/{deal['id']}", json={"attributes": None}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["attributes"] == {}
    assert r.json()["version"] == 2


async def test_patch_name_null_is_422_and_changes_nothing(client, tenant):
    deal = await _create(client, tenant)
    r = await client.patch(f"{DEALS}/{deal['id']}", json={"name": None}, headers=tenant.headers())
    body = _problem(r, 422, "VALIDATION_FAILED")
    assert any("name" in d["loc"] for d in body["details"])
    assert (await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())).json() == deal


async def test_patch_rejects_unknown_and_invalid_fields(client, tenant):
    deal = await _create(client, tenant)
    for bad in ({"version": 7}, {"external_refs": []}, {"currency": "EURO"}):
        r = await client.patch(f"{DEALS}/{deal['id']}", json=bad, headers=tenant.headers())
        _problem(r, 422, "VALIDATION_FAILED")
    assert (await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())).json() == deal


async def test_unchanged_patch_writes_no_event_and_keeps_the_version(client, tenant, db):
    deal = await _create(client, tenant)
    for patch in ({}, {"stage": "diligence"}, {"amount": "25000000.0"}, {"attributes": {"sector": "fintech"}},
                  {"attributes": {"absent": None}}):
        r = await client.patch(f"{DEALS}/{deal['id']}", json=patch, headers=tenant.headers())
        assert r.status_code == 200, r.text
        assert r.json() == deal, patch
    assert await _audit_count(db, tenant.id, deal["id"]) == 1
    assert await _outbox_count(db, tenant.id, deal["id"]) == 1


async def test_patch_unknown_deal_is_404(client, tenant):
    r = await client.patch(f"{DEALS}/{uuid.uuid4()}", json={"stage": "x"}, headers=tenant.headers())
    _problem(r, 404, "NOT_FOUND")


# --- DELETE -----------------------------------------------------------------------------


async def test_delete_is_soft_and_hides_the_deal(client, tenant, db):
    kept = await _create(client, tenant, "Kept")
    gone = await _create(client, tenant, "Gone", refs=[("salesforce", "006DEL")])
    r = await client.delete(f"{DEALS}/{gone['id']}", headers=tenant.headers(Role.PARTNER))
    assert r.status_code == 204 and r.content == b""

    _problem(await client.get(f"{DEALS}/{gone['id']}", headers=tenant.headers()), 404, "NOT_FOUND")
    _problem(await client.get(f"{DEALS}/by-ref/salesforce/006DEL", headers=tenant.headers()), 404, "NOT_FOUND")
    _problem(await client.patch(f"{DEALS}/{gone['id']}", json={"stage": "x"}, headers=tenant.headers()), 404, "NOT_FOUND")
    _problem(await client.delete(f"{DEALS}/{gone['id']}", headers=tenant.headers()), 404, "NOT_FOUND")
    listed = (await client.get(DEALS, headers=tenant.headers())).json()["items"]
    assert [d["id"] for d in listed] == [kept["id"]]
    filtered = (await client.get(DEALS, params={"system": "salesforce"}, headers=tenant.headers())).json()["items"]
    assert filtered == []

    async with db.read(tenant.id) as s:
        types = list((await s.execute(
            select(AuditEvent.event_type).where(AuditEvent.resource_id == gone["id"]).order_by(AuditEvent.seq)
        )).scalars())
        outbox = list((await s.execute(
            select(OutboxEvent.event_type).where(OutboxEvent.resource_id == gone["id"]).order_by(OutboxEvent.created_at, OutboxEvent.id)
        )).scalars())
    assert types == ["deal.created", "deal.deleted"]
    assert outbox == ["deal.created", "deal.deleted"]


async def test_delete_needs_the_delete_permission(client, tenant):
    deal = await _create(client, tenant)
    r = await client.delete(f"{DEALS}/{deal['id']}", headers=tenant.headers(Role.ANALYST))
    _problem(r, 403, "FORBIDDEN")
    assert (await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())).status_code == 200


async def test_upsert_of_a_deleted_deals_ref_restores_it(client, tenant):
    deal = await _create(client, tenant, refs=[("salesforce", "006RES")])
    assert (await client.delete(f"{DEALS}/{deal['id']}", headers=tenant.headers())).status_code == 204

    fields = {k: deal[k] for k in ("name", "stage", "amount", "currency", "close_date", "company", "owner", "attributes")}
    r = await client.put(f"{DEALS}/by-ref/salesforce/006RES", json=fields, headers=tenant.headers(Role.INTEGRATION_SERVICE))
    assert r.status_code == 200, r.text
    restored = r.json()
    assert restored["id"] == deal["id"]
    assert restored["version"] == 3  # created, deleted, restored
    got = await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())
    assert got.status_code == 200 and got.json()["name"] == deal["name"]
    listed = (await client.get(DEALS, headers=tenant.headers())).json()["items"]
    assert [d["id"] for d in listed] == [deal["id"]]


# --- list: pagination, filters, sorts -----------------------------------------------------


async def test_cursor_pagination_walks_every_deal_once(client, tenant):
    # One batch: all seven deals share created_at, so the id tie-break carries the order.
    items = [{"system": "crm", "external_id": f"P{i}", "deal": {"name": f"Deal {i}"}} for i in range(7)]
    r = await client.post(f"{DEALS}/batch-upsert", json={"items": items}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    for i in range(3):
        await _create(client, tenant, f"Single {i}")
    everything = {d["id"] for d in (await client.get(DEALS, params={"limit": 200}, headers=tenant.headers())).json()["items"]}
    assert len(everything) == 10

    for sort in ("-created_at", "created_at", "name", "-name", "updated_at", "-updated_at"):
        pages = await _walk(client, tenant, {"limit": 4, "sort": sort})
        assert [len(p) for p in pages] == [4, 4, 2], sort
        walked = [i for p in pages for i in p]
        assert len(walked) == len(set(walked)) == 10, sort
        assert set(walked) == everything, sort
        # Paging gives the same order as one big page.
        single = (await client.get(DEALS, params={"limit": 200, "sort": sort}, headers=tenant.headers())).json()
        assert [d["id"] for d in single["items"]] == walked, sort
        assert single["next_cursor"] is None


async def test_pagination_is_stable_when_deals_are_added_meanwhile(client, tenant):
    for i in range(6):
        await _create(client, tenant, f"Deal {i}")
    r = await client.get(DEALS, params={"limit": 3, "sort": "created_at"}, headers=tenant.headers())
    first = r.json()
    await _create(client, tenant, "Latecomer")
    second = (await client.get(DEALS, params={"limit": 3, "sort": "created_at", "cursor": first["next_cursor"]},
                               headers=tenant.headers())).json()
    names = [d["name"] for d in first["items"] + second["items"]]
    assert names == [f"Deal {i}" for i in range(6)]


async def test_filters(client, tenant):
    a = await _create(client, tenant, "A", stage="sourcing", refs=[("salesforce", "A1")])
    b = await _create(client, tenant, "B", stage="diligence", refs=[("salesforce", "B1"), ("dealcloud", "B2")])
    c = await _create(client, tenant, "C", stage="diligence", refs=[("affinity", "C1")])
    d = await _create(client, tenant, "D", stage="sourcing")

    async def ids(**params):
        r = await client.get(DEALS, params={"sort": "name", **params}, headers=tenant.headers())
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["items"]]

    assert await ids(stage="diligence") == [b["id"], c["id"]]
    assert await ids(stage="sourcing") == [a["id"], d["id"]]
    assert await ids(stage="closed") == []
    assert await ids(system="salesforce") == [a["id"], b["id"]]
    assert await ids(system="dealcloud") == [b["id"]]
    assert await ids(external_id="C1") == [c["id"]]
    assert await ids(system="salesforce", external_id="B1") == [b["id"]]
    assert await ids(system="salesforce", external_id="C1") == []  # C1 belongs to affinity
    assert await ids(system="salesforce", stage="sourcing") == [a["id"]]

    # updated_since: at-or-after, against the deal's last change.
    r = await client.patch(f"{DEALS}/{a['id']}", json={"owner": "max"}, headers=tenant.headers())
    a_updated = r.json()["updated_at"]
    assert await ids(updated_since=a_updated) == [a["id"]]
    assert await ids(updated_since=d["updated_at"]) == [a["id"], d["id"]]
    assert await ids(updated_since=b["updated_at"]) == [a["id"], b["id"], c["id"], d["id"]]
    assert await ids(updated_since="2999-01-01T00:00:00Z") == []
    # The same instant written with another UTC offset selects the same deals.
    d_in_paris = datetime.fromisoformat(d["updated_at"].replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=1)))
    assert await ids(updated_since=d_in_paris.isoformat()) == [a["id"], d["id"]]
    # A time without an offset is ambiguous: refused, not guessed.
    r = await client.get(DEALS, params={"updated_since": "2024-01-01T00:00:00"}, headers=tenant.headers())
    _problem(r, 422, "VALIDATION_FAILED")


async def test_sorts(client, tenant):
    for name in ("beta", "Alpha", "gamma", "delta"):
        await _create(client, tenant, name)

    async def names(sort=None):
        params = {"sort": sort} if sort else {}
        r = await client.get(DEALS, params=params, headers=tenant.headers())
        assert r.status_code == 200, r.text
        return [x["name"] for x in r.json()["items"]]

    assert await names("name") == ["Alpha", "beta", "delta", "gamma"]
    assert await names("-name") == ["gamma", "delta", "beta", "Alpha"]
    assert await names("-created_at") == ["delta", "gamma", "Alpha", "beta"]
    assert await names() == ["delta", "gamma", "Alpha", "beta"]  # the default: newest first
    assert await names("created_at") == ["beta", "Alpha", "gamma", "delta"]


async def test_invalid_sort_is_422(client, tenant):
    for sort in ("amount", "name desc", "--name", "tenant_id"):
        r = await client.get(DEALS, params={"sort": sort}, headers=tenant.headers())
        _problem(r, 422, "VALIDATION_FAILED")


def _cursor(value, row_id):
    return base64.urlsafe_b64encode(orjson.dumps([value, row_id])).decode().rstrip("=")


async def test_invalid_cursor_is_422(client, tenant):
    for i in range(3):
        await _create(client, tenant, f"Deal {i}")
    name_cursor = (await client.get(DEALS, params={"limit": 1, "sort": "name"}, headers=tenant.headers())).json()["next_cursor"]
    assert name_cursor
    bad_cursors = [
        "not-a-cursor",
        "!!!",
        base64.urlsafe_b64encode(b"[1,2,3]").decode(),
        _cursor({"t": "yesterday"}, "x"),
        _cursor(1, "x"),  # a number where a time is expected
        _cursor({"t": "2024-01-01T00:00:00"}, "x"),  # a time without a zone
        name_cursor,  # a name cursor used with a time sort
    ]
    for cursor in bad_cursors:
        r = await client.get(DEALS, params={"cursor": cursor, "sort": "-created_at"}, headers=tenant.headers())
        body = _problem(r, 422, "VALIDATION_FAILED")
        assert body["details"] and body["details"][0]["loc"] == ["query", "cursor"], cursor
    time_cursor = (await client.get(DEALS, params={"limit": 1}, headers=tenant.headers())).json()["next_cursor"]
    r = await client.get(DEALS, params={"cursor": time_cursor, "sort": "name"}, headers=tenant.headers())
    _problem(r, 422, "VALIDATION_FAILED")


async def test_list_limit_bounds(client, tenant):
    for limit in (0, 201, -1):
        r = await client.get(DEALS, params={"limit": limit}, headers=tenant.headers())
        _problem(r, 422, "VALIDATION_FAILED")


async def test_attribute_numbers_no_backend_keeps_exactly_are_refused(client, tenant):
    for attributes in ({"big": 2**64}, {"nested": [{"big": -(2**63)}]}, {"huge": 1e20}):
        r = await client.post(DEALS, json=deal_body(attributes=attributes), headers=tenant.headers())
        _problem(r, 422, "VALIDATION_FAILED")
    for raw in (b'{"name": "n", "attributes": {"x": NaN}}', b'{"name": "n", "attributes": {"x": -Infinity}}'):
        r = await client.post(DEALS, content=raw, headers=tenant.headers(**{"Content-Type": "application/json"}))
        assert r.status_code in (400, 422), r.text
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    r = await client.post(DEALS, json=deal_body(attributes={"deep": deep}), headers=tenant.headers())
    _problem(r, 422, "VALIDATION_FAILED")
    deal = await _create(client, tenant)
    r = await client.patch(f"{DEALS}/{deal['id']}", json={"attributes": {"big": 2**64}}, headers=tenant.headers())
    _problem(r, 422, "VALIDATION_FAILED")
    assert [d["id"] for d in (await client.get(DEALS, headers=tenant.headers())).json()["items"]] == [deal["id"]]


async def test_attribute_numbers_read_back_as_stored(client, tenant):
    attributes = {"int": 2**63 - 1, "float": 0.1, "tiny": 1e-20, "whole": 1e16, "neg_zero": -0.0, "list": [1, 1.5, 2.5e17]}
    deal = await _create(client, tenant, attributes=attributes)
    expected = {"int": 2**63 - 1, "float": 0.1, "tiny": 1e-20, "whole": 10**16, "neg_zero": 0.0,
                "list": [1, 1.5, 25 * 10**16]}
    assert deal["attributes"] == expected
    got = await client.get(f"{DEALS}/{deal['id']}", headers=tenant.headers())
    assert got.json()["attributes"] == expected
    # Sending the same again is no change.
    fields = {k: deal[k] for k in ("name", "stage", "amount", "currency", "close_date", "company", "owner")}
    r = await client.patch(f"{DEALS}/{deal['id']}", json={**fields, "attributes": attributes}, headers=tenant.headers())
    assert r.json()["version"] == 1


async def test_patches_cannot_grow_attributes_past_the_limit(client, tenant):
    deal = await _create(client, tenant, attributes={f"a{i}": i for i in range(60)})
    url = f"{DEALS}/{deal['id']}"
    r = await client.patch(url, json={"attributes": {f"b{i}": i for i in range(41)}}, headers=tenant.headers())
    _problem(r, 422, "VALIDATION_FAILED")
    r = await client.patch(url, json={"attributes": {**{f"b{i}": i for i in range(41)}, "a0": None}},
                           headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert len(r.json()["attributes"]) == 100
