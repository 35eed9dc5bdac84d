"""Webhook endpoints (ADMIN): subscribe URLs to event types, rotate their signing
secrets, watch and replay their deliveries.

A secret is returned once, by the create and rotate routes, and never again. Endpoint
URLs on private, loopback or link-local addresses are refused unless
HUB_WEBHOOKS_ALLOW_PRIVATE is set.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from core import deliveries, runs, webhooks
from core.changes import Mutation
from core.identity import Principal
from core.models import WebhookEndpoint
from core.roles import Permission
from hub import etags
from hub.auth import State, require
from hub.problems import error_responses
from hub.routers.runs import RunOut, enqueue_run, run_out
from hub.writes import IdempotencyKey, Outcome, perform

log = logging.getLogger("hub.webhooks")
router = APIRouter(prefix="/api/v1/webhook-endpoints", tags=["webhooks"])
Admin = Annotated[Principal, Depends(require(Permission.WEBHOOKS_MANAGE))]
_ID_EXAMPLE = "8d7c2f3e-1b4a-4c6d-9e8f-0a1b2c3d4e5f"
EndpointId = Annotated[str, Path(max_length=36, description="The endpoint's id", examples=[_ID_EXAMPLE])]
DeliveryId = Annotated[str, Path(max_length=36, description="The delivery's id", examples=[_ID_EXAMPLE])]
IfMatch = Annotated[
    str | None, Header(alias="If-Match", description="Strong ETag from a GET; refused with 412 if the endpoint changed since.")
]
Limit = Annotated[int, Query(ge=1, le=200, description="Page size")]
Cursor = Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")]
EventFilter = Annotated[str, Field(pattern=webhooks.EVENT_FILTER_PATTERN, max_length=100)]
Url = Annotated[
    str,
    Field(
        min_length=8,
        max_length=2048,
        pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+(/[^\s#]*)?$",
        description="http(s) URL; its host must resolve to public addresses (unless HUB_WEBHOOKS_ALLOW_PRIVATE)",
        examples=["https://crm.example.com/hooks/deal-hub"],
    ),
]

_READ_ERRORS = error_responses(401, 403, 404, 422, 500)
_WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 500)


# -- models -------------------------------------------------------------------------------


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url
    event_types: list[EventFilter] = Field(
        min_length=1,
        max_length=webhooks.MAX_EVENT_FILTERS,
        description="Exact types (deal.created), prefixes (deal.*) or * for everything",
        examples=[["deal.*", "sync.failed"]],
    )
    description: str = Field(default="", max_length=500, examples=["CRM status sync"])


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    event_types: list[EventFilter] | None = Field(default=None, min_length=1, max_length=webhooks.MAX_EVENT_FILTERS)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = Field(default=None, description="false disables the endpoint; true enables it again")


class EndpointOut(BaseModel):
    id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: Literal["manual", "gone", "failing"] | None = Field(
        description="Why it is disabled: by an admin, it answered 410, or it failed for too long"
    )
    disabled_at: datetime | None
    failing_since: datetime | None = Field(description="Since when every attempt has failed (null when healthy)")
    previous_secret_expires_at: datetime | None = Field(
        description="Until when the secret replaced by the last rotation keeps signing beside the new one"
    )
    version: int
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str | None = Field(
        description="The signing secret (whsec_...), shown this once; null when an Idempotency-Key replays the response"
    )


class EndpointPage(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int | None = Field(
        default=None,
        ge=0,
        le=7 * 86400,
        description="How long the old secret keeps signing beside the new one (default HUB_WEBHOOK_SECRET_OVERLAP_SECONDS)",
    )


class TestEventOut(BaseModel):
    event_id: str = Field(description="The test event's id; its delivery carries it as webhook-id")


class DeliveryOut(BaseModel):
    id: str
    endpoint_id: str
    event_id: str = Field(description="Also the webhook-id header of every attempt")
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int = Field(description="Attempts in the current round (a replay starts a new one)")
    total_attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class AttemptOut(BaseModel):
    id: str
    delivery_id: str
    number: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    outcome: Literal["success", "http_error", "timeout", "connection_error", "address_refused", "endpoint_disabled"]
    error: str | None
    response_excerpt: str | None = Field(description="The start of the response body")
    next_attempt_at: datetime | None = Field(description="When the next attempt was scheduled, after a failure")


class AttemptPage(BaseModel):
    items: list[AttemptOut]
    next_cursor: str | None


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(description="Failed deliveries created at or after this time")
    until: AwareDatetime | None = Field(default=None, description="...and before this time (default: now)")


def endpoint_out(endpoint: WebhookEndpoint) -> EndpointOut:
    return EndpointOut.model_validate(webhooks.describe(endpoint))


def _conditional(request: Request, endpoint: WebhookEndpoint) -> Response:
    return etags.conditional_get(request, etags.etag(endpoint.id, endpoint.version), endpoint_out(endpoint))


# Read by the API fuzzer: a schema-valid URL may still be refused, by where it resolves.
RUNTIME_URL = {"x-runtime-validation": "url must resolve to public addresses unless HUB_WEBHOOKS_ALLOW_PRIVATE is set"}
_ENDPOINT_EXAMPLE = {"url": "https://crm.example.com/hooks/deal-hub", "event_types": ["deal.*"], "description": "CRM status sync"}


# -- endpoints ----------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=EndpointWithSecret,
    summary="Create a webhook endpoint (its secret is shown once)",
    responses=_WRITE_ERRORS,
    openapi_extra=RUNTIME_URL,
)
async def create_endpoint(
    request: Request,
    state: State,
    principal: Admin,
    body: Annotated[EndpointIn, Body(openapi_examples={"deals": {"summary": "Every deal event", "value": _ENDPOINT_EXAMPLE}})],
    _key: IdempotencyKey = None,
) -> Response:
    url = await webhooks.vet_url(body.url, allow_private=state.settings.webhooks_allow_private)

    async def action(m: Mutation) -> Outcome:
        issued = await webhooks.create(m, state.vault, url=url, event_types=body.event_types, description=body.description)
        shown = EndpointWithSecret(**webhooks.describe(issued.endpoint), secret=issued.secret)
        headers = {
            "Location": f"/api/v1/webhook-endpoints/{issued.endpoint.id}",
            "ETag": etags.etag(issued.endpoint.id, issued.endpoint.version),
        }
        # The secret is never stored in the clear, not even in the idempotency record.
        return Outcome(201, shown, headers, stored_body=shown.model_copy(update={"secret": None}))

    return await perform(request, state, principal, action)


@router.get("", response_model=EndpointPage, summary="List webhook endpoints", responses=_READ_ERRORS)
async def list_endpoints(
    state: State,
    principal: Admin,
    limit: Limit = 50,
    cursor: Cursor = None,
    enabled: Annotated[bool | None, Query(description="Only enabled (true) or disabled (false) endpoints")] = None,
) -> EndpointPage:
    async with state.db.read(principal.tenant_id) as session:
        rows, next_cursor = await webhooks.list_endpoints(session, limit=limit, cursor=cursor, enabled=enabled)
        return EndpointPage(items=[endpoint_out(e) for e in rows], next_cursor=next_cursor)


_CONDITIONAL_GET = etags.conditional_get_docs("endpoint")


@router.get(
    "/{endpoint_id}",
    response_model=EndpointOut,
    summary="Get a webhook endpoint",
    responses={**_CONDITIONAL_GET, **error_responses(401, 403, 404, 500)},
)
async def get_endpoint(request: Request, state: State, principal: Admin, endpoint_id: EndpointId) -> Response:
    async with state.db.read(principal.tenant_id) as session:
        return _conditional(request, await webhooks.get(session, endpoint_id))


@router.patch(
    "/{endpoint_id}",
    response_model=EndpointOut,
    summary="Change, disable or enable a webhook endpoint",
    description="Absent fields stay as they are. `enabled: false` disables the endpoint; `true` enables it again "
    "and forgets its failing period.",
    responses=error_responses(400, 401, 403, 404, 409, 412, 413, 415, 422, 500),
    openapi_extra=RUNTIME_URL,
)
async def patch_endpoint(
    request: Request,
    state: State,
    principal: Admin,
    endpoint_id: EndpointId,
    body: Annotated[
        EndpointPatch,
        Body(openapi_examples={"disable": {"summary": "Disable the endpoint", "value": {"enabled": False}}}),
    ],
    _key: IdempotencyKey = None,
    _if_match: IfMatch = None,
) -> Response:
    tags = etags.if_match(request)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "url" in changes:
        changes["url"] = await webhooks.vet_url(changes["url"], allow_private=state.settings.webhooks_allow_private)

    async def action(m: Mutation) -> Outcome:
        endpoint = await webhooks.update_endpoint(
            m, endpoint_id, changes, precondition=lambda e: etags.matches(tags, e.id, e.version)
        )
        return Outcome(200, endpoint_out(endpoint), {"ETag": etags.etag(endpoint.id, endpoint.version)})

    return await perform(request, state, principal, action)


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    summary="Delete a webhook endpoint, with its deliveries",
    responses=error_responses(401, 403, 404, 412, 500),
)
async def delete_endpoint(
    request: Request, state: State, principal: Admin, endpoint_id: EndpointId, _if_match: IfMatch = None
) -> Response:
    tags = etags.if_match(request)

    async def action(m: Mutation) -> Outcome:
        await webhooks.delete(m, endpoint_id, precondition=lambda e: etags.matches(tags, e.id, e.version))
        return Outcome(204)

    return await perform(request, state, principal, action)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    summary="Rotate the signing secret (the new one is shown once)",
    description="Deliveries are signed with both the new and the old secret until `previous_secret_expires_at`.",
    responses=_WRITE_ERRORS,
)
async def rotate_secret(
    request: Request,
    state: State,
    principal: Admin,
    endpoint_id: EndpointId,
    body: Annotated[
        RotateIn | None,
        Body(openapi_examples={"hour": {"summary": "Keep the old secret for an hour", "value": {"overlap_seconds": 3600}}}),
    ] = None,
    _key: IdempotencyKey = None,
) -> Response:
    overlap = state.settings.webhook_secret_overlap_seconds
    if body is not None and body.overlap_seconds is not None:
        overlap = float(body.overlap_seconds)

    async def action(m: Mutation) -> Outcome:
        issued = await webhooks.rotate_secret(m, state.vault, endpoint_id, overlap_seconds=overlap)
        shown = EndpointWithSecret(**webhooks.describe(issued.endpoint), secret=issued.secret)
        return Outcome(
            200, shown, {"ETag": etags.etag(issued.endpoint.id, issued.endpoint.version)},
            stored_body=shown.model_copy(update={"secret": None}),
        )  # fmt: skip

    return await perform(request, state, principal, action)


@router.post(
    "/{endpoint_id}/test",
    status_code=202,
    response_model=TestEventOut,
    summary="Send a test event to this endpoint",
    description="A `webhook_endpoint.test` event, delivered to this endpoint only (whatever its event types).",
    responses=_WRITE_ERRORS,
)
async def send_test_event(
    request: Request, state: State, principal: Admin, endpoint_id: EndpointId, _key: IdempotencyKey = None
) -> Response:
    async def action(m: Mutation) -> Outcome:
        return Outcome(202, TestEventOut(event_id=await webhooks.send_test(m, endpoint_id)))

    return await perform(request, state, principal, action)


# -- deliveries ---------------------------------------------------------------------------


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    summary="List an endpoint's deliveries, newest first",
    responses=_READ_ERRORS,
)
async def list_deliveries(
    state: State,
    principal: Admin,
    endpoint_id: EndpointId,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
    event_type: Annotated[str | None, Query(max_length=100)] = None,
    since: Annotated[AwareDatetime | None, Query(description="Created at or after (with a UTC offset)")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Created before (with a UTC offset)")] = None,
) -> DeliveryPage:
    async with state.db.read(principal.tenant_id) as session:
        rows, next_cursor = await deliveries.list_deliveries(
            session, endpoint_id, limit=limit, cursor=cursor, status=status, event_type=event_type, since=since, until=until
        )
        return DeliveryPage(items=[DeliveryOut.model_validate(deliveries.view(d)) for d in rows], next_cursor=next_cursor)


@router.get(
    "/{endpoint_id}/deliveries/{delivery_id}",
    response_model=DeliveryOut,
    summary="Get a delivery",
    responses={**etags.conditional_get_docs("delivery"), **error_responses(401, 403, 404, 500)},
)
async def get_delivery(
    request: Request, state: State, principal: Admin, endpoint_id: EndpointId, delivery_id: DeliveryId
) -> Response:
    # Tagged by content: a delivery has no version column, and pollers need the tag to
    # move with its status, attempts and timestamps, which all show in the body.
    async with state.db.read(principal.tenant_id) as session:
        delivery = await deliveries.get_delivery(session, endpoint_id, delivery_id)
    return etags.conditional_get_by_content(request, DeliveryOut.model_validate(deliveries.view(delivery)))


@router.get(
    "/{endpoint_id}/deliveries/{delivery_id}/attempts",
    response_model=AttemptPage,
    summary="List a delivery's attempts, first first",
    responses=_READ_ERRORS,
)
async def list_attempts(
    state: State,
    principal: Admin,
    endpoint_id: EndpointId,
    delivery_id: DeliveryId,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> AttemptPage:
    async with state.db.read(principal.tenant_id) as session:
        rows, next_cursor = await deliveries.list_attempts(session, endpoint_id, delivery_id, limit=limit, cursor=cursor)
        return AttemptPage(items=[AttemptOut.model_validate(deliveries.attempt_view(a)) for a in rows], next_cursor=next_cursor)


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=DeliveryOut,
    summary="Send a delivery again",
    description="A new round of attempts with the same webhook-id. Refused (409) while it is pending or the endpoint is disabled.",
    responses=_WRITE_ERRORS,
)
async def replay_delivery(
    request: Request,
    state: State,
    principal: Admin,
    endpoint_id: EndpointId,
    delivery_id: DeliveryId,
    _key: IdempotencyKey = None,
) -> Response:
    async def action(m: Mutation) -> Outcome:
        delivery = await deliveries.replay_one(m, endpoint_id, delivery_id)
        return Outcome(202, DeliveryOut.model_validate(deliveries.view(delivery)))

    return await perform(request, state, principal, action)


@router.post(
    "/{endpoint_id}/replay",
    status_code=202,
    response_model=RunOut,
    summary="Replay every failed delivery of a time window (a run)",
    description="Answers with a run to poll at its Location; the run requeues the window's failed deliveries page by page.",
    responses=_WRITE_ERRORS,
)
async def replay_failed(
    request: Request,
    state: State,
    principal: Admin,
    endpoint_id: EndpointId,
    body: Annotated[
        ReplayIn,
        Body(openapi_examples={"day": {"summary": "Everything that failed on one day", "value": {"since": "2026-11-20T00:00:00Z", "until": "2026-11-21T00:00:00Z"}}}),
    ],
    _key: IdempotencyKey = None,
) -> Response:
    # An empty window (since >= until) is valid: its run finds nothing to replay.
    until = body.until or datetime.now(body.since.tzinfo)

    async def action(m: Mutation) -> Outcome:
        await deliveries.check_replayable(m.session, endpoint_id)
        run = await runs.create(
            m,
            kind=runs.WEBHOOK_REPLAY,
            params={"endpoint_id": endpoint_id, "since": body.since.isoformat(), "until": until.isoformat()},
            subject_type=webhooks.RESOURCE,
            subject_id=endpoint_id,
        )
        return Outcome(202, run_out(run), {"Location": f"/api/v1/runs/{run.id}"})

    response = await perform(request, state, principal, action)
    if response.status_code == 202:
        location = response.headers["location"]
        run_id = location.rsplit("/", 1)[1]
        await enqueue_run(state, principal.tenant_id, runs.WEBHOOK_REPLAY, run_id)
    return response


