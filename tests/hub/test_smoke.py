from tests.conftest import deal_body


async def test_upsert_then_read(client, tenant):
    r = await client.put("/api/v1/deals/by-ref/salesforce/006A", json=deal_body(), headers=tenant.headers())
    assert r.status_code == 201, r.text
    deal_id = r.json()["id"]
    r = await client.get(f"/api/v1/deals/{deal_id}", headers=tenant.headers())
    assert r.status_code == 200
    assert r.json()["external_refs"] == [{"system": "salesforce", "external_id": "006A"}]
