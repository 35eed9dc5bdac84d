"""Runs: background work a caller can poll (a replay now; syncs and long actions later).

    queued --worker starts--> running --done--> succeeded | failed
    queued --cancel---------> cancelled
    running --cancel--------> running (cancel_requested) --worker notices--> cancelled

A run is worked by an arq job whose id is derived from the run (`run:<id>`), so enqueueing
it twice is harmless, and the job itself only works a run that is queued or running: a
run resumed after a crash carries on from its checkpoint.

Each start of a run is an attempt (its `tries` then), and a worker writes for the run
only under its attempt: once the run was started again (by another worker, when this
one's heartbeat lapsed while it was still alive), its progress, pause and end are
refused with `RunLost`, in the transaction that did the work, so a worker that lost its
run cannot write over the new holder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import jobs
from core.changes import Mutation
from core.db import Database
from core.errors import Conflict, NotFound
from core.models import Run, new_id, utcnow
from core.pagination import MAX_LIMIT, Sort, page, split

RESOURCE = "run"
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
# The error code of a run whose job outlived its timeout.
TIMED_OUT = "TIMED_OUT"
# Kinds of run, and the worker job that works each.
WEBHOOK_REPLAY = "webhook_replay"
SYNC = "sync"
JOBS = {WEBHOOK_REPLAY: "replay_deliveries", SYNC: "sync_connection"}


def job_id(run_id: str) -> str:
    return jobs.job_id("run", run_id)


def view(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "kind": run.kind,
        "status": run.status,
        "connection_id": run.connection_id,
        "subject_type": run.subject_type,
        "subject_id": run.subject_id,
        "params": run.params,
        "progress": {
            "records_read": run.records_read,
            "records_written": run.records_written,
            "records_skipped": run.records_skipped,
            "pages": run.pages,
        },
        "error": run.error,
        "resume_at": run.resume_at,
        "cancel_requested": run.cancel_requested,
        "tries": run.tries,
        "version": run.version,
        "created_by": run.created_by,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


async def create(
    m: Mutation,
    *,
    kind: str,
    params: dict[str, Any],
    connection_id: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
) -> Run:
    """A queued run; the caller enqueues its job (`JOBS[kind]`, `job_id(run.id)`) after the commit."""
    if kind not in JOBS:
        raise ValueError(f"unknown run kind {kind!r}")
    run = Run(
        id=new_id(),
        tenant_id=m.tenant_id,
        kind=kind,
        status=QUEUED,
        connection_id=connection_id,
        subject_type=subject_type,
        subject_id=subject_id,
        params=params,
        records_read=0,
        records_written=0,
        records_skipped=0,
        pages=0,
        cancel_requested=False,
        tries=0,
        version=1,
        created_by=m.context.principal.actor_key,
        created_at=m.now,
        updated_at=m.now,
    )
    m.session.add(run)
    m.record("run.created", resource_type=RESOURCE, resource_id=run.id, before=None, after=None, payload={"run": view(run)})
    await m.session.flush()
    return run


async def get(session: AsyncSession, run_id: str) -> Run:
    run = (await session.execute(select(Run).where(Run.id == run_id))).scalar_one_or_none()
    if run is None:
        raise NotFound("No such run")
    return run


async def list_runs(
    session: AsyncSession,
    *,
    limit: int = 50,
    cursor: str | None = None,
    connection_id: str | None = None,
    status: str | None = None,
    kind: str | None = None,
) -> tuple[list[Run], str | None]:
    limit = max(1, min(limit, MAX_LIMIT))
    order = Sort(Run.created_at, descending=True)
    stmt = select(Run)
    if connection_id is not None:
        stmt = stmt.where(Run.connection_id == connection_id)
    if status is not None:
        stmt = stmt.where(Run.status == status)
    if kind is not None:
        stmt = stmt.where(Run.kind == kind)
    rows = list((await session.execute(page(stmt, order, Run.id, limit=limit, cursor=cursor))).scalars())
    return split(rows, order, limit=limit)


async def request_cancel(m: Mutation, run_id: str) -> Run:
    """Cancel a queued run at once; ask a running one to stop (it stops at its next page)."""
    run = (await m.session.execute(select(Run).where(Run.id == run_id).with_for_update())).scalar_one_or_none()
    if run is None:
        raise NotFound("No such run")
    if run.status in FINISHED:
        raise Conflict(f"The run is already {run.status}")
    before = {"status": run.status, "cancel_requested": run.cancel_requested}
    if run.status == QUEUED:
        run.status = CANCELLED
        run.finished_at = m.now
    run.cancel_requested = True
    run.version += 1
    run.updated_at = m.now
    m.record(
        "run.cancel_requested", resource_type=RESOURCE, resource_id=run.id,
        before=before, after={"status": run.status, "cancel_requested": True}, payload={"run": view(run)},
    )  # fmt: skip
    await m.session.flush()
    return run


# --- what workers do (operational state: not audited)


class RunLost(Exception):
    """The attempt no longer holds its run: the run was started again, or ended, meanwhile.
    The writer's transaction is rolled back, and the writer stops."""


@dataclass(frozen=True, slots=True)
class Started:
    run: Run
    resumed: bool

    @property
    def attempt(self) -> int:
        """What the worker's writes for the run are fenced with (see the module's docstring)."""
        return self.run.tries


def held(run_id: str, attempt: int) -> ColumnElement[bool]:
    """Where the run is still running under `attempt`."""
    return (Run.id == run_id) & (Run.status == RUNNING) & (Run.tries == attempt)


async def start(db: Database, tenant_id: str, run_id: str, *, worker_id: str | None = None) -> Started | None:
    """Mark a run running (again, when resumed) by `worker_id`; None when there is nothing
    to do: the run is gone, finished, paused until later, or cancelled before it started."""
    now = utcnow()
    async with db.write(tenant_id) as session:
        run = (await session.execute(select(Run).where(Run.id == run_id).with_for_update())).scalar_one_or_none()
        if run is None or run.status in FINISHED:
            return None
        if run.status == QUEUED and run.resume_at is not None and run.resume_at > now:
            return None  # paused: the sweep queues it again when it is due
        if run.cancel_requested:
            _finish(run, CANCELLED, None, now)
            return None
        resumed = run.status == RUNNING or run.tries > 0
        run.status = RUNNING
        run.resume_at = None
        run.worker_id = worker_id
        run.started_at = run.started_at or now
        run.tries += 1
        run.version += 1
        run.updated_at = now
        return Started(run, resumed)


async def record_progress(
    session: AsyncSession,
    run_id: str,
    *,
    attempt: int,
    read: int = 0,
    written: int = 0,
    skipped: int = 0,
    pages: int = 0,
    checkpoint: dict[str, Any] | None = None,
) -> bool:
    """Add to a running run's progress and save its checkpoint, in the caller's transaction
    (the one that did the work, so the checkpoint never runs ahead of it or lags behind);
    True if a cancel was asked for.

    :raises RunLost: `attempt` no longer holds the run: nothing of the work may commit.
    """
    values: dict[str, Any] = {
        "records_read": Run.records_read + read,
        "records_written": Run.records_written + written,
        "records_skipped": Run.records_skipped + skipped,
        "pages": Run.pages + pages,
        "version": Run.version + 1,
        "updated_at": utcnow(),
    }
    if checkpoint is not None:
        values["checkpoint"] = checkpoint
    # One statement: the update says whether the attempt still held the run, and returns
    # whether a cancel was asked for.
    changed = await session.execute(
        update(Run)
        .where(held(run_id, attempt))
        .values(**values)
        .returning(Run.cancel_requested)
        .execution_options(synchronize_session=False)
    )
    row = changed.first()
    if row is None:
        raise RunLost(run_id)
    return bool(row[0])


async def progress(db: Database, tenant_id: str, run_id: str, **counts: Any) -> bool:
    """`record_progress` in a transaction of its own."""
    async with db.write(tenant_id) as session:
        return await record_progress(session, run_id, **counts)


def _finish(run: Run, status: str, error: dict[str, Any] | None, now: datetime) -> None:
    run.status = status
    run.error = error
    run.resume_at = None
    run.finished_at = now
    run.version += 1
    run.updated_at = now


async def finish_in(
    session: AsyncSession,
    run_id: str,
    status: str,
    error: dict[str, Any] | None = None,
    *,
    attempt: int | None = None,
    worker_id: str | None = None,
) -> Run | None:
    """`finish` in the caller's transaction; the run, or None if it was gone or already finished.

    :param attempt: the attempt working the run, which must still hold it.
    :param worker_id: a worker giving up its job (which may have died before it started the
        run): a run that another worker started since (running, or paused by it) is left to
        it (None).
    :raises RunLost: `attempt` no longer holds the run.
    """
    if status not in FINISHED:
        raise ValueError(f"{status!r} does not finish a run")
    run = (await session.execute(select(Run).where(Run.id == run_id).with_for_update())).scalar_one_or_none()
    if run is None or run.status in FINISHED:
        return None
    if attempt is not None and (run.status != RUNNING or run.tries != attempt):
        raise RunLost(run_id)
    if worker_id is not None and run.worker_id not in (None, worker_id):
        return None  # another worker has it, running or paused by it
    _finish(run, status, error, utcnow())
    await session.flush()
    return run


async def finish(
    db: Database,
    tenant_id: str,
    run_id: str,
    status: str,
    error: dict[str, Any] | None = None,
    *,
    attempt: int | None = None,
    worker_id: str | None = None,
) -> None:
    """End a run as succeeded, failed (with `error` as {code, message}) or cancelled, as
    its `attempt` or as a worker giving up its job (see `finish_in`)."""
    async with db.write(tenant_id) as session:
        await finish_in(session, run_id, status, error, attempt=attempt, worker_id=worker_id)


async def unattended(
    db: Database, *, queued_before: datetime, running_before: datetime, resuming_before: datetime
) -> list[tuple[str, str, str, datetime | None]]:
    """(tenant id, run id, kind, resume at) of runs whose job may be missing, in all
    tenants: queued and not started since `queued_before`, paused and due to resume before
    `resuming_before`, or running without progress since `running_before`."""
    async with db.read(None) as session:
        stmt = (
            select(Run.tenant_id, Run.id, Run.kind, Run.resume_at)
            .where(
                ((Run.status == QUEUED) & Run.resume_at.is_(None) & (Run.updated_at < queued_before))
                | ((Run.status == QUEUED) & (Run.resume_at < resuming_before))
                | ((Run.status == RUNNING) & (Run.updated_at < running_before))
            )
            .order_by(Run.created_at)
            .limit(1000)
            .execution_options(cross_tenant=True)
        )
        return [(t, r, k, at) for t, r, k, at in await session.execute(stmt)]


async def running(db: Database, *, quiet_since: datetime) -> list[tuple[str, str, str, str | None]]:
    """(tenant id, run id, kind, worker id) of running runs without progress since
    `quiet_since`, in all tenants: the candidates for a check of their worker's heartbeat."""
    async with db.read(None) as session:
        stmt = (
            select(Run.tenant_id, Run.id, Run.kind, Run.worker_id)
            .where(Run.status == RUNNING, Run.updated_at < quiet_since)
            .order_by(Run.updated_at)
            .limit(1000)
            .execution_options(cross_tenant=True)
        )
        return [(t, r, k, w) for t, r, k, w in await session.execute(stmt)]
