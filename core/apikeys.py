"""API keys: shown once, stored as a hash, bound to one tenant and a role set.

A key reads `hub_<prefix>_<secret>`. The prefix finds the row; the whole key is
compared by SHA-256 (the secret has 256 random bits, so a slow hash adds nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from core.changes import Mutation
from core.db import Database
from core.errors import NotFound, ValidationFailed
from core.identity import Principal
from core.models import ApiKey, new_id
from core.roles import Role

RESOURCE = "api_key"
_PREFIX_BYTES = 6


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    plaintext: str


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _parse(raw: str) -> str | None:
    parts = raw.split("_")
    if len(parts) != 3 or parts[0] != "hub" or len(parts[1]) != 2 * _PREFIX_BYTES:
        return None
    return parts[1]


def describe(key: ApiKey) -> dict[str, object]:
    """A key as it may be shown: everything but the secret."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": f"hub_{key.prefix}_",
        "roles": sorted(key.roles),
        "created_at": key.created_at,
        "created_by": key.created_by,
        "revoked_at": key.revoked_at,
    }


async def issue(m: Mutation, *, name: str, roles: set[Role]) -> IssuedKey:
    if not roles:
        raise ValidationFailed("An API key needs at least one role")
    prefix = secrets.token_hex(_PREFIX_BYTES)
    plaintext = f"hub_{prefix}_{secrets.token_urlsafe(32).replace('_', '-')}"
    key = ApiKey(
        id=new_id(),
        tenant_id=m.tenant_id,
        name=name,
        prefix=prefix,
        key_hash=_hash(plaintext),
        roles=sorted(r.value for r in roles),
        created_at=m.now,
        created_by=m.context.principal.actor_key,
    )
    m.session.add(key)
    m.record("api_key.created", resource_type=RESOURCE, resource_id=key.id, before=None, after=describe(key), payload=describe(key))
    await m.session.flush()
    return IssuedKey(key, plaintext)


async def list_keys(db: Database, tenant_id: str) -> list[ApiKey]:
    async with db.read(tenant_id) as session:
        return list((await session.execute(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))).scalars())


async def revoke(m: Mutation, key_id: str) -> ApiKey:
    key = (await m.session.execute(select(ApiKey).where(ApiKey.id == key_id))).scalar_one_or_none()
    if key is None:
        raise NotFound("No such API key")
    if key.revoked_at is None:
        before = describe(key)
        key.revoked_at = m.now
        m.record("api_key.revoked", resource_type=RESOURCE, resource_id=key.id, before=before, after=describe(key), payload=describe(key))
        await m.session.flush()
    return key


async def authenticate(db: Database, raw: str) -> Principal | None:
    """The principal for a presented key, or None for an unknown or revoked one."""
    prefix = _parse(raw)
    if prefix is None:
        return None
    async with db.read(None) as session:
        stmt = select(ApiKey).where(ApiKey.prefix == prefix).execution_options(cross_tenant=True)
        key = (await session.execute(stmt)).scalar_one_or_none()
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, _hash(raw)):
        return None
    return Principal(
        tenant_id=key.tenant_id,
        actor_kind="api_key",
        actor_id=key.id,
        roles=frozenset(Role(r) for r in key.roles if r in Role.__members__),
    )
