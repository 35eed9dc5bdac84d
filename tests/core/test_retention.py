"""Retention: finished deliveries and published events nothing needs any more are deleted;
pending deliveries, unpublished events and the events they need are kept."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from core import retention
from core.ids import new_id
from core.models import OutboxEvent, WebhookAttempt, WebhookDelivery, utcnow
from core.relay import relay_batch
from tests.conftest import deal_body


async def create_deal(client, tenant, name: str) -> str:
    r = await client.post("/api/v1/deals", json=deal_body(name), headers=tenant.headers())
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def events_of(db, tenant_id: str) -> dict[str, OutboxEvent]:
    """The tenant's deal events by deal id (making the tenant wrote events of its own)."""
    async with db.read(tenant_id) as session:
        stmt = select(OutboxEvent).where(OutboxEvent.resource_type == "deal")
        return {e.resource_id: e for e in (await session.execute(stmt)).scalars()}


async def deliveries_of(db, tenant_id: str) -> dict[str, str]:
    async with db.read(tenant_id) as session:
        return {d.event_id: d.id for d in (await session.execute(select(WebhookDelivery))).scalars()}


async def test_finished_deliveries_and_undelivered_events_go_and_the_rest_stays(client, app, db, tenant):
    before_endpoint = await create_deal(client, tenant, "No subscriber yet")
    r = await client.post(
        "/api/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook", "event_types": ["deal.*"]},
        headers=tenant.headers(),
    )  # fmt: skip
    assert r.status_code == 201, r.text
    delivered, pending = await create_deal(client, tenant, "Delivered"), await create_deal(client, tenant, "Pending")
    while (await relay_batch(db, app.state.hub.vault, owner="test", lease_seconds=60, limit=500)).events:
        pass
    unpublished = await create_deal(client, tenant, "Written after the relay passed")

    events = await events_of(db, tenant.id)
    deliveries = await deliveries_of(db, tenant.id)
    assert before_endpoint in events and set(deliveries) == {events[delivered].id, events[pending].id}
    done = deliveries[events[delivered].id]
    async with db.write(tenant.id) as session:
        await session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == done).values(status="succeeded", completed_at=utcnow())
        )
        session.add(
            WebhookAttempt(
                id=new_id(), delivery_id=done, endpoint_id=r.json()["id"], number=1, started_at=utcnow(),
                duration_ms=3.0, status_code=200, outcome="success",
            )
        )  # fmt: skip

    # Retention switched off: nothing goes.
    assert await retention.prune(db, deliveries_before=None, events_before=None) == retention.Pruned(0, 0)
    assert len(await events_of(db, tenant.id)) == 4 and len(await deliveries_of(db, tenant.id)) == 2

    # Everything written so far is past its retention (chunks of one: the loop goes on).
    later = utcnow() + timedelta(minutes=1)
    await retention.prune(db, deliveries_before=later, events_before=later, chunk=1)

    assert set(await deliveries_of(db, tenant.id)) == {events[pending].id}
    assert set(await events_of(db, tenant.id)) == {pending, unpublished}
    async with db.read(tenant.id) as session:
        assert (await session.execute(select(WebhookAttempt).where(WebhookAttempt.delivery_id == done))).first() is None


async def test_rows_younger_than_the_retention_stay(client, app, db, tenant):
    await create_deal(client, tenant, "Fresh")
    while (await relay_batch(db, app.state.hub.vault, owner="test", lease_seconds=60, limit=500)).events:
        pass
    an_hour_ago = utcnow() - timedelta(hours=1)
    await retention.prune(db, deliveries_before=an_hour_ago, events_before=an_hour_ago)
    assert len(await events_of(db, tenant.id)) == 1
