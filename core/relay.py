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

from sqlalchemy import bindparam, select, update

from core import webhooks
from core.db import Database, stamper
from core.deliveries import (
    EVENT_COLUMNS,
    RAW_EVENTS,
    Due,
    EventRow,
    NewDelivery,
    Target,
    envelope_body,
    insert_deliveries,
    read_time,
    target_of,
)
from core.ids import new_ids
from core.models import WebhookEndpoint, utcnow
from core.vault import Vault

# Publish the oldest unpublished events (on PostgreSQL, those no other relay holds) and
# read them, in one statement. A transaction's events share `created_at`; their ids order
# them (the index gives `created_at` order, ties are sorted on their own).
_TAKE_EVENTS = (
    update(RAW_EVENTS)
    .where(
        RAW_EVENTS.c.id.in_(
            select(RAW_EVENTS.c.id)
            .where(RAW_EVENTS.c.published_at.is_(None))
            .order_by(RAW_EVENTS.c.created_at, RAW_EVENTS.c.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(published_at=bindparam("now"))
    .returning(*EVENT_COLUMNS)
)


@dataclass(slots=True)
class RelayBatch:
    events: int = 0
    deliveries: int = 0
    # Deliveries leased to the caller, to send now; the others wait for a claim.
    leased: list[Due] = field(default_factory=list)
    targets: dict[str, Target] = field(default_factory=dict)


def _written(event: EventRow) -> Any:
    """The order events were written in: a transaction's events share `created_at`."""
    return event.created_at, event.id


def _subscribers(event: EventRow, endpoints: list[WebhookEndpoint]) -> list[WebhookEndpoint]:
    if event.event_type == webhooks.TEST_EVENT:
        return [e for e in endpoints if e.id == event.resource_id]
    # An endpoint gets the events that happened after it was created: not those before,
    # nor its own creation.
    occurred_at = read_time(event.occurred_at)
    return [e for e in endpoints if occurred_at > e.created_at and webhooks.matches(e.event_types, event.event_type)]


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
        connection = await session.connection()
        taken = await connection.execute(_TAKE_EVENTS, {"limit": limit, "now": now_stamp})
        # In the order they were written (best effort, as the contract says).
        events = sorted((EventRow(*row) for row in taken), key=_written)
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
        pairs = [(e, endpoint) for e in events if e.tenant_id in by_tenant for endpoint in _subscribers(e, by_tenant[e.tenant_id])]
        rows: list[NewDelivery] = []
        leased: list[Due] = []
        bodies: dict[str, bytes] = {}
        used: dict[str, WebhookEndpoint] = {}
        for (event, endpoint), delivery_id in zip(pairs, new_ids(len(pairs)), strict=True):
            take = accept(endpoint.id)
            rows.append((delivery_id, event.tenant_id, endpoint.id, event.id, event.event_type, take))
            if take:
                body = bodies.get(event.id)
                if body is None:
                    body = bodies[event.id] = envelope_body(event)
                leased.append(
                    Due(
                        delivery_id, event.tenant_id, endpoint.id, event.id, event.event_type, 0, 0, body,
                        read_time(event.created_at), lease_stamp,
                    )  # fmt: skip
                )
                used[endpoint.id] = endpoint
        await insert_deliveries(session, rows, now=now_stamp, lease=lease_stamp, owner=owner)
    out.deliveries = len(rows)
    out.leased = leased
    out.targets = {endpoint_id: target_of(vault, endpoint, now) for endpoint_id, endpoint in used.items()}
    return out
