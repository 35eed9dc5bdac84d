"""Idempotency keys: the first request with a key does the work; repeats get its
stored response. The record is claimed inside the write transaction, so the
effect and the record commit together, and a concurrent duplicate waits for
the winner's commit (PostgreSQL's unique index; SQLite's single writer)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import DriverStatement, json_text
from core.errors import IdempotencyKeyReused, ValidationFailed
from core.models import IdempotencyRecord, utcnow

# Visible ASCII, as HTTP header values should be.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"
_VALID_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_RECORDS = IdempotencyRecord.__table__


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    content_type: str | None
    body: bytes
    headers: dict[str, str]


def check_key(key: str) -> str:
    if not _VALID_KEY.match(key):
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 visible ASCII characters",
            details=[{"loc": ["header", "Idempotency-Key"], "msg": "invalid idempotency key"}],
        )
    return key


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests 'the same': route and exact payload."""
    digest = hashlib.sha256()
    digest.update(method.upper().encode())
    digest.update(b" ")
    digest.update(path.encode())
    digest.update(b"\n")
    digest.update(body)
    return digest.hexdigest()


def _stored(record: IdempotencyRecord, request_fingerprint: str) -> StoredResponse | None:
    if record.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused("This Idempotency-Key was used with a different request")
    if record.status_code == 0:
        return None
    return StoredResponse(record.status_code, record.content_type, record.body or b"", record.headers or {})


async def find(session: AsyncSession, actor: str, key: str, request_fingerprint: str) -> StoredResponse | None:
    """The stored response for a completed repeat; raises on a reused key."""
    stmt = select(IdempotencyRecord).where(
        IdempotencyRecord.actor == actor, IdempotencyRecord.key == key, IdempotencyRecord.expires_at > utcnow()
    )
    record = (await session.execute(stmt)).scalar_one_or_none()
    return None if record is None else _stored(record, request_fingerprint)


@dataclass(frozen=True, slots=True)
class Claim:
    actor: str
    key: str
    fingerprint: str


async def claim_many(
    session: AsyncSession, *, tenant_id: str, claims: Sequence[Claim], ttl: timedelta
) -> set[tuple[str, str]]:
    """Take keys for this transaction in one statement; returns the (actor, key) pairs
    taken. A pair held by another request (or listed twice) is taken at most once."""
    if not claims:
        return set()
    now = utcnow()
    unique = {(c.actor, c.key): c for c in reversed(claims)}  # the first of duplicates wins

    async def insert_claims(pending: Sequence[Claim]) -> set[tuple[str, str]]:
        rows = [
            {
                "tenant_id": tenant_id,
                "actor": c.actor,
                "key": c.key,
                "fingerprint": c.fingerprint,
                "status_code": 0,
                "headers": {},
                "created_at": now,
                "expires_at": now + ttl,
            }
            for c in pending
        ]
        insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
        # A Core statement on the table (the rows name their tenant): the ORM's INSERT
        # costs more to prepare.
        stmt = (
            insert(_RECORDS)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["tenant_id", "actor", "key"])
            .returning(_RECORDS.c.actor, _RECORDS.c.key)
        )
        return {(actor, key) for actor, key in await session.execute(stmt)}

    won = await insert_claims(list(unique.values()))
    lost = [c for pair, c in unique.items() if pair not in won]
    if lost:
        # A key past its lifetime is free again: clear it and try once more.
        expired = await session.execute(
            delete(IdempotencyRecord)
            .where(IdempotencyRecord.key.in_({c.key for c in lost}), IdempotencyRecord.expires_at <= now)
            .execution_options(synchronize_session=False)
        )
        if expired.rowcount:
            won |= await insert_claims(lost)
    return won


async def claim(
    session: AsyncSession, *, tenant_id: str, actor: str, key: str, request_fingerprint: str, ttl: timedelta
) -> bool:
    """Take the key for this transaction; False if another request holds it."""
    taken = await claim_many(session, tenant_id=tenant_id, claims=[Claim(actor, key, request_fingerprint)], ttl=ttl)
    return (actor, key) in taken


# One executemany on the driver; not scoped by the ORM, so the tenant is named here.
_COMPLETE = DriverStatement.update(
    IdempotencyRecord, ("tenant_id", "actor", "key"), ("status_code", "content_type", "body", "headers")
)


async def complete_many(session: AsyncSession, responses: Sequence[tuple[str, str, StoredResponse]]) -> None:
    """Store the responses of claimed keys, given as (actor, key, response)."""
    if not responses:
        return
    tenant_id = session.info["tenant_id"]
    rows = [(tenant_id, actor, key, r.status_code, r.content_type, r.body, json_text(r.headers)) for actor, key, r in responses]
    await _COMPLETE.executemany(session, rows)


async def complete(session: AsyncSession, *, actor: str, key: str, response: StoredResponse) -> None:
    await complete_many(session, [(actor, key, response)])


async def release(session: AsyncSession, *, actor: str, key: str) -> None:
    """Give back a key claimed by a request that failed, so a retry runs again (a key
    holding a stored response is kept)."""
    await session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.actor == actor, IdempotencyRecord.key == key, IdempotencyRecord.status_code == 0
        )
    )


async def purge_expired(session: AsyncSession) -> int:
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow()).execution_options(cross_tenant=True)
    )
    return result.rowcount or 0
