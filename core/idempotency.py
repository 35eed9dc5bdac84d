"""Idempotency keys: the first request with a key does the work; repeats get its
stored response. The record is claimed inside the write transaction, so the
effect and the record commit together, and a concurrent duplicate waits for
the winner's commit (PostgreSQL's unique index; SQLite's single writer)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import IdempotencyKeyReused, ValidationFailed
from core.models import IdempotencyRecord, utcnow

# Visible ASCII, as HTTP header values should be.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"
_VALID_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


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


async def claim(
    session: AsyncSession, *, tenant_id: str, actor: str, key: str, request_fingerprint: str, ttl: timedelta
) -> bool:
    """Take the key for this transaction; False if another request holds it."""
    now = utcnow()
    await session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.actor == actor, IdempotencyRecord.key == key, IdempotencyRecord.expires_at <= now
        )
    )
    dialect = session.bind.dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(IdempotencyRecord)
        .values(
            tenant_id=tenant_id,
            actor=actor,
            key=key,
            fingerprint=request_fingerprint,
            status_code=0,
            headers={},
            created_at=now,
            expires_at=now + ttl,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "actor", "key"])
        .returning(IdempotencyRecord.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def complete(session: AsyncSession, *, actor: str, key: str, response: StoredResponse) -> None:
    await session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.actor == actor, IdempotencyRecord.key == key)
        .values(
            status_code=response.status_code,
            content_type=response.content_type,
            body=response.body,
            headers=response.headers,
        )
    )


async def purge_expired(session: AsyncSession) -> int:
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow()).execution_options(cross_tenant=True)
    )
    return result.rowcount or 0
