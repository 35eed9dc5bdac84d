"""Strong ETags and the conditional headers that use them (RFC 9110 §13)."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from core.errors import PreconditionFailed


def _strong(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def etag(resource_id: str, version: int) -> str:
    """Changes exactly when the resource's version does; says nothing else about it."""
    return _strong(f"{resource_id}:{version}".encode())


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def not_modified(request: Request, current: str) -> Response | None:
    """A 304 when If-None-Match names the current ETag (weak comparison)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return None
    tags = {t.removeprefix("W/") for t in _tags(header)}
    if "*" in tags or current in tags:
        return Response(status_code=304, headers={"ETag": current})
    return None


def conditional_get(request: Request, tag: str, body: BaseModel | str) -> Response:
    """`body` (a model, or its JSON) with its ETag, or a 304 when If-None-Match already names it."""
    unchanged = not_modified(request, tag)
    if unchanged is not None:
        return unchanged
    payload = body if isinstance(body, str) else body.model_dump_json()
    return Response(payload, media_type="application/json", headers={"ETag": tag})


def conditional_get_by_content(request: Request, body: BaseModel) -> Response:
    """`body` with a strong ETag over its own bytes, or a 304: for a resource without a
    version column (or none at all), whose tag must still change exactly when what a GET
    of it shows does."""
    payload = body.model_dump_json()
    return conditional_get(request, _strong(payload.encode()), payload)


def conditional_get_docs(what: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of a GET answered by `conditional_get` or `conditional_get_by_content`."""
    return {
        200: {"description": f"The {what}, with a strong ETag", "headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified (If-None-Match matched)"},
    }


def if_match(request: Request) -> list[str] | None:
    """The strong tags of If-Match, checked later against the row being changed.

    If-Match compares strongly (RFC 9110 §13.1.1): a weak tag never matches, so it is
    dropped, and a list of nothing but weak tags fails at once."""
    header = request.headers.get("if-match")
    if header is None:
        return None
    tags = _tags(header)
    strong = [t for t in tags if not t.startswith("W/")]
    if tags and not strong:
        raise PreconditionFailed("If-Match needs a strong ETag")
    return strong


def matches(tags: list[str] | None, resource_id: str, version: int) -> bool:
    return tags is None or "*" in tags or etag(resource_id, version) in tags
