"""The audit trail: append-only, and a hash chain per tenant so that any edit,
deletion or reordering of past events is detectable by `verify`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import DriverStatement, json_text, stamper
from core.identity import Principal
from core.ids import new_id
from core.jsonable import dumps, iso
from core.models import AuditEvent, AuditHead

GENESIS_HASH = "0" * 64
_VERIFY_CHUNK = 1000
_HEADS = AuditHead.__table__
# A Core statement naming the tenant: cheaper to run than one scoped by the ORM (core.db).
_LOCK_HEAD = (
    select(_HEADS.c.id, _HEADS.c.seq, _HEADS.c.hash).where(_HEADS.c.tenant_id == bindparam("tenant_id")).with_for_update()
)
# On the table, not the ORM model: an ORM UPDATE costs several times more to run.
_MOVE_HEAD = (
    update(_HEADS).where(_HEADS.c.id == bindparam("head_id")).values(seq=bindparam("seq"), hash=bindparam("hash"))
)
_COLUMNS = (
    "id", "tenant_id", "seq", "event_type", "actor_kind", "actor_id", "actor_roles", "resource_type", "resource_id",
    "changes", "request_id", "idempotency_key", "occurred_at", "prev_hash", "hash",
)  # fmt: skip
_INSERT_EVENTS = DriverStatement.insert(AuditEvent, _COLUMNS)


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Only what changed: the fields' old and new values."""
    if before is None or after is None:
        return {"before": before, "after": after}
    keys = [k for k in after.keys() | before.keys() if before.get(k) != after.get(k)]
    keys.sort()
    return {"before": {k: before.get(k) for k in keys}, "after": {k: after.get(k) for k in keys}}


def event_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The event's hash, over its fields as stored (`row`: the event's columns)."""
    return _hash(prev_hash, row, iso(row["occurred_at"]), row["changes"])


def _hash(prev_hash: str, row: dict[str, Any], occurred_at: str, changes: Any) -> str:
    material = {
        "id": row["id"],
        "tenant_id": row["tenant_id"],
        "seq": row["seq"],
        "event_type": row["event_type"],
        "actor_kind": row["actor_kind"],
        "actor_id": row["actor_id"],
        "actor_roles": row["actor_roles"],
        "resource_type": row["resource_type"],
        "resource_id": row["resource_id"],
        "changes": changes,
        "request_id": row["request_id"],
        "idempotency_key": row["idempotency_key"],
        "occurred_at": occurred_at,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(dumps(material, sort_keys=True)).hexdigest()


async def create_chain(session: AsyncSession, tenant_id: str) -> None:
    await session.execute(insert(AuditHead).values(tenant_id=tenant_id, seq=0, hash=GENESIS_HASH))


class AuditTrail:
    """The audit events of one transaction, chained onto the tenant's locked head."""

    def __init__(self, session: AsyncSession, head: Any) -> None:
        """`head`: the locked chain head's id, seq and hash."""
        self._session = session
        self._head_id = head.id
        self._start_seq = head.seq
        self._seq = head.seq
        self._hash = head.hash
        self._pending: list[tuple[Any, ...]] = []
        self._stamp = stamper(session)
        # The events of a transaction mostly share one actor and one timestamp: what is
        # derived from them is worked out once.
        self._occurred_at: tuple[datetime, str, Any] | None = None  # (given, as hashed, as stored)
        self._actor: tuple[Principal, list[str], str | None] | None = None  # (given, roles, roles as stored)

    @classmethod
    async def begin(cls, session: AsyncSession) -> AuditTrail:
        """Lock the session tenant's chain head for this transaction."""
        head = (await session.execute(_LOCK_HEAD, {"tenant_id": session.info["tenant_id"]})).one()
        return cls(session, head)

    def record(
        self,
        event_type: str,
        *,
        principal: Principal,
        request_id: str | None,
        idempotency_key: str | None,
        resource_type: str,
        resource_id: str,
        changes: dict[str, Any],
        occurred_at: datetime,
    ) -> None:
        self._seq += 1
        if self._actor is None or self._actor[0] is not principal:
            roles = principal.sorted_roles
            self._actor = (principal, roles, json_text(roles))
        if self._occurred_at is None or self._occurred_at[0] != occurred_at:
            self._occurred_at = (occurred_at, iso(occurred_at), self._stamp(occurred_at))
        # The changes as their JSON column will hold them, encoded once: with sorted keys
        # it is also the text the hash covers (what a stored event's changes encode to).
        changes_json = dumps(changes, sort_keys=True)
        row = {
            "id": new_id(),
            "tenant_id": principal.tenant_id,
            "seq": self._seq,
            "event_type": event_type,
            "actor_kind": principal.actor_kind,
            "actor_id": principal.actor_id,
            "actor_roles": self._actor[1],
            "resource_type": resource_type,
            "resource_id": resource_id,
            "request_id": request_id,
            "idempotency_key": idempotency_key,
        }
        prev_hash = self._hash
        self._hash = _hash(prev_hash, row, self._occurred_at[1], orjson.Fragment(changes_json))
        self._pending.append(
            (row["id"], row["tenant_id"], self._seq, event_type, principal.actor_kind, principal.actor_id,
             self._actor[2], resource_type, resource_id, changes_json.decode(), request_id, idempotency_key,
             self._occurred_at[2], prev_hash, self._hash)
        )  # fmt: skip

    @property
    def written(self) -> int:
        """Events recorded in this transaction (committed if it commits)."""
        return self._seq - self._start_seq

    async def flush(self) -> None:
        if not self._pending:
            return
        await _INSERT_EVENTS.executemany(self._session, self._pending)
        await self._session.execute(_MOVE_HEAD, {"head_id": self._head_id, "seq": self._seq, "hash": self._hash})
        self._pending = []


@dataclass(frozen=True)
class Verification:
    intact: bool
    events_checked: int
    first_broken_event_id: str | None = None
    first_broken_seq: int | None = None
    reason: str | None = None


def _as_row(event: AuditEvent) -> dict[str, Any]:
    return {c.name: getattr(event, c.name) for c in AuditEvent.__table__.columns}


async def verify(session: AsyncSession) -> Verification:
    """Walk the session tenant's chain in order and report the first broken link."""
    prev_hash, expected_seq, checked = GENESIS_HASH, 1, 0
    last_seq = 0
    while True:
        rows: Sequence[AuditEvent] = (
            (
                await session.execute(
                    select(AuditEvent).where(AuditEvent.seq > last_seq).order_by(AuditEvent.seq).limit(_VERIFY_CHUNK)
                )
            )
            .scalars()
            .all()
        )
        if not rows:
            break
        for event in rows:
            problem = None
            if event.seq != expected_seq:
                problem = f"sequence gap: expected {expected_seq}, found {event.seq}"
            elif event.prev_hash != prev_hash:
                problem = "previous-hash link does not match the preceding event"
            elif event_hash(prev_hash, _as_row(event)) != event.hash:
                problem = "content does not match its hash"
            if problem:
                return Verification(False, checked, event.id, event.seq, problem)
            prev_hash, expected_seq, checked = event.hash, expected_seq + 1, checked + 1
        last_seq = rows[-1].seq
        session.expunge_all()
    head = (await session.execute(select(AuditHead))).scalar_one()
    if head.seq != checked or head.hash != prev_hash:
        return Verification(False, checked, None, head.seq, "chain head does not match the last event (events removed)")
    return Verification(True, checked)
