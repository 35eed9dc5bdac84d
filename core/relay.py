"""The outbox relay: take unpublished events, fan each out into one delivery per
subscribed endpoint, and mark the events published, all in one transaction.

Several relays may run at once. On PostgreSQL each claims its rows with
`FOR UPDATE SKIP LOCKED`, so no two take the same event; SQLite has a single writer,
so relays simply take turns. A relay that dies before its commit leaves the events
unpublished for the next one: an event is fanned out at least once, and a delivery
exists at most once per (endpoint, event).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from core import webhooks
from core.db import Database
from core.deliveries import (
    EVENT_COLUMNS,
    INSERT_DELIVERIES,
    PENDING,
    Due,
    Target,
    envelope_body,
    new_ids,
    stamper,
    target_of,
)
from core.models import OutboxEvent, WebhookEndpoint, utcnow
from core.vault import Vault


@dataclass(slots=True)
class RelayBatch:
    events: int = 0
    deliveries: int = 0
    # Deliveries leased to the caller, to send now; the others wait for a claim.
    leased: list[Due] = field(default_factory=list)
    targets: dict[str, Target] = field(default_factory=dict)


def _subscribers(event: Any, endpoints: list[WebhookEndpoint]) -> list[WebhookEndpoint]:
    if event.event_type == webhooks.TEST_EVENT:
        return [e for e in endpoints if e.id == event.resource_id]
    # An endpoint gets the events that happened after it was created: not those before,
    # nor its own creation.
    return [e for e in endpoints if event.occurred_at > e.created_at and webhooks.matches(e.event_types, event.event_type)]


async def relay_batch(
    db: Database,
    vault: Vault,
    *,
    owner: str,
    lease_seconds: float,
    limit: int,
    accept: Callable[[str], bool] = lambda endpoint_id: True,
) -> RelayBatch:
    """Publish up to `limit` events. Deliveries to endpoints for which `accept` says yes
    are leased to `owner` and returned with their bodies, ready to send."""
    out = RelayBatch()
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_seconds)
    stamp = stamper(db)
    now_stamp, lease_stamp = stamp(now), stamp(lease_until)
    async with db.write(None) as session:
        stmt = (
            select(*EVENT_COLUMNS)
            .where(OutboxEvent.__table__.c.published_at.is_(None))
            .order_by(OutboxEvent.__table__.c.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(cross_tenant=True)
        )
        events = list(await session.execute(stmt))
        if not events:
            return out
        out.events = len(events)
        endpoints_stmt = (
            select(WebhookEndpoint)
            .where(WebhookEndpoint.enabled.is_(True), WebhookEndpoint.tenant_id.in_({e.tenant_id for e in events}))
            .execution_options(cross_tenant=True)
        )
        by_tenant: dict[str, list[WebhookEndpoint]] = defaultdict(list)
        for endpoint in (await session.execute(endpoints_stmt)).scalars():
            by_tenant[endpoint.tenant_id].append(endpoint)
        pairs = [(e, endpoint) for e in events for endpoint in _subscribers(e, by_tenant.get(e.tenant_id, []))]
        rows: list[dict[str, Any]] = []
        bodies: dict[str, tuple[bytes, Any]] = {}
        used: dict[str, WebhookEndpoint] = {}
        for (event, endpoint), delivery_id in zip(pairs, new_ids(len(pairs)), strict=True):
            leased = accept(endpoint.id)
            rows.append(
                {
                    "id": delivery_id,
                    "tenant_id": event.tenant_id,
                    "endpoint_id": endpoint.id,
                    "event_id": event.id,
                    "event_type": event.event_type,
                    "status": PENDING,
                    "attempts": 0,
                    "total_attempts": 0,
                    "next_attempt_at": now_stamp,
                    "lease_until": lease_stamp if leased else None,
                    "lease_owner": owner if leased else None,
                    "created_at": now_stamp,
                    "updated_at": now_stamp,
                }
            )
            if leased:
                if event.id not in bodies:
                    bodies[event.id] = (envelope_body(event), event)
                used[endpoint.id] = endpoint
        await INSERT_DELIVERIES.executemany(session, rows)
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_([e.id for e in events]))
            .values(published_at=now)
            .execution_options(cross_tenant=True, synchronize_session=False)
        )
    out.deliveries = len(rows)
    out.targets = {endpoint_id: target_of(vault, endpoint, now) for endpoint_id, endpoint in used.items()}
    for row in rows:
        if row["lease_owner"] is not None:
            body, event = bodies[row["event_id"]]
            out.leased.append(
                Due(row["id"], row["tenant_id"], row["endpoint_id"], row["event_id"], row["event_type"], 0, 0, body, event.created_at)
            )
    return out
