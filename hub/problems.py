"""Problem responses (RFC 9457): every error the API gives has this one shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import HubError
from core.jsonable import dumps

log = logging.getLogger("hub.errors")
PROBLEM_TYPE_BASE = "https://hub.dev/problems/"
MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An error, as every route reports it."""

    type: str = Field(examples=[PROBLEM_TYPE_BASE + "not-found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["No such deal"])
    code: str = Field(examples=["NOT_FOUND"])
    details: list[dict[str, Any]] = Field(default_factory=list)
    request_id: str | None = Field(default=None, examples=["7c3f4a52-1f0e-4a55-9f8e-9f7f8a2b1c3d"])


def problem_document(
    status: int, code: str, title: str, detail: str, *, request_id: str | None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_BASE + code.lower().replace("_", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "details": details or [],
        "request_id": request_id,
    }


def problem_body(
    status: int, code: str, title: str, detail: str, *, request_id: str | None, details: list[dict[str, Any]] | None = None
) -> bytes:
    return dumps(problem_document(status, code, title, detail, request_id=request_id, details=details))


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    request_id: str | None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        problem_body(status, code, title, detail, request_id=request_id, details=details),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if isinstance(retry_after, int) else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer, ApiKey realm="hub"'}
    return problem(exc.status, exc.code, exc.title, exc.detail, request_id=request_id_of(request), details=exc.details, headers=headers)


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    # Echoing `input` back could repeat a secret the caller sent; keep location and message.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]


async def _over_limit(request: Request) -> Response | None:
    """The 401 or 429 to answer instead, for a request refused before its route checked
    its credential and rate limit (`hub.auth.charge_unchecked`)."""
    from hub.auth import charge_unchecked  # imported here: hub.auth's imports lead back to this module

    try:
        await charge_unchecked(request)
    except HubError as exc:
        return await _hub_error(request, exc)
    return None


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    limited = await _over_limit(request)
    if limited is not None:
        return limited
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem(
            400, "MALFORMED_JSON", "Malformed JSON", "The request body is not valid JSON", request_id=request_id_of(request),
            details=_clean_errors(errors),
        )
    return problem(
        422, "VALIDATION_FAILED", "Validation failed", "The request is not valid", request_id=request_id_of(request),
        details=_clean_errors(errors),
    )


_HTTP_CODES = {
    400: ("BAD_REQUEST", "Bad request"),
    401: ("UNAUTHORIZED", "Authentication required"),
    403: ("FORBIDDEN", "Forbidden"),
    404: ("NOT_FOUND", "Not found"),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed"),
    406: ("NOT_ACCEPTABLE", "Not acceptable"),
    413: ("PAYLOAD_TOO_LARGE", "Payload too large"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Unsupported media type"),
}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    limited = await _over_limit(request)
    if limited is not None:
        return limited
    code, title = _HTTP_CODES.get(exc.status_code, ("HTTP_ERROR", "HTTP error"))
    detail = {404: "No such route", 405: "This route does not allow that method"}.get(exc.status_code, str(exc.detail))
    return problem(exc.status_code, code, title, detail, request_id=request_id_of(request), headers=exc.headers)


EXCEPTION_HANDLERS = {
    HubError: _hub_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer."""
    descriptions = {
        400: "Malformed JSON or request",
        401: "Missing, invalid or expired credential",
        403: "The credential's roles do not allow this",
        404: "No such resource in your tenant",
        409: "Conflict, or an Idempotency-Key reused with another request",
        412: "If-Match did not match the current version",
        413: "Body larger than the configured limit",
        415: "Body is not JSON",
        422: "The request failed validation",
        429: "Rate limit exceeded",
        500: "Unexpected error (no internals are included)",
        502: "The provider refused or failed the call",
        503: "The provider is unavailable or its circuit breaker is open; retry later",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        code, title = _HTTP_CODES.get(status, ("", ""))
        out[status] = {
            "model": Problem,
            "description": descriptions.get(status, title),
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return out
