"""Syncs: a connection's records read into the domain, page by page.

A sync is a run of kind `sync`, started on demand or by the connection's schedule; a
connection has at most one queued or running sync (a partial unique index says so too).
The worker reads the connector's streams and hands each page to `store_page`, which in
one transaction upserts the page's deals through the same audited path as the CRM push
(soft-deleting the provider's tombstones), saves the stream's cursor and the run's
checkpoint. A sync killed mid-way therefore resumes from its last stored page: what it
reads again is absorbed by the idempotent upsert, and nothing is skipped.

A sync paused by a rate limit or an unavailable provider goes back to `queued` with a
`resume_at`; the worker's sweep starts it again then. Its outcome is an event,
`sync.completed` or `sync.failed`, recorded with the connection's health.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import connections, deals, runs, schedules
from core.changes import ChangeContext, Mutation, mutation
from core.connections import ConnectionStatus, Outcome
from core.db import Database
from core.errors import Conflict
from core.identity import Principal
from core.jsonable import normalise
from core.models import Connection, Run, SyncCursor, new_id, utcnow
from core.schemas import DealFields

log = logging.getLogger("core.syncs")
KIND = runs.SYNC
MODES = ("incremental", "full")


class DealLike(Protocol):
    """What a sync stores of a connector's deal record (`connectors.sdk.DealRecord` by shape)."""

    external_system: str
    external_id: str
    deleted: bool

    # and the fields of `core.schemas.DealFields`, read as attributes


def integration(tenant_id: str, connection_id: str, run_id: str) -> ChangeContext:
    """Who changes the domain during a sync: the connection itself, under the run."""
    return ChangeContext(Principal(tenant_id, "integration", connection_id, frozenset()), request_id=f"run:{run_id}")


def scheduler(tenant_id: str) -> ChangeContext:
    return ChangeContext(Principal(tenant_id, "system", "scheduler", frozenset()))


async def active(session: AsyncSession, connection_id: str) -> Run | None:
    stmt = select(Run).where(Run.connection_id == connection_id, Run.kind == KIND, Run.status.in_((runs.QUEUED, runs.RUNNING)))
    return (await session.execute(stmt)).scalars().first()


async def start(m: Mutation, connection_id: str, *, mode: str = "incremental", trigger: str = "api") -> Run:
    """A queued sync run of the connection; the caller enqueues its job after the commit.

    :raises Conflict: the connection is disabled, or a sync of it is queued or running.
    """
    if mode not in MODES:
        raise ValueError(f"unknown sync mode {mode!r}")
    connection = await connections.get(m.session, connection_id)
    if connection.status == ConnectionStatus.DISABLED:
        raise Conflict("The connection is disabled; enable it first")
    running = await active(m.session, connection_id)
    if running is not None:
        raise Conflict(f"A sync of this connection is already {running.status} (run {running.id})")
    try:
        return await runs.create(
            m, kind=KIND, params={"mode": mode, "trigger": trigger}, connection_id=connection_id,
            subject_type=connections.RESOURCE, subject_id=connection_id,
        )  # fmt: skip
    except IntegrityError:  # another sync was queued concurrently (the unique index)
        raise Conflict("A sync of this connection is already queued or running") from None


# --- what the worker does


async def cursors(db: Database, tenant_id: str, connection_id: str) -> dict[str, Any]:
    """The stored cursor of each stream of the connection (JSON values)."""
    async with db.read(tenant_id) as session:
        stmt = select(SyncCursor.stream, SyncCursor.cursor).where(SyncCursor.connection_id == connection_id)
        return {stream: cursor for stream, cursor in await session.execute(stmt)}


async def _save_cursor(m: Mutation, connection_id: str, stream: str, cursor: Any, run_id: str) -> None:
    changed = await m.session.execute(
        update(SyncCursor)
        .where(SyncCursor.connection_id == connection_id, SyncCursor.stream == stream)
        .values(cursor=cursor, run_id=run_id, updated_at=m.now)
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount == 0:  # type: ignore[attr-defined]
        m.session.add(
            SyncCursor(
                id=new_id(), tenant_id=m.tenant_id, connection_id=connection_id, stream=stream,
                cursor=cursor, run_id=run_id, updated_at=m.now,
            )
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Stored:
    read: int
    written: int
    skipped: int
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Prepared:
    """A page checked against the domain, ready to store (see `prepare`)."""

    read: int
    upserts: list[tuple[str, str, DealFields]]
    tombstones: list[tuple[str, str]]
    skipped: int


def prepare(records: Sequence[DealLike], *, run_id: str) -> Prepared:
    """Split a page into upserts (validated as deals) and tombstones. A record that does
    not fit the domain (no name, a bad currency) is skipped and counted, not fatal.

    Pure work, no transaction: the worker prepares the next page while the database
    stores the current one."""
    upserts: list[tuple[str, str, DealFields]] = []
    tombstones: list[tuple[str, str]] = []
    skipped = 0
    for record in records:
        if record.deleted:
            tombstones.append((record.external_system, record.external_id))
            continue
        try:
            fields = DealFields.model_validate(record, from_attributes=True)
        except ValidationError as exc:
            skipped += 1
            where = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
            log.warning(
                "sync skipped a record that does not fit a deal",
                extra={"run_id": run_id, "external_id": record.external_id, "fields": where},
            )
            continue
        upserts.append((record.external_system, record.external_id, fields))
    return Prepared(len(records), upserts, tombstones, skipped)


async def store_page(
    db: Database,
    tenant_id: str,
    run_id: str,
    connection_id: str,
    *,
    stream: str,
    page: Prepared,
    cursor: Any,
    checkpoint: dict[str, Any],
    attempt: int,
) -> Stored:
    """Store one prepared page in one transaction: its deals (upserts, then tombstones as
    soft deletes), the stream's cursor and the run's progress and checkpoint.

    :raises runs.RunLost: `attempt` no longer holds the run: nothing of the page is stored.
    """
    async with mutation(db, integration(tenant_id, connection_id, run_id)) as m:
        outcomes = await deals.upsert_many(m, page.upserts) if page.upserts else []
        removed = await deals.delete_by_refs(m, page.tombstones) if page.tombstones else []
        await _save_cursor(m, connection_id, stream, normalise(cursor), run_id)
        written = sum(1 for o in outcomes if o.status != "unchanged") + len(removed)
        cancel = await runs.record_progress(
            m.session, run_id, attempt=attempt, read=page.read, written=written, skipped=page.skipped, pages=1,
            checkpoint=checkpoint,
        )  # fmt: skip
    return Stored(read=page.read, written=written, skipped=page.skipped, cancel_requested=cancel)


async def finish(
    db: Database,
    tenant_id: str,
    run_id: str,
    connection_id: str,
    *,
    status: str,
    outcome: Outcome = Outcome.SUCCEEDED,
    error: dict[str, Any] | None = None,
    attempt: int | None = None,
    worker_id: str | None = None,
) -> None:
    """End the sync: the run's status, the connection's health and the `sync.*` event, together
    (a connection deleted meanwhile has no health to record: the event is the run's), as its
    `attempt` or as a worker giving up its job (see `runs.finish_in`)."""
    async with mutation(db, integration(tenant_id, connection_id, run_id)) as m:
        run = await runs.finish_in(m.session, run_id, status, error, attempt=attempt, worker_id=worker_id)
        if run is None or status == runs.CANCELLED:
            return
        event = "sync.completed" if status == runs.SUCCEEDED else "sync.failed"
        payload = {"run": runs.view(run)}
        connection = (await m.session.execute(select(Connection).where(Connection.id == connection_id))).scalar_one_or_none()
        if connection is None:
            m.record(event, resource_type=runs.RESOURCE, resource_id=run.id, before=None, after=None, payload=payload)
            return
        if status == runs.SUCCEEDED:
            connection.last_synced_at = m.now
        await connections.record_outcome(
            m, connection_id, outcome=outcome, error=error["message"] if error else None, event=event, payload=payload
        )


async def pause(
    db: Database,
    tenant_id: str,
    run_id: str,
    *,
    attempt: int,
    resume_at: datetime,
    checkpoint: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Queue a running sync again, to resume at `resume_at` from its checkpoint (saved too,
    when given); `error` says why it paused (None when it only yields after a long slice of
    work). False, changing nothing, when a cancel was asked for: the caller ends the run
    cancelled, rather than let it hold the connection's one active sync through the pause.

    :raises runs.RunLost: `attempt` no longer holds the run.
    """
    values: dict[str, Any] = {
        "status": runs.QUEUED, "resume_at": resume_at, "error": error, "version": Run.version + 1, "updated_at": utcnow()
    }  # fmt: skip
    if checkpoint is not None:
        values["checkpoint"] = checkpoint
    async with db.write(tenant_id) as session:
        held = await session.execute(select(Run.cancel_requested).where(runs.held(run_id, attempt)).with_for_update())
        cancel = held.scalar_one_or_none()
        if cancel is None:
            raise runs.RunLost(run_id)
        if cancel:
            return False
        await session.execute(update(Run).where(Run.id == run_id).values(**values).execution_options(synchronize_session=False))
        return True


# --- schedules


async def due(db: Database, now: datetime, *, limit: int = 500) -> list[tuple[str, str]]:
    """(tenant id, connection id) of scheduled connections whose next sync is due, in all tenants."""
    async with db.read(None) as session:
        stmt = (
            select(Connection.tenant_id, Connection.id)
            .where(Connection.next_sync_at <= now, Connection.status != ConnectionStatus.DISABLED.value)
            .order_by(Connection.next_sync_at)
            .limit(limit)
            .execution_options(cross_tenant=True)
        )
        return [(t, c) for t, c in await session.execute(stmt)]


async def start_scheduled(db: Database, tenant_id: str, connection_id: str, now: datetime) -> str | None:
    """Queue the scheduled sync of a due connection and move its next tick on; the run's
    id, or None when a sync is already active (that tick is skipped) or nothing is due."""
    async with mutation(db, scheduler(tenant_id)) as m:
        connection = (
            await m.session.execute(select(Connection).where(Connection.id == connection_id).with_for_update())
        ).scalar_one_or_none()
        if connection is None or connection.next_sync_at is None or connection.next_sync_at > now:
            return None
        connection.next_sync_at = schedules.next_run(connection.sync_schedule, now)
        if connection.status == ConnectionStatus.DISABLED or await active(m.session, connection_id) is not None:
            return None
        run = await start(m, connection_id, trigger="schedule")
        return run.id
