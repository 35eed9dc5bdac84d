"""A mutation: one write transaction in which a change, its audit events and its
outbox events are written together or not at all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, outbox
from core.db import Database, Stamp, day_of, stamper
from core.identity import Principal
from core.models import utcnow


@dataclass(frozen=True, slots=True)
class ChangeContext:
    """Who asks for a change and under which request."""

    principal: Principal
    request_id: str | None = None
    idempotency_key: str | None = None

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id


@dataclass
class Mutation:
    session: AsyncSession
    context: ChangeContext
    trail: audit.AuditTrail
    events: outbox.Outbox
    now: datetime = field(default_factory=utcnow)

    @property
    def tenant_id(self) -> str:
        return self.context.tenant_id

    @cached_property
    def driver_stamp(self) -> Stamp:
        """How the session's driver takes a timestamp (for `core.db.DriverStatement` rows)."""
        return stamper(self.session)

    @cached_property
    def driver_day(self) -> Callable[[date | None], Any]:
        return day_of(self.session)

    def record(
        self,
        event_type: str,
        *,
        resource_type: str,
        resource_id: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        payload: dict[str, Any],
        context: ChangeContext | None = None,
    ) -> None:
        """Note one change: an audit event (with its diff) and an outbox event.

        `context` names who asked for this change when it differs from the
        transaction's (several requests written in one transaction)."""
        ctx = context or self.context
        self.trail.record(
            event_type,
            principal=ctx.principal,
            request_id=ctx.request_id,
            idempotency_key=ctx.idempotency_key,
            resource_type=resource_type,
            resource_id=resource_id,
            changes=audit.diff(before, after),
            occurred_at=self.now,
        )
        self.events.emit(
            event_type,
            resource_type=resource_type,
            resource_id=resource_id,
            payload=payload,
            occurred_at=self.now,
        )

    async def flush(self) -> None:
        await self.trail.flush()
        await self.events.flush()


@asynccontextmanager
async def mutation(db: Database, context: ChangeContext) -> AsyncIterator[Mutation]:
    """Open a tenant's write transaction; the audit chain head is locked first, which
    also serialises the tenant's writers (no race on natural keys)."""
    async with db.write(context.tenant_id) as session:
        trail = await audit.AuditTrail.begin(session)
        m = Mutation(session=session, context=context, trail=trail, events=outbox.Outbox(session, context.tenant_id))
        yield m
        await m.flush()
