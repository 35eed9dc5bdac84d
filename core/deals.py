"""Deals: create, read, change, delete, and the idempotent upsert by external reference."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import String, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from core.changes import ChangeContext, Mutation
from core.db import DriverStatement, TenantScopeMissing, decimal_text, json_text
from core.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from core.ids import new_id
from core.jsonable import merge_patch
from core.models import Deal, DealRef
from core.pagination import MAX_LIMIT, Sort, page, split
from core.schemas import (
    MAX_ATTRIBUTES,
    DealCreate,
    DealFields,
    DealOut,
    DealPatch,
    ExternalRef,
)

RESOURCE = "deal"
BUSINESS_FIELDS = ("name", "stage", "amount", "currency", "close_date", "company", "owner", "attributes")
SORTABLE = {"created_at": Deal.created_at, "updated_at": Deal.updated_at, "name": Deal.name}


def snapshot(deal: Deal | DealRow) -> dict[str, Any]:
    return {f: getattr(deal, f) for f in BUSINESS_FIELDS}


def view(deal: Deal | DealRow) -> DealOut:
    return DealOut(
        id=deal.id,
        **snapshot(deal),
        external_refs=[ExternalRef(system=r.system, external_id=r.external_id) for r in deal.refs],
        version=deal.version,
        created_at=deal.created_at,
        updated_at=deal.updated_at,
    )


@lru_cache(maxsize=256)  # a transaction's deals share their timestamps
def _json_time(value: datetime) -> str:
    # As pydantic writes a datetime: ISO 8601, "Z" for UTC, no zero microseconds.
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def view_json(deal: Deal | DealRow) -> dict[str, Any]:
    """`view(deal).model_dump(mode="json")`, built directly: a pydantic model per event
    was a large share of a batch upsert's time."""
    return {
        "id": deal.id,
        "name": deal.name,
        "stage": deal.stage,
        "amount": None if deal.amount is None else str(deal.amount),
        "currency": deal.currency,
        "close_date": None if deal.close_date is None else deal.close_date.isoformat(),
        "company": deal.company,
        "owner": deal.owner,
        "attributes": deal.attributes,
        "external_refs": [{"system": r.system, "external_id": r.external_id} for r in deal.refs],
        "version": deal.version,
        "created_at": _json_time(deal.created_at),
        "updated_at": _json_time(deal.updated_at),
    }


def _payload(deal: Deal | DealRow, changed: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"deal": view_json(deal)}
    if changed is not None:
        body["changed_fields"] = changed
    return body


def parse_sort(value: str) -> Sort:
    descending = value.startswith("-")
    column = SORTABLE.get(value.lstrip("-"))
    if column is None:
        raise ValidationFailed(
            f"Cannot sort by {value!r}",
            details=[{"loc": ["query", "sort"], "msg": f"one of {sorted(SORTABLE)}, optionally prefixed with '-'"}],
        )
    return Sort(column, descending)


async def get(session: AsyncSession, deal_id: str) -> Deal:
    deal = (await session.execute(select(Deal).where(Deal.id == deal_id, Deal.deleted_at.is_(None)))).scalar_one_or_none()
    if deal is None:
        raise NotFound("No such deal")
    return deal


async def get_by_ref(session: AsyncSession, system: str, external_id: str) -> Deal:
    stmt = (
        select(Deal)
        .join(DealRef, DealRef.deal_id == Deal.id)
        .where(DealRef.system == system, DealRef.external_id == external_id, Deal.deleted_at.is_(None))
    )
    deal = (await session.execute(stmt)).scalar_one_or_none()
    if deal is None:
        raise NotFound("No deal has this external reference")
    return deal


async def list_deals(
    session: AsyncSession,
    *,
    limit: int = 50,
    cursor: str | None = None,
    sort: str = "-created_at",
    stage: str | None = None,
    updated_since: datetime | None = None,
    system: str | None = None,
    external_id: str | None = None,
) -> tuple[list[Deal], str | None]:
    limit = max(1, min(limit, MAX_LIMIT))
    order = parse_sort(sort)
    stmt = select(Deal).where(Deal.deleted_at.is_(None))
    if stage is not None:
        stmt = stmt.where(Deal.stage == stage)
    if updated_since is not None:
        stmt = stmt.where(Deal.updated_at >= updated_since)
    if system is not None or external_id is not None:
        refs = select(DealRef.deal_id)
        if system is not None:
            refs = refs.where(DealRef.system == system)
        if external_id is not None:
            refs = refs.where(DealRef.external_id == external_id)
        stmt = stmt.where(Deal.id.in_(refs))
    rows = list((await session.execute(page(stmt, order, Deal.id, limit=limit, cursor=cursor))).scalars())
    return split(rows, order, limit=limit)


async def _refs_taken(session: AsyncSession, refs: Sequence[ExternalRef]) -> list[ExternalRef]:
    taken = []
    for ref in refs:
        stmt = select(DealRef.id).where(DealRef.system == ref.system, DealRef.external_id == ref.external_id)
        if (await session.execute(stmt)).first() is not None:
            taken.append(ref)
    return taken


def _new_deal(m: Mutation, fields: DealFields, refs: Sequence[ExternalRef]) -> Deal:
    deal = Deal(
        id=new_id(),
        tenant_id=m.tenant_id,
        **{f: getattr(fields, f) for f in BUSINESS_FIELDS},
        version=1,
        created_at=m.now,
        updated_at=m.now,
    )
    deal.refs = [
        DealRef(id=new_id(), tenant_id=m.tenant_id, system=r.system, external_id=r.external_id, created_at=m.now)
        for r in refs
    ]
    return deal


@dataclass(slots=True)
class RefRow:
    id: str
    system: str
    external_id: str
    created_at: datetime


@dataclass(slots=True)
class DealRow:
    """A deal as plain values, for the upsert: ORM instances cost ~10x more to build and
    load. Shaped like `Deal` for `snapshot` and `view`; created ones are written with one
    bulk INSERT, changed ones with one executemany UPDATE."""

    id: str
    name: str
    stage: str | None
    amount: Any
    currency: str | None
    close_date: Any
    company: str | None
    owner: str | None
    attributes: dict[str, Any]
    refs: list[RefRow]
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


def _draft(m: Mutation, fields: DealFields, system: str, external_id: str) -> DealRow:
    return DealRow(
        id=new_id(),
        **{f: getattr(fields, f) for f in BUSINESS_FIELDS},
        refs=[RefRow(new_id(), system, external_id, m.now)],
        version=1,
        created_at=m.now,
        updated_at=m.now,
    )


_DEAL_COLUMNS = ("id", "tenant_id", *BUSINESS_FIELDS, "version", "created_at", "updated_at", "deleted_at")
_INSERT_DEALS = DriverStatement.insert(Deal, _DEAL_COLUMNS)
_INSERT_REFS = DriverStatement.insert(DealRef, ("id", "tenant_id", "deal_id", "system", "external_id", "created_at"))


def _fields(m: Mutation, deal: DealRow) -> tuple[Any, ...]:
    """The deal's business fields and version as the driver takes them."""
    return (
        deal.name, deal.stage, decimal_text(deal.amount), deal.currency, m.driver_day(deal.close_date), deal.company,
        deal.owner, json_text(deal.attributes), deal.version,
    )  # fmt: skip


async def _bulk_insert(m: Mutation, drafts: Sequence[DealRow]) -> None:
    if drafts:
        tenant_id, stamp = m.tenant_id, m.driver_stamp
        rows = [
            (d.id, tenant_id, *_fields(m, d), stamp(d.created_at), stamp(d.updated_at), stamp(d.deleted_at))
            for d in drafts
        ]
        await _INSERT_DEALS.executemany(m.session, rows)
        refs = [(r.id, tenant_id, d.id, r.system, r.external_id, stamp(r.created_at)) for d in drafts for r in d.refs]
        await _INSERT_REFS.executemany(m.session, refs)


async def create(m: Mutation, data: DealCreate) -> Deal:
    # A reference listed twice means the same thing as once.
    refs = list({(r.system, r.external_id): r for r in data.external_refs}.values())
    taken = await _refs_taken(m.session, refs)
    if taken:
        raise Conflict(
            "An external reference already belongs to another deal",
            details=[{"loc": ["body", "external_refs"], "msg": f"{r.system}/{r.external_id} is taken"} for r in taken],
        )
    deal = _new_deal(m, data, refs)
    m.session.add(deal)
    m.record("deal.created", resource_type=RESOURCE, resource_id=deal.id, before=None, after=snapshot(deal), payload=_payload(deal))
    await m.session.flush()
    return deal


Precondition = Callable[[Deal], bool]


def _check(deal: Deal, precondition: Precondition | None) -> None:
    if precondition is not None and not precondition(deal):
        raise PreconditionFailed("The deal changed since you read it")


def _apply(m: Mutation, deal: Deal | DealRow, values: dict[str, Any]) -> list[str] | None:
    """Set changed fields and return their names; None when the deal is untouched
    (a soft-deleted deal that is written again is restored, even with no field change)."""
    changed = sorted(k for k, v in values.items() if getattr(deal, k) != v)
    if not changed and deal.deleted_at is None:
        return None
    for key in changed:
        setattr(deal, key, values[key])
    deal.deleted_at = None
    deal.version += 1
    deal.updated_at = m.now
    return changed


_WRITTEN_COLUMNS = (*BUSINESS_FIELDS, "version", "updated_at", "deleted_at")
# One statement for any number of changed deals (an executemany, or one UPDATE from
# arrays on PostgreSQL): the ORM would send one UPDATE per row to check each row count.
_BULK_UPDATE = DriverStatement.update(Deal, ("tenant_id", "id"), _WRITTEN_COLUMNS)


async def _bulk_update(m: Mutation, deals: Sequence[DealRow]) -> None:
    if deals:
        tenant_id = m.tenant_id
        stamp = m.driver_stamp
        rows = [(tenant_id, d.id, *_fields(m, d), stamp(d.updated_at), stamp(d.deleted_at)) for d in deals]
        await _BULK_UPDATE.executemany(m.session, rows)


async def update(m: Mutation, deal_id: str, patch: DealPatch, *, precondition: Precondition | None = None) -> Deal:
    """Apply a merge patch; `precondition` (e.g. an If-Match check) is tested on the
    current row inside the transaction."""
    deal = await get(m.session, deal_id)
    _check(deal, precondition)
    values = {k: getattr(patch, k) for k in patch.model_fields_set}
    if "attributes" in values:
        # Merge patch: an object merges into the attributes, null clears them all.
        patch_attributes = values["attributes"]
        values["attributes"] = {} if patch_attributes is None else merge_patch(deal.attributes, patch_attributes)
        if len(values["attributes"]) > MAX_ATTRIBUTES:
            raise ValidationFailed(
                f"A deal has at most {MAX_ATTRIBUTES} attributes",
                details=[{"loc": ["body", "attributes"], "msg": f"at most {MAX_ATTRIBUTES} attributes after the merge"}],
            )
    before = snapshot(deal)
    changed = _apply(m, deal, values)
    if changed is not None:
        m.record(
            "deal.updated", resource_type=RESOURCE, resource_id=deal.id, before=before, after=snapshot(deal),
            payload=_payload(deal, changed),
        )
        await m.session.flush()
    return deal


async def delete(m: Mutation, deal_id: str, *, precondition: Precondition | None = None) -> None:
    """Soft delete: the row stays for the audit trail and for a CRM that re-sends it."""
    deal = await get(m.session, deal_id)
    _check(deal, precondition)
    before = snapshot(deal)
    deal.deleted_at = m.now
    deal.version += 1
    deal.updated_at = m.now
    m.record("deal.deleted", resource_type=RESOURCE, resource_id=deal.id, before=before, after=None, payload=_payload(deal))
    await m.session.flush()


@dataclass(frozen=True, slots=True)
class UpsertOutcome:
    status: Literal["created", "updated", "unchanged"]
    deal: Deal | DealRow
    # The deal's version right after this item (a later item of the batch may change the deal again).
    version: int


def _among(column: Any, name: str, *, postgresql: bool) -> tuple[Any, Any]:
    """(a join target or None, a condition): `column` among the list parameter `name`.

    SQLite gets `IN (...)`. PostgreSQL gets a join on `unnest` of one array parameter:
    asyncpg prepares every statement, and from its sixth run PostgreSQL may reuse a generic
    plan that, made while the table was small, scanned it comparing each row with every
    key of the list; a 2,000-key lookup grew from 15 ms to 2 s per page of a sync as the
    table filled. The join stays an index or hash lookup whatever plan is cached."""
    if not postgresql:
        return None, column.in_(bindparam(name, expanding=True))
    keys = func.unnest(bindparam(name, type_=ARRAY(String))).table_valued("key").render_derived()
    return keys, column == keys.c.key


def _lookup(columns: Sequence[Any], column: Any, name: str, *, postgresql: bool, where: Any = None) -> Any:
    keys, condition = _among(column, name, postgresql=postgresql)
    stmt = select(*columns)
    stmt = stmt.join(keys, condition) if keys is not None else stmt.where(condition)
    return stmt.where(where) if where is not None else stmt


# The upsert's lookups, built once per dialect (building a statement costs more than running
# a cached one). Core statements on the tables, each naming its tenant: the ORM's tenant
# scope (core.db) more than doubled the cost of running one.
_REFS_T, _DEALS_T = DealRef.__table__, Deal.__table__
# In DealRow's order (less `refs`).
_LOADED_COLUMNS = ("id", *BUSINESS_FIELDS, "version", "created_at", "updated_at", "deleted_at")
_REF_COLUMNS = tuple(_REFS_T.c[c] for c in ("deal_id", "id", "system", "external_id", "created_at"))
_LOOKUPS = {
    postgresql: (
        _lookup(
            (_REFS_T.c.external_id, _REFS_T.c.deal_id), _REFS_T.c.external_id, "external_ids", postgresql=postgresql,
            where=(_REFS_T.c.tenant_id == bindparam("tenant_id")) & (_REFS_T.c.system == bindparam("system")),
        ),
        _lookup(
            [_DEALS_T.c[c] for c in _LOADED_COLUMNS], _DEALS_T.c.id, "deal_ids",
            postgresql=postgresql, where=_DEALS_T.c.tenant_id == bindparam("tenant_id"),
        ),
        # In the order of the ORM relationship `Deal.refs`.
        _lookup(
            _REF_COLUMNS, _REFS_T.c.deal_id, "deal_ids", postgresql=postgresql,
            where=_REFS_T.c.tenant_id == bindparam("tenant_id"),
        ).order_by(_REFS_T.c.created_at, _REFS_T.c.id),
    )
    for postgresql in (False, True)
}  # fmt: skip


async def _load_by_refs(session: AsyncSession, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DealRow]:
    """The deals (with all their refs) that the given natural keys name, as plain rows.

    Separate key lookups, not one join: each is an index lookup whatever the planner
    believes (a join planned on stale statistics scanned every ref of the tenant)."""
    deals_of_refs, deals_by_id, refs_of_deals = _LOOKUPS[session.bind.dialect.name == "postgresql"]
    tenant_id = session.info["tenant_id"]
    if tenant_id is None:
        raise TenantScopeMissing("an upsert without a tenant scope")
    by_system: dict[str, set[str]] = defaultdict(set)
    for system, external_id in keys:
        by_system[system].add(external_id)
    deal_of: dict[tuple[str, str], str] = {}
    for system, ids in by_system.items():
        params = {"tenant_id": tenant_id, "system": system, "external_ids": list(ids)}
        for external_id, deal_id in await session.execute(deals_of_refs, params):
            deal_of[(system, external_id)] = deal_id
    if not deal_of:
        return {}
    deal_ids = {"tenant_id": tenant_id, "deal_ids": list(set(deal_of.values()))}
    deals: dict[str, DealRow] = {}
    for row in await session.execute(deals_by_id, deal_ids):
        deals[row[0]] = DealRow(row[0], *row[1:9], [], *row[9:])
    for deal_id, *ref in await session.execute(refs_of_deals, deal_ids):
        deals[deal_id].refs.append(RefRow(*ref))
    return {key: deals[deal_id] for key, deal_id in deal_of.items()}


async def upsert_many(
    m: Mutation, items: Sequence[tuple[str, str, DealFields]], *, contexts: Sequence[ChangeContext] | None = None
) -> list[UpsertOutcome]:
    """Create or update deals by their natural key (tenant, system, external id).

    A record identical to what is stored changes nothing and records no event.
    Items are applied in order, so a key repeated in one batch acts as an update.
    `contexts`, one per item, attribute each change to its own request when
    several requests share the transaction.
    """
    if contexts is not None and len(contexts) != len(items):
        raise ValueError("one context per item")
    known = await _load_by_refs(m.session, [(s, e) for s, e, _ in items])
    outcomes: list[UpsertOutcome] = []
    # Written at the end: the created deals with one bulk INSERT (a key repeated later
    # in the batch changes the pending row), the changed ones with one executemany UPDATE.
    created: dict[str, DealRow] = {}
    changed_rows: dict[str, DealRow] = {}

    for index, (system, external_id, fields) in enumerate(items):
        context = contexts[index] if contexts is not None else None
        key = (system, external_id)
        deal = known.get(key)
        if deal is None:
            deal = known[key] = _draft(m, fields, system, external_id)
            created[deal.id] = deal
            m.record(
                "deal.created", resource_type=RESOURCE, resource_id=deal.id, before=None, after=snapshot(deal),
                payload=_payload(deal), context=context,
            )
            outcomes.append(UpsertOutcome("created", deal, deal.version))
            continue
        before = snapshot(deal)
        changed = _apply(m, deal, {f: getattr(fields, f) for f in BUSINESS_FIELDS})
        if changed is None:
            outcomes.append(UpsertOutcome("unchanged", deal, deal.version))
            continue
        if deal.id not in created:
            changed_rows[deal.id] = deal
        m.record(
            "deal.updated", resource_type=RESOURCE, resource_id=deal.id, before=before, after=snapshot(deal),
            payload=_payload(deal, changed), context=context,
        )
        outcomes.append(UpsertOutcome("updated", deal, deal.version))
    await _bulk_insert(m, list(created.values()))
    await _bulk_update(m, list(changed_rows.values()))
    return outcomes


async def delete_by_refs(
    m: Mutation, keys: Sequence[tuple[str, str]], *, context: ChangeContext | None = None
) -> list[DealRow]:
    """Soft delete the live deals the natural keys name (a CRM's tombstones), with one
    bulk UPDATE; keys naming no deal, or a deal already deleted, change nothing."""
    deleted: dict[str, DealRow] = {}
    for deal in (await _load_by_refs(m.session, keys)).values():
        if deal.deleted_at is not None or deal.id in deleted:
            continue
        before = snapshot(deal)
        deal.deleted_at = deal.updated_at = m.now
        deal.version += 1
        m.record(
            "deal.deleted", resource_type=RESOURCE, resource_id=deal.id, before=before, after=None,
            payload=_payload(deal), context=context,
        )  # fmt: skip
        deleted[deal.id] = deal
    await _bulk_update(m, list(deleted.values()))
    return list(deleted.values())
