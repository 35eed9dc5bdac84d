"""The connector registry: which connectors this hub offers, their auth, configuration
schema, streams and actions (methods). Plugins that failed to load are listed too, with
their error, so an admin sees why a connector is missing."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from connectors.host import secret_fields
from connectors.registry import ConnectorNotFound, ConnectorRegistry
from connectors.sdk import Connector, Kind
from core.errors import NotFound
from core.identity import Principal
from core.roles import Permission
from hub import etags
from hub.auth import State, require
from hub.problems import error_responses

router = APIRouter(prefix="/api/v1/connectors", tags=["connectors"])
Reader = Annotated[Principal, Depends(require(Permission.CONNECTORS_READ))]
ConnectorKey = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,100}$", description="The connector's key", examples=["salesforce"])
]
Availability = Literal["available", "unavailable", "disabled"]


class StreamDescription(BaseModel):
    name: str
    description: str
    primary_key: list[str]
    cursor_field: str | None
    incremental: bool
    record_schema: dict[str, Any] | None


class ActionDescription(BaseModel):
    name: str
    description: str
    params_schema: dict[str, Any] = Field(description="JSON schema the action's parameters are validated against")
    result_schema: dict[str, Any] | None


class ConnectorSummary(BaseModel):
    key: str = Field(examples=["salesforce"])
    title: str | None = Field(examples=["Salesforce"])
    kind: Kind | None
    version: str | None
    auth_scheme: str | None = Field(description="oauth2_authorization_code, oauth2_client_credentials, api_key, basic, or null")
    status: Availability = Field(description="available; unavailable (failed to load, see error); disabled by configuration")
    source: str | None = Field(description="The plugin that provides it")
    error: str | None = Field(description="Why an unavailable plugin failed to load")
    streams: list[str]
    actions: list[str]


class ConnectorList(BaseModel):
    items: list[ConnectorSummary]


class ConnectorDetail(BaseModel):
    key: str
    title: str
    kind: Kind
    version: str
    status: Availability
    source: str
    auth: dict[str, Any] | None = Field(description="The auth scheme: URLs, scopes, PKCE, header... (never a secret)")
    config_schema: dict[str, Any] = Field(description="JSON schema of a connection's configuration")
    secret_fields: list[str] = Field(description="Configuration fields kept in the credential vault, never shown back")
    streams: list[StreamDescription]
    actions: list[ActionDescription]


class ActionList(BaseModel):
    items: list[ActionDescription]


class ActionSchemas(BaseModel):
    params_schema: dict[str, Any]
    result_schema: dict[str, Any] | None


class ConnectorSchemas(BaseModel):
    key: str
    config_schema: dict[str, Any]
    secret_fields: list[str]
    actions: dict[str, ActionSchemas]
    streams: dict[str, dict[str, Any] | None] = Field(description="Record schema of each stream, if declared")


def _summary(registry: ConnectorRegistry, cls: type[Connector]) -> ConnectorSummary:
    return ConnectorSummary(
        key=cls.key,
        title=cls.title,
        kind=cls.kind,
        version=cls.version,
        auth_scheme=cls.auth.scheme if cls.auth is not None else None,
        status="available",
        source=registry.source(cls.key),
        error=None,
        streams=[stream.name for stream in cls.streams],
        actions=sorted(cls.actions),
    )


def _get(registry: ConnectorRegistry, key: str) -> type[Connector]:
    try:
        return registry.get(key)
    except ConnectorNotFound:
        for broken in registry.unavailable():
            if broken.key == key:
                raise NotFound(f"Connector {key!r} is unavailable: {broken.error}") from None
        raise NotFound(f"No connector {key!r} in this hub") from None


_READ_ERRORS = error_responses(401, 403, 404, 422, 429, 500)


@router.get(
    "",
    response_model=ConnectorList,
    summary="List connector definitions",
    description="Available connectors, and plugins that are unavailable (with their error) or disabled.",
    responses=error_responses(401, 403, 422, 429, 500),
)
async def list_connectors(
    state: State,
    principal: Reader,
    kind: Annotated[Kind | None, Query(description="Only connectors of this kind")] = None,
    status: Annotated[Availability | None, Query(description="Only connectors with this status")] = None,
) -> ConnectorList:
    registry = state.connectors
    items = [_summary(registry, cls) for cls in registry.definitions(kind)]
    if kind is None:
        items += [
            ConnectorSummary(
                key=broken.key, title=None, kind=None, version=None, auth_scheme=None, status="unavailable",
                source=broken.source, error=broken.error, streams=[], actions=[],
            )  # fmt: skip
            for broken in registry.unavailable()
        ]
        items += [
            ConnectorSummary(
                key=key, title=None, kind=None, version=None, auth_scheme=None, status="disabled",
                source=None, error=None, streams=[], actions=[],
            )  # fmt: skip
            for key in registry.disabled()
        ]
    if status is not None:
        items = [item for item in items if item.status == status]
    return ConnectorList(items=items)


@router.get(
    "/{key}",
    response_model=ConnectorDetail,
    summary="Get a connector definition",
    responses={**etags.conditional_get_docs("connector definition"), **_READ_ERRORS},
)
async def get_connector(request: Request, state: State, principal: Reader, key: ConnectorKey) -> Response:
    # A definition is fixed by the installed code: the tag is over the body itself.
    cls = _get(state.connectors, key)
    description = cls.describe()
    detail = ConnectorDetail(
        **description.model_dump(),
        status="available",
        source=state.connectors.source(key),
        secret_fields=sorted(secret_fields(cls.Config)),
    )
    return etags.conditional_get_by_content(request, detail)


@router.get(
    "/{key}/actions",
    response_model=ActionList,
    summary="List a connector's actions (methods) with their parameter schemas",
    responses=_READ_ERRORS,
)
async def list_actions(state: State, principal: Reader, key: ConnectorKey) -> ActionList:
    description = _get(state.connectors, key).describe()
    return ActionList(items=[ActionDescription.model_validate(a.model_dump()) for a in description.actions])


@router.get(
    "/{key}/schemas",
    response_model=ConnectorSchemas,
    summary="A connector's JSON schemas: configuration, action parameters and results, stream records",
    responses=_READ_ERRORS,
)
async def get_schemas(state: State, principal: Reader, key: ConnectorKey) -> ConnectorSchemas:
    cls = _get(state.connectors, key)
    description = cls.describe()
    return ConnectorSchemas(
        key=cls.key,
        config_schema=description.config_schema,
        secret_fields=sorted(secret_fields(cls.Config)),
        actions={a.name: ActionSchemas(params_schema=a.params_schema, result_schema=a.result_schema) for a in description.actions},
        streams={s.name: s.record_schema for s in description.streams},
    )
