"""Deals, and the CRM upsert by external reference."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from core import deals, idempotency
from core.changes import ChangeContext, Mutation
from core.models import Deal
from core.identity import Principal
from core.roles import Permission
from core.schemas import EXTERNAL_ID_PATTERN, SYSTEM_PATTERN, BatchUpsertOut, DealCreate, DealFields, DealOut, DealPage, DealPatch, UpsertItem
from hub import etags
from hub.auth import State, require
from hub.problems import error_responses
from hub.writes import IdempotencyKey, Outcome, idempotent, perform, request_fingerprint

router = APIRouter(prefix="/api/v1/deals", tags=["deals"])

Reader = Annotated[Principal, Depends(require(Permission.DEALS_READ))]
Writer = Annotated[Principal, Depends(require(Permission.DEALS_WRITE))]
Deleter = Annotated[Principal, Depends(require(Permission.DEALS_DELETE))]
Upserter = Annotated[Principal, Depends(require(Permission.DEALS_UPSERT))]
DealId = Annotated[str, Path(description="The deal's id", examples=["3f2b8c1e-7d4a-4e1b-9c55-0a6f2d9e8b71"], max_length=36)]
System = Annotated[str, Path(pattern=SYSTEM_PATTERN, description="The outside system", examples=["salesforce"])]
ExternalIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=255,
        pattern=EXTERNAL_ID_PATTERN,
        description="The deal's id in that system",
        examples=["0065e00000Abc12AAC"],
    ),
]

_READ_ERRORS = error_responses(401, 403, 422, 500)
_WRITE_ERRORS = error_responses(400, 401, 403, 409, 413, 415, 422, 500)

_DEAL_EXAMPLE = {
    "name": "Acme Series B",
    "stage": "diligence",
    "amount": "25000000.00",
    "currency": "USD",
    "close_date": "2027-03-31",
    "company": "Acme Corp",
    "owner": "jane@fund.example",
    "attributes": {"sector": "fintech"},
}


@router.get("", response_model=DealPage, summary="List deals", responses=_READ_ERRORS)
async def list_deals(
    state: State,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")] = None,
    sort: Annotated[
        str, Query(pattern=r"^-?(created_at|updated_at|name)$", description="Field to sort by; '-' for descending")
    ] = "-created_at",
    stage: Annotated[str | None, Query(max_length=64)] = None,
    updated_since: Annotated[
        AwareDatetime | None, Query(description="Only deals updated at or after this time (with a UTC offset)")
    ] = None,
    system: Annotated[str | None, Query(max_length=64, description="Only deals known to this system")] = None,
    external_id: Annotated[str | None, Query(max_length=255, description="Only the deal with this external id")] = None,
) -> DealPage:
    async with state.db.read(principal.tenant_id) as session:
        rows, next_cursor = await deals.list_deals(
            session,
            limit=limit,
            cursor=cursor,
            sort=sort,
            stage=stage,
            updated_since=updated_since,
            system=system,
            external_id=external_id,
        )
        return DealPage(items=[deals.view(d) for d in rows], next_cursor=next_cursor)


@router.post(
    "", status_code=201, response_model=DealOut, summary="Create a deal", responses=_WRITE_ERRORS
)
async def create_deal(
    request: Request,
    state: State,
    principal: Writer,
    body: Annotated[
        DealCreate,
        Body(
            openapi_examples={
                "deal": {
                    "summary": "A deal known to Salesforce",
                    "value": {**_DEAL_EXAMPLE, "external_refs": [{"system": "salesforce", "external_id": "0065e00000Abc12AAC"}]},
                }
            }
        ),
    ],
    _key: IdempotencyKey = None,
) -> Response:
    async def action(m: Mutation) -> Outcome:
        deal = await deals.create(m, body)
        return Outcome(201, deals.view(deal), {"Location": f"/api/v1/deals/{deal.id}", "ETag": etags.etag(deal.id, deal.version)})

    return await perform(request, state, principal, action)


def _conditional_get(request: Request, deal: Deal) -> Response:
    return etags.conditional_get(request, etags.etag(deal.id, deal.version), deals.view(deal))


_CONDITIONAL_GET = etags.conditional_get_docs("deal")
_IF_MATCH_DOC = "Strong ETag from a GET; the change is refused with 412 if the deal changed since."


@router.get(
    "/{deal_id}",
    response_model=DealOut,
    summary="Get a deal",
    responses={**_CONDITIONAL_GET, **error_responses(401, 403, 404, 500)},
)
async def get_deal(request: Request, state: State, principal: Reader, deal_id: DealId) -> Response:
    async with state.db.read(principal.tenant_id) as session:
        return _conditional_get(request, await deals.get(session, deal_id))


@router.patch(
    "/{deal_id}",
    response_model=DealOut,
    summary="Change a deal (JSON merge patch)",
    responses=error_responses(400, 401, 403, 404, 409, 412, 413, 415, 422, 500),
)
async def patch_deal(
    request: Request,
    state: State,
    principal: Writer,
    deal_id: DealId,
    body: Annotated[DealPatch, Body(openapi_examples={"stage": {"summary": "Move to IC review", "value": {"stage": "ic_review"}}})],
    _key: IdempotencyKey = None,
    _if_match: Annotated[str | None, Header(alias="If-Match", description=_IF_MATCH_DOC)] = None,
) -> Response:
    tags = etags.if_match(request)

    async def action(m: Mutation) -> Outcome:
        deal = await deals.update(m, deal_id, body, precondition=lambda d: etags.matches(tags, d.id, d.version))
        return Outcome(200, deals.view(deal), {"ETag": etags.etag(deal.id, deal.version)})

    return await perform(request, state, principal, action)


@router.delete(
    "/{deal_id}", status_code=204, summary="Delete a deal", responses=error_responses(401, 403, 404, 412, 500)
)
async def delete_deal(
    request: Request,
    state: State,
    principal: Deleter,
    deal_id: DealId,
    _if_match: Annotated[str | None, Header(alias="If-Match", description=_IF_MATCH_DOC)] = None,
) -> Response:
    tags = etags.if_match(request)

    async def action(m: Mutation) -> Outcome:
        await deals.delete(m, deal_id, precondition=lambda d: etags.matches(tags, d.id, d.version))
        return Outcome(204)

    return await perform(request, state, principal, action)


@router.get(
    "/by-ref/{system}/{external_id}",
    response_model=DealOut,
    summary="Get a deal by its external reference",
    responses={**_CONDITIONAL_GET, **error_responses(401, 403, 404, 422, 500)},
)
async def get_deal_by_ref(
    request: Request, state: State, principal: Reader, system: System, external_id: ExternalIdPath
) -> Response:
    async with state.db.read(principal.tenant_id) as session:
        return _conditional_get(request, await deals.get_by_ref(session, system, external_id))


@router.put(
    "/by-ref/{system}/{external_id}",
    response_model=DealOut,
    summary="Create or update a deal by its external reference (CRM upsert)",
    description=(
        "Idempotent by the natural key (tenant, system, external id): 201 when the deal is created, "
        "200 when it is updated or already identical. An identical payload changes nothing and emits no event."
    ),
    responses={201: {"model": DealOut, "description": "Created"}, **_WRITE_ERRORS},
)
async def upsert_deal(
    request: Request,
    state: State,
    principal: Upserter,
    system: System,
    external_id: ExternalIdPath,
    body: Annotated[DealFields, Body(openapi_examples={"deal": {"summary": "A CRM opportunity", "value": _DEAL_EXAMPLE}})],
    _key: IdempotencyKey = None,
) -> Response:
    # Concurrent upserts share a transaction (hub.group_commit): same guarantees, less cost.
    key = request.headers.get("idempotency-key")
    context = ChangeContext(principal, getattr(request.state, "request_id", None), key)
    committer = state.upserts
    assert committer is not None, "the app factory sets the committer"
    if key is None:
        response = await committer.upsert(context, None, system, external_id, body)
        assert response is not None  # only a taken idempotency key answers None
        return response
    idempotency.check_key(key)
    fingerprint = request_fingerprint(request, await request.body())
    return await idempotent(
        state, principal, key, fingerprint, lambda: committer.upsert(context, fingerprint, system, external_id, body)
    )


def _result(
    index: int, status: str, *, deal_id: str | None = None, version: int | None = None, error: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "status": status, "deal_id": deal_id, "version": version, "error": error}


class BatchUpsertIn(BaseModel):
    # Items are validated one by one, so one bad record fails alone, not the batch.
    items: list[Annotated[UpsertItem | dict[str, Any], Field(union_mode="left_to_right")]] = Field(
        min_length=1, max_length=1000
    )


@router.post(
    "/batch-upsert",
    response_model=BatchUpsertOut,
    summary="Upsert up to 1,000 deals by external reference",
    description="One transaction; a result per item, in input order. Invalid items fail alone.",
    responses=_WRITE_ERRORS,
)
async def batch_upsert(
    request: Request,
    state: State,
    principal: Upserter,
    body: Annotated[
        BatchUpsertIn,
        Body(
            openapi_examples={
                "two": {
                    "summary": "Two opportunities",
                    "value": {
                        "items": [
                            {"system": "salesforce", "external_id": "006A", "deal": _DEAL_EXAMPLE},
                            {"system": "salesforce", "external_id": "006B", "deal": {"name": "Beta Seed"}},
                        ]
                    },
                }
            }
        ),
    ],
    _key: IdempotencyKey = None,
) -> Response:
    # Results as `UpsertResult` dumps to JSON, built as dicts: a thousand models per batch
    # were a visible share of its CPU (tests/hub/test_upsert.py pins the shape).
    results: list[dict[str, Any] | None] = [None] * len(body.items)
    valid: list[tuple[int, UpsertItem]] = []
    for index, raw in enumerate(body.items):
        if isinstance(raw, UpsertItem):
            valid.append((index, raw))
            continue
        try:
            valid.append((index, UpsertItem.model_validate(raw)))
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            results[index] = _result(index, "failed", error={"code": "VALIDATION_FAILED", "details": errors})

    async def action(m: Mutation) -> Outcome:
        outcomes = await deals.upsert_many(m, [(item.system, item.external_id, item.deal) for _, item in valid])
        for (index, _), outcome in zip(valid, outcomes, strict=True):
            results[index] = _result(index, outcome.status, deal_id=outcome.deal.id, version=outcome.version)
        final = [r for r in results if r is not None]
        counts = Counter(r["status"] for r in final)
        return Outcome(200, {**{s: counts[s] for s in ("created", "updated", "unchanged", "failed")}, "results": final})

    return await perform(request, state, principal, action)
