"""Authentication and authorisation dependencies: every route names its permission."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from core import apikeys
from core.errors import Forbidden, Unauthorized
from core.identity import Principal
from core.roles import Permission, allows
from hub import rate_limits
from hub.state import HubState

_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key issued by `hub apikeys create`")
_bearer_scheme = HTTPBearer(auto_error=False, description="A JWT with claims tenant_id, sub and roles")


async def hub_state(request: Request) -> HubState:
    # async on purpose: FastAPI runs a plain `def` dependency in a thread pool.
    state: HubState = request.app.state.hub
    return state


State = Annotated[HubState, Depends(hub_state)]


async def principal_of(state: HubState, api_key: str | None, bearer_token: str | None) -> Principal:
    """Who the credential is; raises Unauthorized."""
    if api_key:
        principal = state.cached_principal(api_key)
        if principal is None:
            principal = await apikeys.authenticate(state.db, api_key)
            if principal is None:
                raise Unauthorized("Unknown or revoked API key")
            state.principals.put(api_key, principal)
        return principal
    if bearer_token is not None:
        principal = await state.jwt.verify(bearer_token)
        if await state.tenant_limits(principal.tenant_id) is None:
            raise Unauthorized("The token's tenant does not exist")
        return principal
    raise Unauthorized("Send an X-API-Key header or an Authorization: Bearer token")


async def authenticate(
    request: Request,
    state: State,
    api_key: Annotated[str | None, Depends(_api_key_scheme)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Principal:
    principal = await principal_of(state, api_key, None if bearer is None else bearer.credentials)
    request.state.principal = principal
    return principal


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates, applies the tenant's rate limit, and checks
    `permission` against the policy table."""

    async def check(request: Request, state: State, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        await rate_limits.enforce(request, state, principal, permission)
        if not allows(principal.roles, permission):
            raise Forbidden(f"Your roles do not allow {permission.value}")
        return principal

    check.permission = permission  # type: ignore[attr-defined]  # read by the route-coverage test
    return check


def route_permission(request: Request) -> Permission | None:
    """The permission the matched route requires (None: no route, or a public one)."""
    route = request.scope.get("route")
    stack = list(getattr(getattr(route, "dependant", None), "dependencies", ()))
    while stack:
        dependant = stack.pop()
        permission = getattr(dependant.call, "permission", None)
        if permission is not None:
            return permission  # type: ignore[no-any-return]
        stack.extend(dependant.dependencies)
    return None


async def charge_unchecked(request: Request) -> None:
    """Authenticate and rate-limit a request refused before its route's `require` ran
    (a body that is not JSON, no such route, a method the route does not take): with a
    good credential it counts against the tenant too and carries the `X-RateLimit-*`
    headers. Raises RateLimited when over the limit, and Unauthorized when the matched
    route takes only authenticated callers (authentication is answered first)."""
    if getattr(request.state, "principal", None) is not None:
        return  # charged already
    state: HubState = request.app.state.hub
    permission = route_permission(request)
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    bearer_token = token if scheme.lower() == "bearer" and token else None  # as HTTPBearer reads it
    try:
        principal = await principal_of(state, request.headers.get("x-api-key"), bearer_token)
    except Unauthorized:
        if permission is not None:
            raise
        return  # no route: no tenant to charge
    request.state.principal = principal
    await rate_limits.enforce(request, state, principal, permission)


def public(reason: str) -> Callable[[], None]:
    """A dependency declaring a route that takes no credential, and why (the OAuth
    callback: its signed state proves the tenant). Route-coverage tests accept it in
    place of a `require(...)`; a route with neither fails them."""

    def mark() -> None:
        return None

    mark.public = reason  # type: ignore[attr-defined]  # read by the route-coverage test
    return mark
