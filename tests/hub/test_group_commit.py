"""Concurrent CRM upserts share transactions (hub.group_commit) without sharing anything else."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from core.models import AuditEvent, Deal, OutboxEvent
from core.roles import Role
from tests.conftest import deal_body


async def test_concurrent_upserts_each_keep_their_own_events_and_responses(client, db, tenant):
    h = tenant.headers(Role.INTEGRATION_SERVICE)

    async def push(i: int):
        return await client.put(
            f"/api/v1/deals/by-ref/crm/gc-{i}",
            json=deal_body(f"Deal {i}"),
            headers={**h, "X-Request-ID": f"req-{i}", "Idempotency-Key": f"key-{i}"},
        )

    responses = await asyncio.gather(*(push(i) for i in range(40)))
    assert [r.status_code for r in responses] == [201] * 40
    assert [r.json()["name"] for r in responses] == [f"Deal {i}" for i in range(40)]
    async with db.read(tenant.id) as session:
        events = (await session.execute(select(AuditEvent).where(AuditEvent.event_type == "deal.created"))).scalars().all()
        outbox = (
            await session.execute(select(OutboxEvent.resource_id).where(OutboxEvent.resource_type == "deal"))
        ).scalars().all()
        deals = (await session.execute(select(Deal))).scalars().all()
    assert len(deals) == 40 and len(outbox) == 40
    by_request = {e.request_id: e for e in events}
    assert set(by_request) == {f"req-{i}" for i in range(40)}
    assert {by_request[f"req-{i}"].idempotency_key for i in range(40)} == {f"key-{i}" for i in range(40)}
    verify = await client.get("/api/v1/audit-events/verify", headers=tenant.headers(Role.AUDITOR))
    assert verify.json()["intact"] is True


async def test_the_same_deal_twice_at_once_is_written_twice_each_response_its_own(client, tenant):
    """Two writes of one deal never share a transaction: each response shows its own write."""
    h = tenant.headers(Role.INTEGRATION_SERVICE)
    responses = await asyncio.gather(
        *(client.put("/api/v1/deals/by-ref/crm/same", json=deal_body(f"v{i}"), headers=h) for i in range(6))
    )
    ordered = sorted(responses, key=lambda r: r.json()["version"])
    assert [r.json()["version"] for r in ordered] == [1, 2, 3, 4, 5, 6]
    assert [r.status_code for r in ordered] == [201, 200, 200, 200, 200, 200]
    assert len({r.json()["name"] for r in responses}) == 6
