"""Connections (ADMIN): a tenant's integration instances, their credentials and health,
the OAuth authorization flow, live checks and action execution.

Secret configuration fields go to the credential vault on the way in and never come back
out: responses carry the plain configuration, statuses and timestamps only.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python
from sqlalchemy import select

from connectors.host import SplitConfig, parse_config, split_config
from connectors.oauth import authorization_request
from connectors.registry import ConnectorNotFound
from connectors.sdk import Connector, OAuth2AuthorizationCode, OAuth2ClientCredentials
from core import connections, credentials, oauth_states, runs, schedules, syncs
from core.changes import ChangeContext, Mutation
from core.connections import (
    ConnectionStatus,
    ConnectionStore,
    LoadedConnection,
    Outcome,
)
from core.credentials import Credentials, CredentialStatus
from core.errors import Conflict, HubError, NotFound, ValidationFailed
from core.identity import Principal
from core.jsonable import merge_patch
from core.models import Connection, ConnectionCredential
from core.roles import Permission
from hub import etags
from hub.auth import State, require
from hub.problems import error_responses
from hub.provider_calls import (
    Answer,
    CallResult,
    error_summary,
    perform_call,
    timed_call,
    upstream_problem,
)
from hub.routers.runs import RunOut, enqueue_run, run_out
from hub.state import HubState
from hub.writes import IdempotencyKey, perform
from hub.writes import Outcome as WriteOutcome

router = APIRouter(prefix="/api/v1/connections", tags=["connections"])
Admin = Annotated[Principal, Depends(require(Permission.CONNECTIONS_MANAGE))]
ConnectionId = Annotated[
    str, Path(max_length=36, description="The connection's id", examples=["5c1f0e7a-2b3d-4c8e-9f10-a1b2c3d4e5f6"])
]
ActionName = Annotated[
    str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$", description="An action of the connector", examples=["push_status"])
]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", description="Strong ETag from a GET; refused with 412 if the connection changed since."),
]
ConnectorKeyField = Field(pattern=r"^[a-z][a-z0-9_]{1,62}$", examples=["salesforce"])
StatusName = Literal["CONNECTED", "DEGRADED", "AUTH_ERROR", "DISABLED"]
BreakerState = Literal["closed", "open", "half-open"]
CALLBACK_PATH = "/api/v1/oauth/callback"


# -- models -------------------------------------------------------------------------------


class SyncSchedule(BaseModel):
    """When a connection syncs on its own: every `interval_seconds`, or on a cron expression (UTC)."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: int | None = Field(
        default=None, ge=schedules.MIN_INTERVAL_SECONDS, le=schedules.MAX_INTERVAL_SECONDS, examples=[900]
    )
    cron: str | None = Field(
        default=None, max_length=100, description="minute hour day-of-month month day-of-week", examples=["0 */6 * * *"]
    )

    @model_validator(mode="after")
    def _one_of(self) -> SyncSchedule:
        if (self.interval_seconds is None) == (self.cron is None):
            raise ValueError("give either interval_seconds or cron")
        return self

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ConnectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connector_key: str = ConnectorKeyField
    name: str = Field(min_length=1, max_length=200, examples=["Salesforce (production)"])
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The connector's configuration (see GET /api/v1/connectors/{key}/schemas). "
        "Secret fields go to the credential vault and are never returned.",
    )
    sync_schedule: SyncSchedule | None = Field(default=None, description="When it syncs on its own; null: only on demand")


class ConnectionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    config: dict[str, Any] | None = Field(
        default=None, description="A JSON merge patch of the configuration: a null removes a field"
    )
    sync_schedule: SyncSchedule | None = Field(
        default=None, description="Replaces the schedule; null removes it (syncs then run on demand only)"
    )


class CredentialsOut(BaseModel):
    """Credential status only: never a value."""

    status: Literal["valid", "expiring", "expired", "revoked", "missing"]
    scheme: str | None = Field(description="The connector's auth scheme")
    expires_at: datetime | None
    refreshed_at: datetime | None
    revoked_at: datetime | None
    updated_at: datetime | None


class ConnectionOut(BaseModel):
    id: str
    connector_key: str
    name: str
    config: dict[str, Any] = Field(description="The plain configuration (secret fields are not included)")
    status: StatusName
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    error_count: int = Field(description="Consecutive failures since the last success")
    sync_schedule: SyncSchedule | None
    next_sync_at: datetime | None = Field(description="When the schedule next starts a sync")
    last_synced_at: datetime | None = Field(description="When a sync of it last succeeded")
    breaker_state: BreakerState = Field(description="The connection's circuit breaker, shared by all hub processes")
    credentials: CredentialsOut
    version: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class ConnectionPage(BaseModel):
    items: list[ConnectionOut]
    next_cursor: str | None


class ProviderFailure(BaseModel):
    type: str
    code: str | None
    status: int | None
    message: str


class CheckOut(BaseModel):
    ok: bool
    duration_ms: float
    error: ProviderFailure | None
    connection: ConnectionOut


class ActionOut(BaseModel):
    connection_id: str
    action: str
    duration_ms: float
    result: Any = Field(description="What the action returned (see its result schema)")


class AuthorizationOut(BaseModel):
    authorization_url: str = Field(description="Send the admin's browser here; the provider redirects to the hub's callback")
    expires_at: datetime


# -- helpers ------------------------------------------------------------------------------


def _connector_or_none(state: HubState, key: str) -> type[Connector] | None:
    try:
        return state.connectors.get(key)
    except ConnectorNotFound:
        return None


def connector_class(state: HubState, key: str) -> type[Connector]:
    """The connector class of a connection; 409 if this hub no longer offers it."""
    cls = _connector_or_none(state, key)
    if cls is None:
        raise Conflict(f"The connector {key!r} of this connection is not available in this hub")
    return cls


def _config_errors(exc: ValidationError, prefix: tuple[str, ...] = ("body", "config")) -> list[dict[str, Any]]:
    # Never the input: it may hold a secret.
    return [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def _split(cls: type[Connector], values: dict[str, Any]) -> SplitConfig:
    try:
        return split_config(cls, values)
    except ValidationError as exc:
        raise ValidationFailed(f"The configuration does not fit {cls.key}", details=_config_errors(exc)) from None


def _scheme(cls: type[Connector] | None) -> str | None:
    return cls.auth.scheme if cls is not None and cls.auth is not None else None


def _needs_token(cls: type[Connector]) -> bool:
    return isinstance(cls.auth, OAuth2AuthorizationCode)


def _ready_status(cls: type[Connector], row: ConnectionCredential | None) -> ConnectionStatus:
    """What an enabled connection is, given its credentials."""
    if _needs_token(cls) and credentials.status(row) in (CredentialStatus.MISSING, CredentialStatus.REVOKED):
        return ConnectionStatus.AUTH_ERROR
    return ConnectionStatus.CONNECTED


async def _breaker_state(state: HubState, tenant_id: str, connection_id: str) -> str:
    return await state.connector_host.breaker(tenant_id, connection_id).state()


def _etag(connection: Connection, breaker: str, row: ConnectionCredential | None) -> str:
    # The representation also shows breaker and credential status, so they are part of the tag.
    scheduled = connection.next_sync_at.isoformat() if connection.next_sync_at else ""
    return etags.etag(f"{connection.id}:{breaker}:{credentials.status(row).value}:{scheduled}", connection.version)


def _view(state: HubState, connection: Connection, row: ConnectionCredential | None, breaker: str) -> ConnectionOut:
    shown = credentials.describe(row)
    return ConnectionOut(
        **connections.describe(connection),
        next_sync_at=connection.next_sync_at,
        breaker_state=breaker,  # type: ignore[arg-type]
        credentials=CredentialsOut(**shown, scheme=_scheme(_connector_or_none(state, connection.connector_key))),
    )


def _context(request: Request, principal: Principal) -> ChangeContext:
    return ChangeContext(principal, getattr(request.state, "request_id", None))


async def _runnable(
    request: Request, state: HubState, principal: Principal, connection_id: str
) -> tuple[type[Connector], LoadedConnection, ConnectionStore]:
    """The connector class, the connection with its credentials, and the store for its
    write-backs; refuses a connection that cannot call its provider now."""
    store = ConnectionStore(state.db, state.vault, _context(request, principal))
    loaded = await store.load(connection_id)
    cls = connector_class(state, loaded.connector_key)
    if loaded.status == ConnectionStatus.DISABLED:
        raise Conflict("The connection is disabled; enable it first")
    if _needs_token(cls) and (
        loaded.credentials is None
        or not loaded.credentials.token
        or loaded.credential_status == CredentialStatus.REVOKED
    ):
        raise Conflict(f"The connection is not authorized; POST /api/v1/connections/{connection_id}/oauth/start")
    secrets = loaded.credentials.secrets if loaded.credentials else {}
    try:
        parse_config(cls, loaded.config, secrets)
    except ValidationError:
        raise Conflict("The connection's configuration is incomplete (were its credentials removed?); PATCH it") from None
    return cls, loaded, store


async def _current_view(state: HubState, m: Mutation, connection_id: str) -> ConnectionOut:
    connection = await connections.get(m.session, connection_id)
    row = await credentials.find(m.session, connection_id)
    return _view(state, connection, row, await _breaker_state(state, m.tenant_id, connection_id))


_WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 500)
# Marks an operation whose input is also checked against a schema known only at run time
# (the connector's), so a request valid by this document may still answer 422.
RUNTIME_CONFIG = {"x-runtime-validation": "config is validated against the connector's schema: GET /api/v1/connectors/{key}/schemas"}
RUNTIME_PARAMS = {"x-runtime-validation": "the body is validated against the action's params_schema: GET /api/v1/connectors/{key}/actions"}
_CALL_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 502, 503)


# -- CRUD ---------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=ConnectionOut,
    summary="Create a connection",
    responses=_WRITE_ERRORS,
    openapi_extra=RUNTIME_CONFIG,
)
async def create_connection(
    request: Request,
    state: State,
    principal: Admin,
    body: Annotated[
        ConnectionIn,
        Body(
            openapi_examples={
                "salesforce": {
                    "summary": "A Salesforce org (authorize it next with oauth/start)",
                    "value": {"connector_key": "salesforce", "name": "Salesforce", "config": {"environment": "production"}},
                }
            }
        ),
    ],
    _key: IdempotencyKey = None,
) -> Response:
    cls = _connector_or_none(state, body.connector_key)
    if cls is None:
        raise ValidationFailed(
            f"No connector {body.connector_key!r} in this hub",
            details=[{"loc": ["body", "connector_key"], "msg": "unknown connector", "type": "value_error"}],
        )
    split = _split(cls, body.config)
    spec = cls.auth_for(split.model)
    status, note = ConnectionStatus.CONNECTED, None
    if isinstance(spec, OAuth2AuthorizationCode):
        status, note = ConnectionStatus.AUTH_ERROR, "Not authorized yet: start the OAuth authorization"
    elif isinstance(spec, OAuth2ClientCredentials) and state.connector_host.oauth_client(cls, split.model, split.secrets) is None:
        status, note = ConnectionStatus.AUTH_ERROR, f"No OAuth client is configured for {cls.key}"

    async def action(m: Mutation) -> WriteOutcome:
        connection = await connections.create(
            m, state.vault, connector_key=cls.key, name=body.name, config=split.plain, secrets=split.secrets,
            status=status, note=note, sync_schedule=body.sync_schedule.stored() if body.sync_schedule else None,
        )  # fmt: skip
        row = await credentials.find(m.session, connection.id)
        headers = {"Location": f"/api/v1/connections/{connection.id}", "ETag": _etag(connection, "closed", row)}
        return WriteOutcome(201, _view(state, connection, row, "closed"), headers)

    return await perform(request, state, principal, action)


@router.get("", response_model=ConnectionPage, summary="List connections", responses=error_responses(401, 403, 422, 429, 500))
async def list_connections(
    state: State,
    principal: Admin,
    connector_key: Annotated[str | None, Query(max_length=64, description="Only connections of this connector")] = None,
    status: Annotated[StatusName | None, Query(description="Only connections in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")] = None,
) -> ConnectionPage:
    async with state.db.read(principal.tenant_id) as session:
        rows, next_cursor = await connections.list_page(
            session, connector_key=connector_key, status=status, limit=limit, cursor=cursor
        )
        ids = [r.id for r in rows]
        found: dict[str, ConnectionCredential] = {}
        if ids:
            stmt = select(ConnectionCredential).where(ConnectionCredential.connection_id.in_(ids))
            found = {c.connection_id: c for c in (await session.execute(stmt)).scalars()}
    breakers = await asyncio.gather(*(_breaker_state(state, principal.tenant_id, r.id) for r in rows))
    items = [_view(state, r, found.get(r.id), breaker) for r, breaker in zip(rows, breakers, strict=True)]
    return ConnectionPage(items=items, next_cursor=next_cursor)


_CONDITIONAL_GET = etags.conditional_get_docs("connection")


@router.get(
    "/{connection_id}",
    response_model=ConnectionOut,
    summary="Get a connection and its health",
    responses={**_CONDITIONAL_GET, **error_responses(401, 403, 404, 422, 429, 500)},
)
async def get_connection(request: Request, state: State, principal: Admin, connection_id: ConnectionId) -> Response:
    async with state.db.read(principal.tenant_id) as session:
        connection = await connections.get(session, connection_id)
        row = await credentials.find(session, connection_id)
    breaker = await _breaker_state(state, principal.tenant_id, connection_id)
    return etags.conditional_get(request, _etag(connection, breaker, row), _view(state, connection, row, breaker))


def _precondition(tags: list[str] | None, breaker: str, row: ConnectionCredential | None) -> connections.Precondition:
    return lambda c: tags is None or "*" in tags or _etag(c, breaker, row) in tags


@router.patch(
    "/{connection_id}",
    response_model=ConnectionOut,
    summary="Rename a connection or change its configuration (JSON merge patch)",
    responses=error_responses(400, 401, 403, 404, 409, 412, 413, 415, 422, 429, 500),
    openapi_extra=RUNTIME_CONFIG,
)
async def patch_connection(
    request: Request,
    state: State,
    principal: Admin,
    connection_id: ConnectionId,
    body: Annotated[
        ConnectionPatch,
        Body(openapi_examples={"sandbox": {"summary": "Switch to the sandbox", "value": {"config": {"environment": "sandbox"}}}}),
    ],
    _key: IdempotencyKey = None,
    _if_match: IfMatch = None,
) -> Response:
    tags = etags.if_match(request)
    breaker = await _breaker_state(state, principal.tenant_id, connection_id)

    async def action(m: Mutation) -> WriteOutcome:
        connection = await connections.get(m.session, connection_id)
        row = await credentials.find(m.session, connection_id)
        config: dict[str, Any] | None = None
        secrets: dict[str, str] | None = None
        if body.config is not None:
            cls = connector_class(state, connection.connector_key)
            current = credentials.unseal(state.vault, row) if row is not None else Credentials()
            split = _split(cls, merge_patch({**connection.config, **current.secrets}, body.config))
            config, secrets = split.plain, split.secrets
        schedule: dict[str, Any] | None | connections.Keep = connections.KEEP
        if "sync_schedule" in body.model_fields_set:
            schedule = body.sync_schedule.stored() if body.sync_schedule else None
        connection = await connections.update_config(
            m, state.vault, connection_id, name=body.name, config=config, secrets=secrets, sync_schedule=schedule,
            precondition=_precondition(tags, breaker, row),
        )  # fmt: skip
        row = await credentials.find(m.session, connection_id)
        return WriteOutcome(200, _view(state, connection, row, breaker), {"ETag": _etag(connection, breaker, row)})

    return await perform(request, state, principal, action)


@router.delete(
    "/{connection_id}",
    status_code=204,
    summary="Delete a connection and its credentials",
    responses=error_responses(401, 403, 404, 412, 422, 429, 500),
)
async def delete_connection(
    request: Request, state: State, principal: Admin, connection_id: ConnectionId, _if_match: IfMatch = None
) -> Response:
    tags = etags.if_match(request)
    breaker = await _breaker_state(state, principal.tenant_id, connection_id)

    async def action(m: Mutation) -> WriteOutcome:
        row = await credentials.find(m.session, connection_id)
        await connections.delete(m, connection_id, precondition=_precondition(tags, breaker, row))
        return WriteOutcome(204)

    return await perform(request, state, principal, action)


Switch = Callable[[Mutation, ConnectionCredential | None, connections.Precondition], Awaitable[Connection]]


async def _switch(request: Request, state: HubState, principal: Principal, connection_id: str, switch: Switch) -> Response:
    """Disable or enable a connection (`switch`), checking If-Match on the current row."""
    tags = etags.if_match(request)
    breaker = await _breaker_state(state, principal.tenant_id, connection_id)

    async def action(m: Mutation) -> WriteOutcome:
        row = await credentials.find(m.session, connection_id)
        connection = await switch(m, row, _precondition(tags, breaker, row))
        return WriteOutcome(200, _view(state, connection, row, breaker), {"ETag": _etag(connection, breaker, row)})

    return await perform(request, state, principal, action)


@router.post(
    "/{connection_id}/disable",
    response_model=ConnectionOut,
    summary="Disable a connection (nothing runs until it is enabled)",
    responses=error_responses(400, 401, 403, 404, 409, 412, 422, 429, 500),
)
async def disable_connection(
    request: Request,
    state: State,
    principal: Admin,
    connection_id: ConnectionId,
    _key: IdempotencyKey = None,
    _if_match: IfMatch = None,
) -> Response:
    async def disable(m: Mutation, row: ConnectionCredential | None, precondition: connections.Precondition) -> Connection:
        return await connections.disable(m, connection_id, precondition=precondition)

    return await _switch(request, state, principal, connection_id, disable)


@router.post(
    "/{connection_id}/enable",
    response_model=ConnectionOut,
    summary="Enable a disabled connection",
    description="It comes back CONNECTED, or AUTH_ERROR when it has no usable credentials.",
    responses=error_responses(400, 401, 403, 404, 409, 412, 422, 429, 500),
)
async def enable_connection(
    request: Request,
    state: State,
    principal: Admin,
    connection_id: ConnectionId,
    _key: IdempotencyKey = None,
    _if_match: IfMatch = None,
) -> Response:
    async def enable(m: Mutation, row: ConnectionCredential | None, precondition: connections.Precondition) -> Connection:
        connection = await connections.get(m.session, connection_id)
        ready = _ready_status(connector_class(state, connection.connector_key), row)
        return await connections.enable(m, connection_id, ready=ready, precondition=precondition)

    return await _switch(request, state, principal, connection_id, enable)


# -- credentials ----------------------------------------------------------------------------


@router.get(
    "/{connection_id}/credentials",
    response_model=CredentialsOut,
    summary="The status of a connection's credentials (never their values)",
    responses={**etags.conditional_get_docs("credentials' status"), **error_responses(401, 403, 404, 422, 429, 500)},
)
async def get_credentials(request: Request, state: State, principal: Admin, connection_id: ConnectionId) -> Response:
    async with state.db.read(principal.tenant_id) as session:
        connection = await connections.get(session, connection_id)
        row = await credentials.find(session, connection_id)
    # Tagged by content: the status also turns to expiring and expired with time alone.
    shown = CredentialsOut(**credentials.describe(row), scheme=_scheme(_connector_or_none(state, connection.connector_key)))
    return etags.conditional_get_by_content(request, shown)


@router.post(
    "/{connection_id}/credentials/refresh",
    response_model=CredentialsOut,
    summary="Refresh a connection's OAuth token now",
    description="A refused refresh marks the connection AUTH_ERROR (event integration.auth_failed) and answers 502.",
    responses=_CALL_ERRORS,
)
async def refresh_credentials(
    request: Request, state: State, principal: Admin, connection_id: ConnectionId, _key: IdempotencyKey = None
) -> Response:
    store = ConnectionStore(state.db, state.vault, _context(request, principal))
    loaded = await store.load(connection_id)
    cls = connector_class(state, loaded.connector_key)
    if not isinstance(cls.auth, (OAuth2AuthorizationCode, OAuth2ClientCredentials)):
        raise Conflict(f"{cls.key} uses {_scheme(cls) or 'no'} credentials: there is no token to refresh")
    if loaded.status == ConnectionStatus.DISABLED:
        raise Conflict("The connection is disabled; enable it first")
    found = loaded.credentials or Credentials()
    try:
        parse_config(cls, loaded.config, found.secrets)
    except ValidationError:
        raise Conflict("The connection's configuration is incomplete; PATCH it") from None

    async def call() -> CallResult[dict[str, Any]]:
        return await timed_call(
            lambda: state.connector_host.refresh_now(
                cls, connection_id=connection_id, config=loaded.config, secrets=found.secrets,
                token=found.token, store=store,
            ),  # fmt: skip
            timeout=state.settings.connector_timeout_seconds,
        )

    async def finish(m: Mutation, result: CallResult[dict[str, Any]]) -> Answer | HubError:
        if result.error is not None:
            return upstream_problem(result.error)
        row = await credentials.find(m.session, connection_id)
        return Answer(200, CredentialsOut(**credentials.describe(row), scheme=_scheme(cls)))

    return await perform_call(request, state, principal, call=call, finish=finish)


@router.delete(
    "/{connection_id}/credentials",
    status_code=204,
    summary="Remove a connection's credentials (secret fields and tokens)",
    description="A connector that needs credentials is AUTH_ERROR until it gets new ones.",
    responses=error_responses(401, 403, 404, 422, 429, 500),
)
async def remove_credentials(request: Request, state: State, principal: Admin, connection_id: ConnectionId) -> Response:
    async def action(m: Mutation) -> WriteOutcome:
        connection = await connections.get(m.session, connection_id)
        cls = _connector_or_none(state, connection.connector_key)
        await connections.remove_credentials(m, connection_id, needs_credentials=cls is None or cls.auth is not None)
        return WriteOutcome(204)

    return await perform(request, state, principal, action)


# -- OAuth ------------------------------------------------------------------------------------


@router.post(
    "/{connection_id}/oauth/start",
    response_model=AuthorizationOut,
    summary="Start the OAuth authorization (code flow with PKCE)",
    description=(
        "Returns the provider's authorization URL. The provider redirects the admin's browser to "
        f"{CALLBACK_PATH} with a code and the signed, single-use state; the hub then stores the tokens "
        "and the connection becomes CONNECTED."
    ),
    responses=_WRITE_ERRORS,
)
async def start_oauth(
    request: Request, state: State, principal: Admin, connection_id: ConnectionId, _key: IdempotencyKey = None
) -> Response:
    async with state.db.read(principal.tenant_id) as session:
        connection = await connections.get(session, connection_id)
        row = await credentials.find(session, connection_id)
        found = credentials.unseal(state.vault, row) if row is not None else Credentials()
    cls = connector_class(state, connection.connector_key)
    try:
        model = parse_config(cls, connection.config, found.secrets)
    except ValidationError:
        raise Conflict("The connection's configuration is incomplete; PATCH it") from None
    spec = cls.auth_for(model)
    if not isinstance(spec, OAuth2AuthorizationCode):
        raise Conflict(f"{cls.key} does not use the OAuth authorization-code flow")
    client = state.connector_host.oauth_client(cls, model, found.secrets)
    if client is None:
        raise Conflict(f"No OAuth client is configured for {cls.key}: set it in HUB_OAUTH_CLIENTS")
    if connection.status == ConnectionStatus.DISABLED:
        raise Conflict("The connection is disabled; enable it first")
    redirect_uri = state.settings.public_url.rstrip("/") + CALLBACK_PATH

    async def action(m: Mutation) -> WriteOutcome:
        expires_at = m.now + timedelta(seconds=state.settings.oauth_state_ttl_seconds)
        # The verifier is generated with the URL, then sealed with the state row.
        state_id = oauth_states.new_state_id()
        signed = oauth_states.sign(
            state.vault, oauth_states.StateClaims(state_id, m.tenant_id, connection_id, expires_at)
        )
        authorization = authorization_request(spec, client, redirect_uri=redirect_uri, state=signed)
        await oauth_states.start(
            m, state.vault, connection_id, code_verifier=authorization.code_verifier, redirect_uri=redirect_uri,
            expires_at=expires_at, state_id=state_id,
        )  # fmt: skip
        return WriteOutcome(200, AuthorizationOut(authorization_url=authorization.url, expires_at=expires_at))

    return await perform(request, state, principal, action)


# -- live calls -------------------------------------------------------------------------------


@router.post(
    "/{connection_id}/check",
    response_model=CheckOut,
    summary="Test the connection's credentials live",
    description="Calls the provider through the connector's check(); the outcome updates the connection's health.",
    responses=_CALL_ERRORS,
)
async def check_connection(
    request: Request, state: State, principal: Admin, connection_id: ConnectionId, _key: IdempotencyKey = None
) -> Response:
    cls, loaded, store = await _runnable(request, state, principal, connection_id)
    live = state.connector_host.build_for(cls, loaded, store)

    async def call() -> CallResult[None]:
        return await timed_call(live.connector.check, timeout=state.settings.connector_timeout_seconds)

    async def finish(m: Mutation, result: CallResult[None]) -> Answer | HubError:
        failure = error_summary(result.error) if result.error is not None else None
        await connections.record_outcome(
            m, connection_id, outcome=result.outcome, error=failure["message"] if failure else None,
            event="integration.checked",
            payload={"ok": failure is None, "duration_ms": result.duration_ms, "error_code": failure and failure["code"]},
        )  # fmt: skip
        return Answer(
            200,
            CheckOut(
                ok=failure is None,
                duration_ms=result.duration_ms,
                error=ProviderFailure(**failure) if failure else None,
                connection=await _current_view(state, m, connection_id),
            ),
        )

    return await perform_call(request, state, principal, call=call, finish=finish)


@router.post(
    "/{connection_id}/actions/{action}",
    response_model=ActionOut,
    summary="Run one of the connector's actions",
    description=(
        "The body holds the action's parameters, validated against its schema "
        "(GET /api/v1/connectors/{key}/actions). Every call writes integration.method.executed "
        "or integration.method.failed."
    ),
    responses=_CALL_ERRORS,
    openapi_extra=RUNTIME_PARAMS,
)
async def execute_action(
    request: Request,
    state: State,
    principal: Admin,
    connection_id: ConnectionId,
    action: ActionName,
    body: Annotated[
        dict[str, Any] | None,
        Body(
            description="The action's parameters",
            openapi_examples={
                "push_status": {"summary": "FakeCRM push_status", "value": {"external_id": "FAKE-00001", "status": "ic_review"}}
            },
        ),
    ] = None,
    _key: IdempotencyKey = None,
) -> Response:
    cls, loaded, store = await _runnable(request, state, principal, connection_id)
    declared = cls.actions.get(action)
    if declared is None:
        raise NotFound(f"{cls.key} has no action {action!r}")
    try:
        params = declared.params_model.model_validate(body or {})
    except ValidationError as exc:
        raise ValidationFailed(
            f"The parameters do not fit {cls.key}.{action}", details=_config_errors(exc, ("body",))
        ) from None
    live = state.connector_host.build_for(cls, loaded, store)

    async def call() -> CallResult[Any]:
        return await timed_call(
            lambda: live.connector.run_action(action, params), timeout=state.settings.connector_timeout_seconds
        )

    async def finish(m: Mutation, result: CallResult[Any]) -> Answer | HubError:
        payload: dict[str, Any] = {"action": action, "duration_ms": result.duration_ms}
        if result.error is None:
            await connections.record_outcome(
                m, connection_id, outcome=Outcome.SUCCEEDED, error=None, event="integration.method.executed",
                payload=payload,
            )  # fmt: skip
            value = to_jsonable_python(result.value)
            return Answer(
                200, ActionOut(connection_id=connection_id, action=action, duration_ms=result.duration_ms, result=value)
            )
        failure = error_summary(result.error)
        await connections.record_outcome(
            m, connection_id, outcome=result.outcome, error=failure["message"], event="integration.method.failed",
            payload={**payload, "error_type": failure["type"], "error_code": failure["code"], "provider_status": failure["status"]},
        )  # fmt: skip
        return upstream_problem(result.error)

    return await perform_call(request, state, principal, call=call, finish=finish)



# -- syncs --------------------------------------------------------------------------------


class SyncIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["incremental", "full"] = Field(
        default="incremental",
        description="incremental: from where the last sync stopped; full: every record again (changes nothing that is unchanged)",
    )


Operator = Annotated[Principal, Depends(require(Permission.RUNS_MANAGE))]


@router.post(
    "/{connection_id}/syncs",
    status_code=202,
    response_model=RunOut,
    summary="Start a sync of the connection",
    description=(
        "Queues a sync run and answers its reference (poll GET /api/v1/runs/{id}). A connection has one "
        "sync at a time: 409 while another is queued or running. The sync ends with a sync.completed or "
        "sync.failed event."
    ),
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 500),
)
async def start_sync(
    request: Request,
    state: State,
    principal: Operator,
    connection_id: ConnectionId,
    body: Annotated[
        SyncIn | None,
        Body(
            openapi_examples={
                "incremental": {"summary": "From where the last sync stopped (the default)", "value": {"mode": "incremental"}},
                "full": {"summary": "Every record again", "value": {"mode": "full"}},
            }
        ),
    ] = None,
    _key: IdempotencyKey = None,
) -> Response:
    mode = body.mode if body is not None else "incremental"
    queued: list[str] = []

    async def action(m: Mutation) -> WriteOutcome:
        connection = await connections.get(m.session, connection_id)
        cls = connector_class(state, connection.connector_key)
        if _ready_status(cls, await credentials.find(m.session, connection_id)) == ConnectionStatus.AUTH_ERROR:
            raise Conflict(f"The connection is not authorized; POST /api/v1/connections/{connection_id}/oauth/start")
        run = await syncs.start(m, connection_id, mode=mode)
        queued.append(run.id)
        return WriteOutcome(202, run_out(run), {"Location": f"/api/v1/runs/{run.id}"})

    response = await perform(request, state, principal, action)
    for run_id in queued:
        await enqueue_run(state, principal.tenant_id, runs.SYNC, run_id)
    return response
