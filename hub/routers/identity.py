"""Who am I: the caller's tenant and roles, as the hub sees them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from core import tenants
from core.identity import Principal
from core.roles import Permission
from hub.auth import State, require
from hub.problems import error_responses

router = APIRouter(prefix="/api/v1", tags=["identity"])


class Me(BaseModel):
    tenant_id: str
    tenant_name: str
    actor_kind: str
    actor_id: str
    roles: list[str]


@router.get("/me", response_model=Me, summary="The calling principal", responses=error_responses(401, 403, 500))
async def me(state: State, principal: Annotated[Principal, Depends(require(Permission.IDENTITY_READ))]) -> Me:
    tenant = await tenants.get(state.db, principal.tenant_id)
    return Me(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        actor_kind=principal.actor_kind,
        actor_id=principal.actor_id,
        roles=principal.sorted_roles,
    )
