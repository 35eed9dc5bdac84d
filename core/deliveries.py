"""Webhook deliveries: one per (event, endpoint), retried on a schedule, every attempt logged.

    pending --2xx-------------------------------------> succeeded
    pending --failure, attempts left------------------> pending (next_attempt_at later)
    pending --failure, none left; 410; endpoint off---> failed
    failed | succeeded --replay-----------------------> pending (a new round of attempts)

A worker owns a pending delivery while its lease runs. One that dies lets the lease
lapse, and the delivery becomes due for any worker again: delivery is at least once,
and receivers dedupe by `webhook-id` (the event id, the same on every attempt).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    literal_column,
    null,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core import webhooks
from core.changes import Mutation
from core.db import Database, DriverStatement, Stamp, binds, pg_arrays, stamper
from core.errors import Conflict, NotFound
from core.ids import new_ids
from core.jsonable import dumps
from core.models import (
    OutboxEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from core.pagination import MAX_LIMIT, Sort, decode_cursor, encode_cursor, page, split
from core.vault import Vault, VaultError

RESOURCE = "webhook_delivery"
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
STATUSES = (PENDING, SUCCEEDED, FAILED)
# Attempt outcomes.
SUCCESS, HTTP_ERROR, TIMEOUT, CONNECTION_ERROR, ADDRESS_REFUSED, ENDPOINT_DISABLED = OUTCOMES = (
    "success", "http_error", "timeout", "connection_error", "address_refused", "endpoint_disabled",
)  # fmt: skip
MAX_ERROR_LENGTH = 500

D = WebhookDelivery


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed delivery is tried again: `schedule[n-1]` seconds after its n-th
    attempt, give or take `jitter`; never before a Retry-After the endpoint asked for."""

    schedule: tuple[float, ...]
    jitter: float = 0.2
    retry_after_max: float = 86400.0

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def delay(self, attempts_made: int, retry_after: float | None = None, rng: random.Random | None = None) -> float | None:
        """Seconds until the next attempt, or None when the round's attempts are used up."""
        if attempts_made >= self.max_attempts:
            return None
        base = self.schedule[attempts_made - 1]
        spread = (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        delay = max(0.0, base * (1 + spread))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay


@dataclass(slots=True)
class Target:
    """An endpoint as a worker sends to it."""

    endpoint_id: str
    tenant_id: str
    url: str
    enabled: bool
    secrets: tuple[str, ...]
    # False when this process cannot open the signing secrets (sealed under a vault key
    # it lacks, as during a key roll-out): nothing can be signed, so nothing is sent.
    readable: bool = True


@dataclass(slots=True)
class Due:
    """A delivery a worker has claimed, with the body it sends."""

    id: str
    tenant_id: str
    endpoint_id: str
    event_id: str
    event_type: str
    attempts: int
    total_attempts: int
    body: bytes
    # When the event was written (just before its commit): the start of delivery lag.
    event_created_at: datetime
    # The lease's end as the claim wrote it (`stamper`'s form): the fencing token its
    # result is recorded under. Claimed again (the lease lapsed), a delivery gets another.
    lease: Any


@dataclass(slots=True)
class AttemptResult:
    """What one attempt did, as the worker saw it."""

    due: Due
    started_at: datetime
    duration_ms: float
    outcome: str
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    # The endpoint asked for this delay (Retry-After on 429/502/503/504).
    retry_after: float | None = None
    # 410 Gone: stop, and disable the endpoint.
    gone: bool = False


@dataclass(slots=True)
class Recorded:
    """What recording a batch of attempts decided."""

    succeeded: int = 0
    retrying: int = 0
    failed: int = 0
    # (tenant id, endpoint id, reason, detail) of endpoints to disable now.
    disable: list[tuple[str, str, str, str]] = field(default_factory=list)
    # The earliest retry due, if any (a worker wakes for it rather than waiting a sweep).
    next_retry_at: datetime | None = None
    # Results dropped because their lease had passed to another claim (or the delivery
    # was deleted): the attempt was made, but the delivery is no longer this worker's.
    stale: int = 0


# --- the hot path's rows
#
# A delivery costs a handful of row writes, and at thousands per second SQLAlchemy's
# per-value type processing dominates them. The statements below name their tables'
# columns untyped and take values as the driver stores them: a UTC timestamp as SQLite's
# text (the format SQLAlchemy's SQLite DATETIME writes, so reads and comparisons agree)
# or a datetime for PostgreSQL; an event's payload as the JSON text the database holds.

RAW_DELIVERIES = table("webhook_deliveries", *(column(c.name) for c in WebhookDelivery.__table__.c))
RAW_EVENTS = table("outbox_events", *(column(c.name) for c in OutboxEvent.__table__.c))
# An event as the hot path reads it: its timestamps as the driver gives them (SQLite's
# text, or a datetime), its payload as the JSON text the database holds.
EVENT_COLUMNS = (
    RAW_EVENTS.c.id,
    RAW_EVENTS.c.tenant_id,
    RAW_EVENTS.c.event_type,
    RAW_EVENTS.c.resource_type,
    RAW_EVENTS.c.resource_id,
    cast(RAW_EVENTS.c.payload, Text).label("payload"),
    RAW_EVENTS.c.occurred_at,
    RAW_EVENTS.c.created_at,
)

class EventRow(NamedTuple):
    """A row of `EVENT_COLUMNS` (a plain tuple: reading a SQLAlchemy row's fields by name
    cost more than building the body from them)."""

    id: str
    tenant_id: str
    event_type: str
    resource_type: str
    resource_id: str
    payload: str
    occurred_at: Any
    created_at: Any


def _iso(value: datetime | str) -> str:
    """`core.jsonable.iso` of a timestamp as the driver gives it: SQLite's text
    (`2026-11-22 10:00:00.000000`, always with microseconds) or an aware datetime."""
    if isinstance(value, str):
        return value.replace(" ", "T", 1) + "Z"
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def read_time(value: datetime | str) -> datetime:
    """A timestamp as the driver gives it, as an aware datetime."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def envelope_body(event: EventRow) -> bytes:
    """The delivered body: the event envelope (`core.outbox.envelope`), with the payload
    as the database holds its JSON."""
    head = dumps(
        {
            "event_id": event.id,
            "event_type": event.event_type,
            "occurred_at": _iso(event.occurred_at),
            "tenant_id": event.tenant_id,
            "resource_type": event.resource_type,
            "resource_id": event.resource_id,
        }
    )
    return head[:-1] + b',"payload":' + event.payload.encode() + b"}"


def ids_in(key: Any, dialect: str) -> Any:
    """`key IN (:ids)`: on PostgreSQL `key = ANY(:ids)`, one array rather than a bind per id
    (and one prepared statement whatever their number)."""
    if dialect == "postgresql":
        return key == any_(cast(bindparam("ids"), postgresql.ARRAY(String)))
    return key.in_(bindparam("ids", expanding=True))


_READ_EVENTS = {d: select(*EVENT_COLUMNS).where(ids_in(RAW_EVENTS.c.id, d)) for d in ("sqlite", "postgresql")}


async def read_events(session: AsyncSession, ids: Collection[str]) -> dict[str, EventRow]:
    """Events by id (any tenant's)."""
    connection = await session.connection()
    stmt = _READ_EVENTS[connection.dialect.name]
    return {row[0]: EventRow(*row) for row in await connection.execute(stmt, {"ids": list(ids)})}


# --- what workers do


async def load_targets(db: Database, vault: Vault, endpoint_ids: Sequence[str]) -> dict[str, Target]:
    """The endpoints' URLs and signing secrets (a deleted endpoint is simply absent)."""
    if not endpoint_ids:
        return {}
    now = utcnow()
    async with db.read(None) as session:
        stmt = select(WebhookEndpoint).where(WebhookEndpoint.id.in_(list(endpoint_ids))).execution_options(cross_tenant=True)
        rows = list((await session.execute(stmt)).scalars())
    return {row.id: target_of(vault, row, now) for row in rows}


def target_of(vault: Vault, endpoint: WebhookEndpoint, now: datetime) -> Target:
    try:
        secrets = webhooks.unseal(vault, endpoint).signing(endpoint.previous_secret_expires_at, now)
    except VaultError:
        return Target(endpoint.id, endpoint.tenant_id, endpoint.url, endpoint.enabled, (), readable=False)
    return Target(endpoint.id, endpoint.tenant_id, endpoint.url, endpoint.enabled, secrets)


# Written out, not bound: the planner uses the partial index only when the query says its
# condition literally.
_IS_PENDING = D.status == literal_column(f"'{PENDING}'")
_R = RAW_DELIVERIES
# A leased delivery's `next_attempt_at` is its lease's end (when it is due again should
# its worker die), so the due index's range holds only deliveries no worker holds: a
# claim reads no leased rows to skip them.
_DUE = and_(
    _R.c.status == literal_column(f"'{PENDING}'"),
    _R.c.next_attempt_at <= bindparam("now"),
    or_(_R.c.lease_until.is_(None), _R.c.lease_until < bindparam("now")),
)
_CLAIMED = (_R.c.id, _R.c.tenant_id, _R.c.endpoint_id, _R.c.event_id, _R.c.event_type, _R.c.attempts, _R.c.total_attempts)


def _due(exclude: bool) -> Any:
    return and_(_DUE, _R.c.endpoint_id.not_in(bindparam("exclude", expanding=True))) if exclude else _DUE


_PROBES = {flag: select(_R.c.id).where(_due(flag)).limit(1) for flag in (False, True)}


def _claim(exclude: bool, limit: int) -> Any:
    chosen = select(_R.c.id).where(_due(exclude)).order_by(_R.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    return (
        update(_R)
        .where(_R.c.id.in_(chosen.scalar_subquery()))
        .values(lease_until=bindparam("lease"), lease_owner=bindparam("owner"), next_attempt_at=bindparam("lease"))
        .returning(*_CLAIMED)
    )


async def claim_due(
    db: Database, *, owner: str, lease_seconds: float, limit: int, exclude: Sequence[str] = ()
) -> list[Due]:
    """Lease up to `limit` due deliveries (retries, and those no worker holds) to `owner`.
    Several workers claim at once safely: rows locked by another are skipped."""
    now = utcnow()
    stamp = stamper(db)
    params: dict[str, Any] = {"now": stamp(now)}
    if exclude:
        params["exclude"] = list(exclude)
    # A cheap read first, so an idle sweep never takes the (SQLite) write lock.
    async with db.read(None) as session:
        connection = await session.connection()
        if (await connection.execute(_PROBES[bool(exclude)], params)).first() is None:
            return []
    async with db.write(None) as session:
        connection = await session.connection()
        params.update(lease=stamp(now + timedelta(seconds=lease_seconds)), owner=owner)
        claimed = list(await connection.execute(_claim(bool(exclude), limit), params))
        if not claimed:
            return []
        events = await read_events(session, {row[3] for row in claimed})
    due = []
    for id_, tenant_id, endpoint_id, event_id, event_type, attempts, total in claimed:
        event = events.get(event_id)
        if event is not None:
            body = envelope_body(event)
            due.append(
                Due(id_, tenant_id, endpoint_id, event_id, event_type, attempts, total, body, read_time(event.created_at), params["lease"])
            )
    return due


DELIVERY_COLUMNS = (
    "id", "tenant_id", "endpoint_id", "event_id", "event_type", "status", "attempts", "total_attempts",
    "next_attempt_at", "lease_until", "lease_owner", "created_at", "updated_at",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "id", "tenant_id", "delivery_id", "endpoint_id", "number", "started_at", "duration_ms", "status_code",
    "outcome", "error", "response_excerpt", "next_attempt_at",
)  # fmt: skip


def _insert_deliveries(dialect: str) -> Any:
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    # A delivery that exists already is kept (sending it twice is harmless).
    return insert_(RAW_DELIVERIES).values(binds(DELIVERY_COLUMNS)).on_conflict_do_nothing(
        index_elements=["endpoint_id", "event_id"]
    )


RAW_ENDPOINTS = table("webhook_endpoints", column("id"), column("failing_since"), column("version"))
# The first failure after a success starts an endpoint's failing period; a success ends it.
MARK_FAILING = DriverStatement(
    lambda dialect: update(RAW_ENDPOINTS)
    .where(RAW_ENDPOINTS.c.id == bindparam("b_id"), RAW_ENDPOINTS.c.failing_since.is_(None))
    .values(failing_since=bindparam("b_now"), version=literal_column("version + 1")),
    ("b_id", "b_now"),
)
MARK_RECOVERED = DriverStatement(
    lambda dialect: update(RAW_ENDPOINTS)
    .where(RAW_ENDPOINTS.c.id == bindparam("b_id"), RAW_ENDPOINTS.c.failing_since.is_not(None))
    .values(failing_since=null(), version=literal_column("version + 1")),
    ("b_id",),
)
INSERT_DELIVERIES = DriverStatement(_insert_deliveries, DELIVERY_COLUMNS)
# On PostgreSQL the values all new deliveries share are given once.
_PG_NEW_DELIVERIES = (
    f"INSERT INTO webhook_deliveries ({', '.join(DELIVERY_COLUMNS)}) "
    f"SELECT u.id, u.tenant_id, u.endpoint_id, u.event_id, u.event_type, '{PENDING}', 0, 0, "
    "CASE WHEN u.leased THEN $7::timestamptz ELSE $8::timestamptz END, "
    "CASE WHEN u.leased THEN $7::timestamptz END, CASE WHEN u.leased THEN $9::varchar END, "
    "$8::timestamptz, $8::timestamptz FROM "
    + pg_arrays(WebhookDelivery, ("id", "tenant_id", "endpoint_id", "event_id", "event_type"))[:-1]
    + ", $6::boolean[]) AS u(id, tenant_id, endpoint_id, event_id, event_type, leased) "
    "ON CONFLICT (endpoint_id, event_id) DO NOTHING"
)
# A new delivery: (id, tenant id, endpoint id, event id, event type, leased to the writer).
NewDelivery = tuple[str, str, str, str, str, bool]


async def insert_deliveries(session: AsyncSession, rows: Sequence[NewDelivery], *, now: Any, lease: Any, owner: str) -> None:
    """Write new pending deliveries (`now` and `lease` as `stamper` gives them); a leased
    one is due again when its lease ends. One that exists already is kept."""
    if not rows:
        return
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        columns = tuple(map(list, zip(*rows, strict=True)))
        await connection.exec_driver_sql(_PG_NEW_DELIVERIES, (*columns, lease, now, owner))
        return
    full = [
        (id_, tenant, endpoint, event, type_, PENDING, 0, 0, lease if leased else now,
         lease if leased else None, owner if leased else None, now, now)
        for id_, tenant, endpoint, event, type_, leased in rows
    ]  # fmt: skip
    await INSERT_DELIVERIES.executemany(session, full)
INSERT_ATTEMPTS = DriverStatement.insert(WebhookAttempt, ATTEMPT_COLUMNS)
# What FINISH_DELIVERIES sets, by bind name: the column it sets, or None for the key.
_FINISH = {
    "b_id": None, "b_status": "status", "b_attempts": "attempts", "b_total": "total_attempts",
    "b_next": "next_attempt_at", "b_code": "last_status_code", "b_error": "last_error",
    "b_started": "last_attempt_at", "b_now": "updated_at", "b_completed": "completed_at",
}  # fmt: skip
FINISH_COLUMNS = tuple(_FINISH)
# On SQLite (one writer: the rows `_held` read stay as they were until the commit).
FINISH_DELIVERIES = DriverStatement(
    lambda dialect: update(RAW_DELIVERIES)
    .where(RAW_DELIVERIES.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        total_attempts=bindparam("b_total"),
        next_attempt_at=bindparam("b_next"),
        lease_until=null(),
        lease_owner=null(),
        last_status_code=bindparam("b_code"),
        last_error=bindparam("b_error"),
        last_attempt_at=bindparam("b_started"),
        updated_at=bindparam("b_now"),
        completed_at=bindparam("b_completed"),
    ),
    FINISH_COLUMNS,
)
# On PostgreSQL the update checks the lease itself (one statement for the batch, no row
# locks taken beforehand) and says which rows it finished: (id, lease).
_PG_FINISH_HELD = (
    "UPDATE webhook_deliveries AS d SET "
    + ", ".join(f"{c} = u.{b}" for b, c in _FINISH.items() if c is not None)
    + ", lease_until = NULL, lease_owner = NULL FROM "
    + pg_arrays(WebhookDelivery, ["id" if c is None else c for c in _FINISH.values()] + ["lease_until"])
    + f" AS u({', '.join(_FINISH)}, b_lease) WHERE d.id = u.b_id AND d.lease_until = u.b_lease"
    + f" AND d.lease_owner = ${len(_FINISH) + 2} AND d.status = '{PENDING}' RETURNING d.id, u.b_lease"
)


async def release(db: Database, owner: str) -> int:
    """Give up `owner`'s leases on deliveries it has not attempted (a worker stopping), so
    that another worker takes them now rather than when the leases lapse."""
    async with db.write(None) as session:
        result = await session.execute(
            update(D)
            .where(_IS_PENDING, D.lease_owner == owner)
            .values(lease_until=None, lease_owner=None, next_attempt_at=utcnow())
            .execution_options(cross_tenant=True, synchronize_session=False)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def record(
    db: Database, results: Sequence[AttemptResult], *, owner: str, policy: RetryPolicy, disable_after_seconds: float
) -> Recorded:
    """Log a batch of attempts and move their deliveries on, in one transaction; notes
    endpoints that answered 410 or have failed for longer than `disable_after_seconds`.

    A result counts only while its delivery is still leased to `owner` under the lease it
    was claimed with. One whose lease lapsed and was claimed again (by another worker, or
    by this one) is dropped: the newer claim's result decides, and an old failure cannot
    set a delivered event back to pending or an endpoint back to failing."""
    if not results:
        return Recorded()
    now = utcnow()
    stamp = stamper(db)
    now_stamp = stamp(now)
    rows = _Rows(results, policy, stamp, now_stamp)
    async with db.write(None) as session:
        connection = await session.connection()
        postgresql = connection.dialect.name == "postgresql"
        if postgresql:
            columns = [*map(list, zip(*rows.changes, strict=True)), [r.due.lease for r in results]]
            held = {tuple(row) for row in await connection.exec_driver_sql(_PG_FINISH_HELD, (*columns, owner))}
        else:
            held = await _held(connection, results, owner)
        kept = [r for r in results if (r.due.id, r.due.lease) in held]
        if len(kept) < len(results):
            rows = _Rows(kept, policy, stamp, now_stamp)  # the finished rows' changes are as before
            rows.out.stale = len(results) - len(kept)
        if not postgresql:
            await FINISH_DELIVERIES.executemany(session, rows.changes)
        await INSERT_ATTEMPTS.executemany(session, rows.attempts)
        await MARK_FAILING.executemany(session, [(e, now_stamp) for e, ok in rows.endpoint_ok.items() if not ok])
        await MARK_RECOVERED.executemany(session, [(e,) for e, ok in rows.endpoint_ok.items() if ok])
    out = rows.out
    failing = [e for e, ok in rows.endpoint_ok.items() if not ok]
    if failing:
        async with db.read(None) as session:
            too_long = select(WebhookEndpoint.id).where(
                WebhookEndpoint.id.in_(failing),
                WebhookEndpoint.enabled.is_(True),
                WebhookEndpoint.failing_since < now - timedelta(seconds=disable_after_seconds),
            )
            for endpoint_id in (await session.execute(too_long.execution_options(cross_tenant=True))).scalars():
                out.disable.append(
                    (rows.tenants[endpoint_id], endpoint_id, webhooks.FAILING, "Every attempt failed for longer than allowed")
                )
    return out


# Written out, not bound, like _IS_PENDING.
_HELD = select(_R.c.id, _R.c.lease_until).where(
    _R.c.id.in_(bindparam("ids", expanding=True)), _R.c.lease_owner == bindparam("owner"), _R.c.status == literal_column(f"'{PENDING}'")
)


async def _held(connection: AsyncConnection, results: Sequence[AttemptResult], owner: str) -> set[tuple[str, Any]]:
    """(id, lease) of the results' deliveries leased to `owner` now (SQLite)."""
    ids = list({r.due.id for r in results})
    return {(id_, lease) for id_, lease in await connection.execute(_HELD, {"ids": ids, "owner": owner})}


class _Rows:
    """A batch of results as the rows `record` writes (ATTEMPT_COLUMNS' and FINISH_COLUMNS'
    order), and what they decide."""

    __slots__ = ("attempts", "changes", "endpoint_ok", "out", "tenants")

    def __init__(self, results: Sequence[AttemptResult], policy: RetryPolicy, stamp: Stamp, now_stamp: Any) -> None:
        self.out = out = Recorded()
        self.attempts: list[tuple[Any, ...]] = []
        self.changes: list[tuple[Any, ...]] = []
        # The last outcome per endpoint decides whether it is failing.
        self.endpoint_ok: dict[str, bool] = {}
        self.tenants: dict[str, str] = {}
        for r, attempt_id in zip(results, new_ids(len(results)), strict=True):
            due = r.due
            made = due.attempts + 1
            if r.outcome == SUCCESS:
                status, next_at = SUCCEEDED, None
                out.succeeded += 1
            else:
                delay = None if (r.gone or r.outcome == ENDPOINT_DISABLED) else policy.delay(made, r.retry_after)
                if delay is None:
                    status, next_at = FAILED, None
                    out.failed += 1
                else:
                    status, next_at = PENDING, r.started_at + timedelta(seconds=r.duration_ms / 1000 + delay)
                    out.retrying += 1
                    if out.next_retry_at is None or next_at < out.next_retry_at:
                        out.next_retry_at = next_at
            if r.outcome != ENDPOINT_DISABLED:
                self.endpoint_ok[due.endpoint_id] = r.outcome == SUCCESS
                self.tenants[due.endpoint_id] = due.tenant_id
            if r.gone:
                out.disable.append((due.tenant_id, due.endpoint_id, webhooks.GONE, "The endpoint answered 410 Gone"))
            started = stamp(r.started_at)
            next_stamp = stamp(next_at)
            error = None if r.error is None else r.error[:MAX_ERROR_LENGTH]
            number = due.total_attempts + 1
            self.attempts.append(
                (attempt_id, due.tenant_id, due.id, due.endpoint_id, number, started, round(r.duration_ms, 3),
                 r.status_code, r.outcome, error, r.excerpt, next_stamp)
            )  # fmt: skip
            self.changes.append(
                (due.id, status, made, number, next_stamp, r.status_code, error, started, now_stamp,
                 None if status == PENDING else now_stamp)
            )  # fmt: skip


# --- what callers see


def view(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "total_attempts": delivery.total_attempts,
        "next_attempt_at": delivery.next_attempt_at if delivery.status == PENDING else None,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "last_attempt_at": delivery.last_attempt_at,
        "created_at": delivery.created_at,
        "updated_at": delivery.updated_at,
        "completed_at": delivery.completed_at,
    }


def attempt_view(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "delivery_id": attempt.delivery_id,
        "number": attempt.number,
        "started_at": attempt.started_at,
        "duration_ms": attempt.duration_ms,
        "status_code": attempt.status_code,
        "outcome": attempt.outcome,
        "error": attempt.error,
        "response_excerpt": attempt.response_excerpt,
        "next_attempt_at": attempt.next_attempt_at,
    }


async def list_deliveries(
    session: AsyncSession,
    endpoint_id: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[WebhookDelivery], str | None]:
    await webhooks.get(session, endpoint_id)
    limit = max(1, min(limit, MAX_LIMIT))
    order = Sort(D.created_at, descending=True)
    stmt = select(D).where(D.endpoint_id == endpoint_id)
    if status is not None:
        stmt = stmt.where(D.status == status)
    if event_type is not None:
        stmt = stmt.where(D.event_type == event_type)
    if since is not None:
        stmt = stmt.where(D.created_at >= since)
    if until is not None:
        stmt = stmt.where(D.created_at < until)
    rows = list((await session.execute(page(stmt, order, D.id, limit=limit, cursor=cursor))).scalars())
    return split(rows, order, limit=limit)


async def get_delivery(session: AsyncSession, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
    stmt = select(D).where(D.id == delivery_id, D.endpoint_id == endpoint_id)
    delivery = (await session.execute(stmt)).scalar_one_or_none()
    if delivery is None:
        raise NotFound("No such delivery for this webhook endpoint")
    return delivery


async def list_attempts(
    session: AsyncSession, endpoint_id: str, delivery_id: str, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[WebhookAttempt], str | None]:
    await get_delivery(session, endpoint_id, delivery_id)
    limit = max(1, min(limit, MAX_LIMIT))
    order = Sort(WebhookAttempt.number, descending=False)
    stmt = select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
    rows = list((await session.execute(page(stmt, order, WebhookAttempt.id, limit=limit, cursor=cursor))).scalars())
    return split(rows, order, limit=limit)


def _requeue_values(now: datetime) -> dict[str, Any]:
    return {
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_until": None,
        "lease_owner": None,
        "completed_at": None,
        "updated_at": now,
    }


async def _enabled_endpoint(session: AsyncSession, endpoint_id: str) -> WebhookEndpoint:
    endpoint = await webhooks.get(session, endpoint_id)
    if not endpoint.enabled:
        raise Conflict("The webhook endpoint is disabled; enable it before replaying deliveries")
    return endpoint


async def replay_one(m: Mutation, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
    """Send a finished delivery again: a new round of attempts, the same `webhook-id`."""
    await _enabled_endpoint(m.session, endpoint_id)
    delivery = await get_delivery(m.session, endpoint_id, delivery_id)
    if delivery.status == PENDING:
        raise Conflict("The delivery is still pending; it will be attempted again on its own")
    before = {"status": delivery.status}
    for key, value in _requeue_values(m.now).items():
        setattr(delivery, key, value)
    m.record(
        "webhook_delivery.replayed", resource_type=RESOURCE, resource_id=delivery.id,
        before=before, after={"status": PENDING}, payload={"delivery": view(delivery)},
    )  # fmt: skip
    await m.session.flush()
    return delivery


async def check_replayable(session: AsyncSession, endpoint_id: str) -> None:
    await _enabled_endpoint(session, endpoint_id)


@dataclass(frozen=True, slots=True)
class ReplayPage:
    read: int
    requeued: int
    # Where the next page starts (None: the window is done).
    checkpoint: str | None


async def replay_failed_page(
    session: AsyncSession,
    endpoint_id: str,
    *,
    since: datetime,
    until: datetime,
    after: str | None,
    limit: int = 500,
) -> ReplayPage:
    """Requeue the next page of failed deliveries created in [since, until), in creation
    order, in the caller's (tenant's write) transaction."""
    stmt = select(D.id, D.created_at).where(
        D.endpoint_id == endpoint_id, D.status == FAILED, D.created_at >= since, D.created_at < until
    )
    if after is not None:
        created_at, last_id = decode_cursor(after, datetime)
        stmt = stmt.where(or_(D.created_at > created_at, and_(D.created_at == created_at, D.id > last_id)))
    rows = list(await session.execute(stmt.order_by(D.created_at, D.id).limit(limit)))
    if not rows:
        return ReplayPage(0, 0, None)
    result = await session.execute(
        update(D)
        .where(D.id.in_([row.id for row in rows]), D.status == FAILED)
        .values(**_requeue_values(utcnow()))
        .execution_options(synchronize_session=False)
    )
    requeued = result.rowcount  # type: ignore[attr-defined]
    last = rows[-1]
    checkpoint = encode_cursor(last.created_at, last.id) if len(rows) == limit else None
    return ReplayPage(len(rows), requeued, checkpoint)
