"""Tenants: the unit of isolation."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core import audit
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
