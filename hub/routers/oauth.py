"""The OAuth redirect target. It takes no credential: the signed `state` proves which
tenant and connection the authorization is for, and is good for one use only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ValidationError

from connectors.host import parse_config
from connectors.oauth import exchange_code
from connectors.sdk import OAuth2AuthorizationCode, ProviderError
from core import connections, credentials, oauth_states
from core.changes import ChangeContext, mutation
from core.credentials import Credentials
from core.errors import Conflict, OAuthAuthorizationDenied, ValidationFailed
from core.identity import Principal
from core.roles import Permission, Role
from hub import rate_limits
from hub.auth import State, public
from hub.problems import error_responses
from hub.provider_calls import upstream_problem
from hub.routers.connections import connector_class

router = APIRouter(prefix="/api/v1/oauth", tags=["connections"])


class CallbackOut(BaseModel):
    connection_id: str
    connector_key: str
    status: str


@router.get(
    "/callback",
    response_model=CallbackOut,
    summary="OAuth redirect target: stores the tokens of an authorization",
    description=(
        "The provider redirects the admin's browser here with `code` and `state`. No credential is needed: "
        "the state is signed by the hub, expires, and works once."
    ),
    dependencies=[Depends(public("the signed, single-use state proves the tenant and the connection"))],
    responses=error_responses(400, 409, 422, 429, 500, 502, 503),
    openapi_extra={"x-runtime-validation": "state must be one the hub signed, unexpired and unused"},
)
async def oauth_callback(
    request: Request,
    state: State,
    oauth_state: Annotated[str, Query(alias="state", min_length=1, max_length=1024, description="The state the hub signed")],
    code: Annotated[str | None, Query(min_length=1, max_length=4096, description="The authorization code")] = None,
    error: Annotated[str | None, Query(max_length=200, description="The provider's error, if the admin declined")] = None,
    error_description: Annotated[str | None, Query(max_length=1000)] = None,
) -> CallbackOut:
    claims = oauth_states.verify(state.vault, oauth_state)
    # The limit is the tenant's, so it is checked before the single-use state is spent:
    # a 429 changes nothing, and the same redirect works once Retry-After has passed.
    request.state.principal = Principal(claims.tenant_id, "oauth", "callback", frozenset({Role.ADMIN}))
    await rate_limits.enforce(request, state, request.state.principal, Permission.CONNECTIONS_MANAGE)
    pending = await oauth_states.consume(state.db, state.vault, claims)
    kind, _, actor_id = (pending.created_by or "oauth:callback").partition(":")
    principal = Principal(claims.tenant_id, kind, actor_id or "callback", frozenset({Role.ADMIN}))
    request.state.principal = principal
    if error is not None:
        raise OAuthAuthorizationDenied(f"The provider did not authorize the connection: {error}")
    if code is None:
        raise ValidationFailed(
            "The callback carries no code", details=[{"loc": ["query", "code"], "msg": "missing", "type": "missing"}]
        )
    async with state.db.read(claims.tenant_id) as session:
        connection = await connections.get(session, pending.connection_id)
        row = await credentials.find(session, connection.id)
        found = credentials.unseal(state.vault, row) if row is not None else Credentials()
    cls = connector_class(state, connection.connector_key)
    try:
        model = parse_config(cls, connection.config, found.secrets)
    except ValidationError:
        raise Conflict("The connection's configuration is incomplete; PATCH it") from None
    spec = cls.auth_for(model)
    client = state.connector_host.oauth_client(cls, model, found.secrets)
    if not isinstance(spec, OAuth2AuthorizationCode) or client is None:
        raise Conflict(f"{cls.key} cannot complete an OAuth authorization here")
    try:
        token = await exchange_code(
            state.connector_host.client,
            spec,
            client,
            code=code,
            redirect_uri=pending.redirect_uri,
            code_verifier=pending.code_verifier,
        )
    except ProviderError as exc:  # refused (AuthError: 502) or unreachable (503)
        raise upstream_problem(exc) from None
    context = ChangeContext(principal, getattr(request.state, "request_id", None))
    async with mutation(state.db, context) as m:
        connection = await connections.store_token(m, state.vault, connection.id, token, refreshed=False)
    # A fresh authorization: calls refused by an open breaker may be tried again.
    await state.connector_host.breaker(claims.tenant_id, connection.id).reset()
    return CallbackOut(connection_id=connection.id, connector_key=connection.connector_key, status=connection.status)
