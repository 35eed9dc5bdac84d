"""The transactional outbox: events written with the change that caused them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.db import DriverStatement, stamper
from core.ids import new_id
from core.jsonable import dumps, iso
from core.models import OutboxEvent, utcnow

_COLUMNS = (
    "id", "tenant_id", "event_type", "resource_type", "resource_id", "payload", "occurred_at", "created_at",
    "published_at",
)  # fmt: skip
_INSERT_EVENTS = DriverStatement.insert(OutboxEvent, _COLUMNS)


class Outbox:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._pending: list[tuple[Any, ...]] = []
        self._stamp = stamper(session)
        # One for the transaction's events: the relay orders events by it, then by id
        # (ids grow in the order they are made, core.ids).
        self._created_at: Any = None
        # Events flushed so far: after the commit, a non-zero count means "nudge the relay".
        self.written = 0
        self.last_event_id: str | None = None

    def emit(
        self,
        event_type: str,
        *,
        resource_type: str,
        resource_id: str,
        payload: dict[str, Any],
        occurred_at: datetime,
    ) -> str:
        event_id = new_id()
        self.last_event_id = event_id
        if self._created_at is None:
            self._created_at = self._stamp(utcnow())
        self._pending.append(
            (event_id, self._tenant_id, event_type, resource_type, resource_id,
             # As the JSON column stores it (what `normalise` would give, as text).
             dumps(payload).decode(), self._stamp(occurred_at), self._created_at, None)
        )  # fmt: skip
        return event_id

    async def flush(self) -> None:
        if self._pending:
            await _INSERT_EVENTS.executemany(self._session, self._pending)
            self.written += len(self._pending)
            self._pending = []


def envelope(event: OutboxEvent) -> dict[str, Any]:
    """The event as the contract shapes it for consumers."""
    return {
        "event_id": event.id,
        "event_type": event.event_type,
        "occurred_at": iso(event.occurred_at),
        "tenant_id": event.tenant_id,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "payload": event.payload,
    }
