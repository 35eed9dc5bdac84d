"""Tenants: the unit of isolation."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core import audit
from core.changes import Mutation
from core.db import Database
from core.errors import Conflict, NotFound, ValidationFailed
from core.models import Tenant, new_id, utcnow


async def create(db: Database, name: str) -> Tenant:
    name = name.strip()
    if not name or len(name) > 200:
        raise ValidationFailed("A tenant name is 1-200 characters")
    tenant = Tenant(id=new_id(), name=name, limits={}, created_at=utcnow())
    try:
        async with db.write(tenant.id) as session:
            session.add(tenant)
            await session.flush()
            await audit.create_chain(session, tenant.id)
    except IntegrityError:
        raise Conflict(f"A tenant named {name!r} exists") from None
    return tenant


async def get(db: Database, tenant_id: str) -> Tenant:
    async with db.read(tenant_id) as session:
        tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("No such tenant")
    return tenant


async def find_by_name(db: Database, name: str) -> Tenant | None:
    async with db.read(None) as session:
        return (await session.execute(select(Tenant).where(Tenant.name == name))).scalar_one_or_none()


async def list_all(db: Database) -> list[Tenant]:
    async with db.read(None) as session:
        return list((await session.execute(select(Tenant).order_by(Tenant.created_at))).scalars())


LIMIT_KEYS = {"user_per_minute": int, "integration_per_minute": int, "burst_multiplier": float}


async def set_limits(m: Mutation, limits: dict[str, float | int | None]) -> Tenant:
    """Override the tenant's rate limits; a None value goes back to the default."""
    unknown = set(limits) - set(LIMIT_KEYS)
    if unknown:
        raise ValidationFailed(f"Unknown limits: {sorted(unknown)}")
    tenant = (await m.session.execute(select(Tenant).where(Tenant.id == m.tenant_id))).scalar_one()
    before = dict(tenant.limits or {})
    after = dict(before)
    for name, value in limits.items():
        if value is None:
            after.pop(name, None)
            continue
        if value <= 0 or (name == "burst_multiplier" and value < 1):
            raise ValidationFailed(f"{name} must be positive (and burst_multiplier at least 1)")
        after[name] = LIMIT_KEYS[name](value)
    if after != before:
        tenant.limits = after
        m.record("tenant.limits_changed", resource_type="tenant", resource_id=tenant.id, before=before, after=after, payload={"limits": after})
        await m.session.flush()
    return tenant
