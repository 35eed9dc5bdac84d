"""Retention: the worker deletes history nothing needs any more.

- A finished delivery (succeeded or failed, not pending) goes `delivery_retention_days`
  after it was created, and its attempts with it. Until then it can be listed and replayed.
- A published outbox event goes `outbox_retention_days` after it was written, once no
  delivery of it is left (a delivery's body is its event's envelope, so an event stays
  while any delivery of it may still be sent or replayed).
- Unpublished events and pending deliveries are never deleted.
- The audit trail is append-only and kept for ever.

Rows go a chunk per transaction, oldest first (`core.db.delete_in_chunks`), found by a
range of their time-ordered primary key (`core.ids.floor_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Delete, delete, exists, select

from core.db import Database, delete_in_chunks
from core.deliveries import PENDING
from core.ids import floor_id
from core.models import OutboxEvent, WebhookDelivery

CHUNK = 1000
_D, _E = WebhookDelivery, OutboxEvent


@dataclass(frozen=True, slots=True)
class Pruned:
    deliveries: int
    events: int


def _finished_before(before: datetime, chunk: int) -> Delete:
    ids = (
        select(_D.id)
        .where(_D.id < floor_id(before), _D.created_at < before, _D.status != PENDING)
        .order_by(_D.id)
        .limit(chunk)
    )
    return delete(_D).where(_D.id.in_(ids.scalar_subquery()))


def _undelivered_before(before: datetime, chunk: int) -> Delete:
    ids = (
        select(_E.id)
        .where(
            _E.id < floor_id(before),
            _E.created_at < before,
            _E.published_at.is_not(None),
            ~exists().where(_D.event_id == _E.id),
        )
        .order_by(_E.id)
        .limit(chunk)
    )
    return delete(_E).where(_E.id.in_(ids.scalar_subquery()))


async def prune(
    db: Database, *, deliveries_before: datetime | None, events_before: datetime | None, chunk: int = CHUNK
) -> Pruned:
    """Delete finished deliveries created before `deliveries_before`, then published events
    written before `events_before` that have no delivery left (None: keep them all)."""
    deliveries = events = 0
    if deliveries_before is not None:
        deliveries = await delete_in_chunks(db, lambda n: _finished_before(deliveries_before, n), chunk=chunk)
    if events_before is not None:
        events = await delete_in_chunks(db, lambda n: _undelivered_before(events_before, n), chunk=chunk)
    return Pruned(deliveries, events)
