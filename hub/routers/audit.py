"""The audit trail, read-only: list with filters, and verify the hash chain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel
from sqlalchemy import select

from core import audit
from core.identity import Principal
from core.models import AuditEvent
from core.pagination import decode_seq_cursor
from core.roles import Permission
from hub.auth import State, require
from hub.problems import error_responses

router = APIRouter(prefix="/api/v1/audit-events", tags=["audit"])
Auditor = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]


class Actor(BaseModel):
    kind: str
    id: str
    roles: list[str]


class Resource(BaseModel):
    type: str
    id: str


class AuditEventOut(BaseModel):
    id: str
    seq: int
    event_type: str
    actor: Actor
    resource: Resource
    changes: dict[str, Any]
    request_id: str | None
    idempotency_key: str | None
    occurred_at: datetime
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None


class BrokenLink(BaseModel):
    event_id: str | None
    seq: int | None
    reason: str


class VerifyOut(BaseModel):
    intact: bool
    events_checked: int
    first_broken: BrokenLink | None


def _out(e: AuditEvent) -> AuditEventOut:
    return AuditEventOut(
        id=e.id,
        seq=e.seq,
        event_type=e.event_type,
        actor=Actor(kind=e.actor_kind, id=e.actor_id, roles=e.actor_roles),
        resource=Resource(type=e.resource_type, id=e.resource_id),
        changes=e.changes,
        request_id=e.request_id,
        idempotency_key=e.idempotency_key,
        occurred_at=e.occurred_at,
        prev_hash=e.prev_hash,
        hash=e.hash,
    )


@router.get("", response_model=AuditPage, summary="List audit events", responses=error_responses(401, 403, 422, 500))
async def list_events(
    state: State,
    principal: Auditor,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=32, description="`next_cursor` of the previous page")] = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
    event_type: Annotated[str | None, Query(max_length=100, examples=["deal.updated"])] = None,
    resource_type: Annotated[str | None, Query(max_length=64, examples=["deal"])] = None,
    resource_id: Annotated[str | None, Query(max_length=255)] = None,
    actor_id: Annotated[str | None, Query(max_length=200)] = None,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[AwareDatetime | None, Query()] = None,
    until: Annotated[AwareDatetime | None, Query()] = None,
) -> AuditPage:
    stmt = select(AuditEvent)
    for column, value in (
        (AuditEvent.event_type, event_type),
        (AuditEvent.resource_type, resource_type),
        (AuditEvent.resource_id, resource_id),
        (AuditEvent.actor_id, actor_id),
        (AuditEvent.request_id, request_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if since is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.occurred_at < until)
    if cursor is not None:
        after = decode_seq_cursor(cursor)
        stmt = stmt.where(AuditEvent.seq < after if order == "desc" else AuditEvent.seq > after)
    stmt = stmt.order_by(AuditEvent.seq.desc() if order == "desc" else AuditEvent.seq.asc()).limit(limit + 1)
    async with state.db.read(principal.tenant_id) as session:
        rows = list((await session.execute(stmt)).scalars())
    next_cursor = str(rows[limit - 1].seq) if len(rows) > limit else None
    return AuditPage(items=[_out(e) for e in rows[:limit]], next_cursor=next_cursor)


@router.get(
    "/verify",
    response_model=VerifyOut,
    summary="Verify the tenant's audit hash chain",
    responses=error_responses(401, 403, 500),
)
async def verify(state: State, principal: Auditor) -> VerifyOut:
    async with state.db.read(principal.tenant_id) as session:
        result = await audit.verify(session)
    broken = None
    if not result.intact:
        broken = BrokenLink(event_id=result.first_broken_event_id, seq=result.first_broken_seq, reason=result.reason or "")
    return VerifyOut(intact=result.intact, events_checked=result.events_checked, first_broken=broken)
