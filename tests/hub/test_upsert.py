"""The CRM upsert by natural key (tenant, system, external id), single and batched:
created/updated/unchanged, and exactly one audit and one outbox event per change."""

from __future__ import annotations

from sqlalchemy import func, select

from core.models import AuditEvent, Deal, OutboxEvent
from core.roles import Role
from core.schemas import BatchUpsertOut
from tests.conftest import deal_body

DEALS = "/api/v1/deals"
BATCH = f"{DEALS}/batch-upsert"


def _by_ref(system, external_id):
    return f"{DEALS}/by-ref/{system}/{external_id}"


async def _events(db, tenant_id, model, resource_id=None):
    """(event_type, resource_id) of a tenant's audit or outbox events, oldest first."""
    # A transaction's outbox events share created_at; their ids order them (core.ids).
    order = (model.seq,) if model is AuditEvent else (model.created_at, model.id)
    stmt = select(model.event_type, model.resource_id).order_by(*order)
    if resource_id is not None:
        stmt = stmt.where(model.resource_id == resource_id)
    async with db.read(tenant_id) as s:
        return [tuple(row) for row in await s.execute(stmt)]


async def _deal_events(db, tenant_id):
    """The tenant's deal events: (audit, outbox)."""
    audit = [e for e in await _events(db, tenant_id, AuditEvent) if e[0].startswith("deal.")]
    outbox = [e for e in await _events(db, tenant_id, OutboxEvent) if e[0].startswith("deal.")]
    return audit, outbox


async def _deal_count(db, tenant_id):
    async with db.read(tenant_id) as s:
        return (await s.execute(select(func.count()).select_from(Deal))).scalar_one()


# --- PUT /deals/by-ref/{system}/{external_id} ------------------------------------------------


async def test_upsert_creates_with_201(client, tenant, db):
    r = await client.put(_by_ref("salesforce", "006C"), json=deal_body(), headers=tenant.headers(Role.INTEGRATION_SERVICE))
    assert r.status_code == 201, r.text
    deal = r.json()
    assert r.headers["location"] == f"{DEALS}/{deal['id']}"
    assert r.headers["x-upsert-outcome"] == "created"
    assert deal["version"] == 1
    assert deal["external_refs"] == [{"system": "salesforce", "external_id": "006C"}]
    assert {k: deal[k] for k in deal_body()} == deal_body()

    got = await client.get(_by_ref("salesforce", "006C"), headers=tenant.headers())
    assert got.status_code == 200 and got.json()["id"] == deal["id"]
    audit, outbox = await _deal_events(db, tenant.id)
    assert audit == outbox == [("deal.created", deal["id"])]
    async with db.read(tenant.id) as s:
        payload = (await s.execute(select(OutboxEvent.payload))).scalars().all()
    assert [p["deal"]["id"] for p in payload if "deal" in p] == [deal["id"]]


async def test_upsert_updates_with_200_and_records_what_changed(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    created = (await client.put(_by_ref("salesforce", "006U"), json=deal_body(), headers=headers)).json()

    changed = deal_body(stage="ic_review", amount="26000000", attributes={"sector": "fintech", "round": "B"})
    r = await client.put(_by_ref("salesforce", "006U"), json=changed, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["x-upsert-outcome"] == "updated"
    updated = r.json()
    assert updated["id"] == created["id"]
    assert updated["version"] == 2
    assert updated["stage"] == "ic_review" and updated["amount"] == "26000000"
    assert updated["created_at"] == created["created_at"]
    assert updated["updated_at"] > created["updated_at"]

    async with db.read(tenant.id) as s:
        event = (await s.execute(select(AuditEvent).where(AuditEvent.event_type == "deal.updated"))).scalar_one()
        out = (await s.execute(select(OutboxEvent).where(OutboxEvent.event_type == "deal.updated"))).scalar_one()
    assert event.resource_id == created["id"]
    assert event.changes == {
        "before": {"amount": "25000000.00", "attributes": {"sector": "fintech"}, "stage": "diligence"},
        "after": {"amount": "26000000", "attributes": {"sector": "fintech", "round": "B"}, "stage": "ic_review"},
    }
    assert out.resource_id == created["id"]
    assert out.payload["changed_fields"] == ["amount", "attributes", "stage"]
    assert out.payload["deal"]["version"] == 2


async def test_upsert_is_a_full_representation(client, tenant):
    """Fields a CRM leaves out are cleared, as in any PUT."""
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    await client.put(_by_ref("salesforce", "006F"), json=deal_body(), headers=headers)
    r = await client.put(_by_ref("salesforce", "006F"), json={"name": "Acme Series B"}, headers=headers)
    assert r.status_code == 200, r.text
    deal = r.json()
    assert deal["version"] == 2
    assert [deal[k] for k in ("stage", "amount", "currency", "close_date", "company", "owner")] == [None] * 6
    assert deal["attributes"] == {}


async def test_identical_upsert_changes_nothing_and_emits_nothing(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    first = await client.put(_by_ref("salesforce", "006I"), json=deal_body(), headers=headers)
    before = await _deal_events(db, tenant.id)

    for _ in range(2):
        r = await client.put(_by_ref("salesforce", "006I"), json=deal_body(), headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["x-upsert-outcome"] == "unchanged"
        assert r.json() == first.json()  # same version, same updated_at
    assert await _deal_events(db, tenant.id) == before
    assert await _deal_count(db, tenant.id) == 1


async def test_amounts_equal_in_value_are_identical(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    r = await client.put(_by_ref("salesforce", "006A"), json=deal_body(amount="100.00"), headers=headers)
    assert r.status_code == 201
    before = await _deal_events(db, tenant.id)
    for amount in ("100.0", "100", 100, "100.0000"):
        r = await client.put(_by_ref("salesforce", "006A"), json=deal_body(amount=amount), headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["x-upsert-outcome"] == "unchanged", amount
        assert r.json()["version"] == 1
        assert r.json()["amount"] == "100.00"  # the stored representation is kept
    assert await _deal_events(db, tenant.id) == before

    r = await client.put(_by_ref("salesforce", "006A"), json=deal_body(amount="100.01"), headers=headers)
    assert r.headers["x-upsert-outcome"] == "updated" and r.json()["version"] == 2


async def test_attribute_order_does_not_make_a_change(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    await client.put(_by_ref("crm", "O1"), json=deal_body(attributes={"a": 1, "b": {"x": 1, "y": [1, 2]}}), headers=headers)
    r = await client.put(_by_ref("crm", "O1"), json=deal_body(attributes={"b": {"y": [1, 2], "x": 1}, "a": 1}), headers=headers)
    assert r.headers["x-upsert-outcome"] == "unchanged"
    # ...but the order of a list does.
    r = await client.put(_by_ref("crm", "O1"), json=deal_body(attributes={"a": 1, "b": {"x": 1, "y": [2, 1]}}), headers=headers)
    assert r.headers["x-upsert-outcome"] == "updated"


async def test_a_deal_known_to_several_systems(client, tenant, db):
    body = deal_body(external_refs=[{"system": "salesforce", "external_id": "006M"},
                                    {"system": "dealcloud", "external_id": "DC-9"}])
    r = await client.post(DEALS, json=body, headers=tenant.headers())
    assert r.status_code == 201, r.text
    deal = r.json()
    headers = tenant.headers(Role.INTEGRATION_SERVICE)

    # Each system reaches the same deal through its own reference.
    r = await client.put(_by_ref("dealcloud", "DC-9"), json=deal_body(stage="closing"), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == deal["id"] and r.json()["version"] == 2
    r = await client.put(_by_ref("salesforce", "006M"), json=deal_body(stage="closing"), headers=headers)
    assert r.status_code == 200 and r.headers["x-upsert-outcome"] == "unchanged"
    assert r.json()["id"] == deal["id"]
    for system, external_id in (("salesforce", "006M"), ("dealcloud", "DC-9")):
        got = await client.get(_by_ref(system, external_id), headers=tenant.headers())
        assert got.json()["id"] == deal["id"]
        assert sorted(map(tuple, (x.values() for x in got.json()["external_refs"]))) == [
            ("dealcloud", "DC-9"), ("salesforce", "006M")]

    # The same external id in another system is another deal.
    r = await client.put(_by_ref("affinity", "006M"), json=deal_body(), headers=headers)
    assert r.status_code == 201 and r.json()["id"] != deal["id"]
    assert await _deal_count(db, tenant.id) == 2


async def test_the_natural_key_is_per_tenant(client, tenant, other_tenant):
    a = await client.put(_by_ref("salesforce", "006T"), json=deal_body("Mine"), headers=tenant.headers())
    b = await client.put(_by_ref("salesforce", "006T"), json=deal_body("Theirs"), headers=other_tenant.headers())
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert (await client.get(_by_ref("salesforce", "006T"), headers=tenant.headers())).json()["name"] == "Mine"


async def test_upsert_rejects_invalid_input_and_roles(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    for path, body in ((_by_ref("Sales Force", "1"), deal_body()),
                       (_by_ref("salesforce", "1"), deal_body(name="")),
                       (_by_ref("salesforce", "1"), {**deal_body(), "external_refs": []})):
        r = await client.put(path, json=body, headers=headers)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["code"] == "VALIDATION_FAILED"
    r = await client.put(_by_ref("salesforce", "1"), json=deal_body(), headers=tenant.headers(Role.ANALYST))
    assert r.status_code == 403
    assert await _deal_count(db, tenant.id) == 0


# --- POST /deals/batch-upsert ---------------------------------------------------------------


def _item(external_id, system="salesforce", **fields):
    return {"system": system, "external_id": external_id, "deal": {"name": f"Deal {external_id}", **fields}}


async def test_batch_reports_each_item_in_order(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    await client.put(_by_ref("salesforce", "B-upd"), json={"name": "Deal B-upd"}, headers=headers)
    same = (await client.put(_by_ref("salesforce", "B-same"), json={"name": "Deal B-same"}, headers=headers)).json()
    before_audit, before_outbox = await _deal_events(db, tenant.id)

    items = [_item("B-new1"), _item("B-upd", stage="won"), _item("B-same"), _item("B-new2", system="dealcloud")]
    r = await client.post(BATCH, json={"items": items}, headers=headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["created"], out["updated"], out["unchanged"], out["failed"]) == (2, 1, 1, 0)
    assert [x["index"] for x in out["results"]] == [0, 1, 2, 3]
    assert [x["status"] for x in out["results"]] == ["created", "updated", "unchanged", "created"]
    assert [x["version"] for x in out["results"]] == [1, 2, 1, 1]
    assert out["results"][2]["deal_id"] == same["id"]
    for item, result in zip(items, out["results"]):
        got = await client.get(_by_ref(item["system"], item["external_id"]), headers=headers)
        assert got.json()["id"] == result["deal_id"]
        assert got.json()["stage"] == item["deal"].get("stage")

    # One audit and one outbox event per created or updated item, none for the unchanged one.
    audit, outbox = await _deal_events(db, tenant.id)
    new_audit, new_outbox = audit[len(before_audit):], outbox[len(before_outbox):]
    expected = sorted([("deal.created", out["results"][0]["deal_id"]), ("deal.updated", out["results"][1]["deal_id"]),
                       ("deal.created", out["results"][3]["deal_id"])])
    assert sorted(new_audit) == expected
    assert sorted(new_outbox) == expected


async def test_invalid_items_fail_alone(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    items = [
        _item("V-1"),
        {"system": "Not Valid", "external_id": "x", "deal": {"name": "bad system"}},
        _item("V-2", amount="-5"),
        {"system": "salesforce", "external_id": "V-3"},  # no deal
        _item("V-4", unknown_field=1),
        _item("V-5"),
    ]
    r = await client.post(BATCH, json={"items": items}, headers=headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["created"], out["updated"], out["unchanged"], out["failed"]) == (2, 0, 0, 4)
    assert [x["status"] for x in out["results"]] == ["created", "failed", "failed", "failed", "failed", "created"]
    for failed in out["results"][1:5]:
        assert failed["deal_id"] is None
        assert failed["error"]["code"] == "VALIDATION_FAILED"
        assert failed["error"]["details"]
    assert any("amount" in d["loc"] for d in out["results"][2]["error"]["details"])
    # Exactly the documented shape, field for field (the route builds it without the model).
    assert BatchUpsertOut.model_validate(out).model_dump(mode="json") == out

    # The valid items are committed.
    for external_id in ("V-1", "V-5"):
        assert (await client.get(_by_ref("salesforce", external_id), headers=headers)).status_code == 200
    assert (await client.get(_by_ref("salesforce", "V-2"), headers=headers)).status_code == 404
    assert await _deal_count(db, tenant.id) == 2
    audit, outbox = await _deal_events(db, tenant.id)
    assert len(audit) == len(outbox) == 2


async def test_over_1000_items_is_422_and_writes_nothing(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    items = [{"system": "s", "external_id": str(i), "deal": {"name": "d"}} for i in range(1001)]
    r = await client.post(BATCH, json={"items": items}, headers=headers)
    assert r.status_code == 422, r.text[:500]
    assert r.json()["code"] == "VALIDATION_FAILED"
    assert await _deal_count(db, tenant.id) == 0
    assert await _deal_events(db, tenant.id) == ([], [])

    r = await client.post(BATCH, json={"items": []}, headers=headers)
    assert r.status_code == 422


async def test_1000_items_are_accepted(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    items = [{"system": "s", "external_id": str(i), "deal": {"name": "d"}} for i in range(1000)]
    r = await client.post(BATCH, json={"items": items}, headers=headers)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["created"] == 1000
    assert await _deal_count(db, tenant.id) == 1000
    audit, outbox = await _deal_events(db, tenant.id)
    assert len(audit) == len(outbox) == 1000
    assert len({resource for _, resource in audit}) == 1000


async def test_a_key_repeated_in_a_batch_is_created_then_updated(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    items = [_item("R-1", stage="sourcing"), _item("R-1", stage="diligence"), _item("R-1", stage="diligence")]
    r = await client.post(BATCH, json={"items": items}, headers=headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [x["status"] for x in out["results"]] == ["created", "updated", "unchanged"]
    assert [x["version"] for x in out["results"]] == [1, 2, 2]
    assert len({x["deal_id"] for x in out["results"]}) == 1
    assert (out["created"], out["updated"], out["unchanged"]) == (1, 1, 1)

    deal = (await client.get(_by_ref("salesforce", "R-1"), headers=headers)).json()
    assert deal["stage"] == "diligence" and deal["version"] == 2
    assert await _deal_count(db, tenant.id) == 1
    audit, outbox = await _deal_events(db, tenant.id)
    assert audit == outbox == [("deal.created", deal["id"]), ("deal.updated", deal["id"])]


async def test_batch_replayed_whole_is_all_unchanged(client, tenant, db):
    headers = tenant.headers(Role.INTEGRATION_SERVICE)
    items = [_item(f"W-{i}", stage="sourcing") for i in range(5)]
    first = (await client.post(BATCH, json={"items": items}, headers=headers)).json()
    events = await _deal_events(db, tenant.id)
    again = (await client.post(BATCH, json={"items": items}, headers=headers)).json()
    assert again["unchanged"] == 5 and again["created"] == again["updated"] == 0
    assert [x["deal_id"] for x in again["results"]] == [x["deal_id"] for x in first["results"]]
    assert await _deal_events(db, tenant.id) == events
