"""Runs: replays now, syncs and long actions later. Safe to poll (strong ETag,
If-None-Match answers 304); a run can be cancelled while it has not finished."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from core import jobs, runs
from core.changes import Mutation
from core.identity import Principal
from core.models import Run
from core.roles import Permission
from hub import etags
from hub.auth import State, require
from hub.problems import error_responses
from hub.state import HubState
from hub.writes import IdempotencyKey, Outcome, perform

log = logging.getLogger("hub.runs")
router = APIRouter(prefix="/api/v1/runs", tags=["runs"])
Reader = Annotated[Principal, Depends(require(Permission.RUNS_READ))]
Manager = Annotated[Principal, Depends(require(Permission.RUNS_MANAGE))]
RunId = Annotated[str, Path(max_length=36, description="The run's id", examples=["2a9b8c7d-6e5f-4a3b-8c1d-0e9f8a7b6c5d"])]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Progress(BaseModel):
    records_read: int
    records_written: int = Field(description="Records that changed the domain (created, updated or deleted)")
    records_skipped: int = Field(description="Records that did not fit the domain and were left out")
    pages: int


class RunError(BaseModel):
    code: str
    message: str


class RunOut(BaseModel):
    id: str
    kind: str = Field(examples=["webhook_replay"])
    status: RunStatus
    connection_id: str | None
    subject_type: str | None = Field(description="What the run works on", examples=["webhook_endpoint"])
    subject_id: str | None
    params: dict[str, Any]
    progress: Progress
    error: RunError | None = Field(description="Why the run failed; or, while a paused run waits, why it paused")
    resume_at: datetime | None = Field(description="When a paused run (rate limited, provider away) resumes")
    cancel_requested: bool
    tries: int = Field(description="How many times a worker has started it (a resumed run counts again)")
    version: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


def run_out(run: Run) -> RunOut:
    return RunOut.model_validate(runs.view(run))


async def enqueue_run(state: HubState, tenant_id: str, kind: str, run_id: str) -> None:
    """Queue a run's job after its commit; if Redis is away, the worker's sweep of
    unattended runs queues it."""
    try:
        await jobs.enqueue(
            state.redis, jobs.Keys(state.settings.worker_namespace), runs.JOBS[kind], tenant_id, run_id,
            job_id=runs.job_id(run_id),
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the run is in the database; it is not lost
        log.warning("run not enqueued (the worker's sweep will): %s", type(exc).__name__)


@router.get("", response_model=RunPage, summary="List runs, newest first", responses=error_responses(401, 403, 422, 500))
async def list_runs(
    state: State,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")] = None,
    connection_id: Annotated[str | None, Query(max_length=36, description="Only this connection's runs")] = None,
    status: Annotated[RunStatus | None, Query()] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
) -> RunPage:
    async with state.db.read(principal.tenant_id) as session:
        rows, next_cursor = await runs.list_runs(
            session, limit=limit, cursor=cursor, connection_id=connection_id, status=status, kind=kind
        )
        return RunPage(items=[run_out(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{run_id}",
    response_model=RunOut,
    summary="Get a run (poll it; If-None-Match answers 304 while nothing changed)",
    responses={
        200: {"description": "The run, with a strong ETag", "headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified (If-None-Match matched)"},
        **error_responses(401, 403, 404, 500),
    },
)
async def get_run(request: Request, state: State, principal: Reader, run_id: RunId) -> Response:
    async with state.db.read(principal.tenant_id) as session:
        run = await runs.get(session, run_id)
    tag = etags.etag(run.id, run.version)
    return etags.conditional_get(request, tag, run_out(run))


@router.post(
    "/{run_id}/cancel",
    response_model=RunOut,
    summary="Cancel a run",
    description="A queued run is cancelled at once; a running one stops at its next checkpoint "
    "(`cancel_requested` until then). A finished run answers 409.",
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 500),
)
async def cancel_run(
    request: Request, state: State, principal: Manager, run_id: RunId, _key: IdempotencyKey = None
) -> Response:
    async def action(m: Mutation) -> Outcome:
        run = await runs.request_cancel(m, run_id)
        return Outcome(200, run_out(run), {"ETag": etags.etag(run.id, run.version)})

    return await perform(request, state, principal, action)
