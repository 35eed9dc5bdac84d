"""API keys of the caller's tenant (ADMIN): issue, list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from core import apikeys
from core.changes import Mutation
from core.identity import Principal
from core.roles import Permission, Role
from hub.auth import State, require
from hub.problems import error_responses
from hub.writes import IdempotencyKey, Outcome, perform

router = APIRouter(prefix="/api/v1/api-keys", tags=["api keys"])
Admin = Annotated[Principal, Depends(require(Permission.API_KEYS_MANAGE))]


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, examples=["salesforce push"])
    roles: list[Role] = Field(min_length=1, max_length=6, examples=[["INTEGRATION_SERVICE"]])


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    roles: list[str]
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None


class IssuedApiKey(ApiKeyOut):
    key: str | None = Field(description="The secret, shown this once; null when an Idempotency-Key replays the response")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


@router.get("", response_model=ApiKeyList, summary="List API keys (without secrets)", responses=error_responses(401, 403, 500))
async def list_keys(state: State, principal: Admin) -> ApiKeyList:
    keys = await apikeys.list_keys(state.db, principal.tenant_id)
    return ApiKeyList(items=[ApiKeyOut.model_validate(apikeys.describe(k)) for k in keys])


@router.post(
    "",
    status_code=201,
    response_model=IssuedApiKey,
    summary="Issue an API key",
    responses=error_responses(400, 401, 403, 409, 413, 415, 422, 500),
)
async def issue_key(
    request: Request,
    state: State,
    principal: Admin,
    body: Annotated[ApiKeyIn, Body(openapi_examples={"crm": {"summary": "A key for CRM pushes", "value": {"name": "salesforce push", "roles": ["INTEGRATION_SERVICE"]}}})],
    _key: IdempotencyKey = None,
) -> Response:
    async def action(m: Mutation) -> Outcome:
        issued = await apikeys.issue(m, name=body.name, roles=set(body.roles))
        shown = IssuedApiKey(**apikeys.describe(issued.key), key=issued.plaintext)  # type: ignore[arg-type]
        # The secret is never stored, not even in the idempotency record.
        return Outcome(201, shown, stored_body=shown.model_copy(update={"key": None}))

    return await perform(request, state, principal, action)


@router.delete(
    "/{key_id}", status_code=204, summary="Revoke an API key", responses=error_responses(401, 403, 404, 500)
)
async def revoke_key(
    request: Request, state: State, principal: Admin, key_id: Annotated[str, Path(max_length=36)]
) -> Response:
    async def action(m: Mutation) -> Outcome:
        await apikeys.revoke(m, key_id)
        return Outcome(204)

    response = await perform(request, state, principal, action)
    state.principals.clear()
    return response
