"""Deprecating a route: `Deprecation` (RFC 9745) and `Sunset` (RFC 8594) response headers.

Usage, on one route::

    from datetime import date
    from fastapi import Depends
    from hub.deprecation import deprecated

    @router.get(
        "/old-things",
        deprecated=True,  # marks the operation as deprecated in OpenAPI
        dependencies=[Depends(deprecated(date(2027, 6, 30), "https://docs.example/migrate", since=date(2026, 1, 1)))],
    )

or on every route of a router: `APIRouter(deprecated=True, dependencies=[Depends(deprecated(...))])`.

The route then answers with::

    Deprecation: @1767225600                       (since; `true` when no `since` is given)
    Sunset: Wed, 30 Jun 2027 00:00:00 GMT          (when the route goes away)
    Link: <https://docs.example/migrate>; rel="deprecation"; type="text/html"

Deprecating is not a breaking change; removing the route at its sunset is, so it goes with
a major version bump (see `hub.contract`).

How the headers reach the response: FastAPI applies a dependency's `Response` headers only
when the route returns a model or a dict; routes that build a `Response` themselves (the
hub's mutating routes, via `hub.writes.perform`) and error responses bypass that. So the
dependency hands the headers to `hub.middleware.EdgeMiddleware` (`add_edge_headers`),
which stamps them on whatever response the route produces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time
from email.utils import format_datetime

from fastapi import Request

from hub.middleware import add_edge_headers

__all__ = ["deprecated", "deprecation_headers"]


def _utc(moment: date | datetime) -> datetime:
    if isinstance(moment, datetime):
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return datetime.combine(moment, time(0, 0), tzinfo=UTC)


def deprecation_headers(
    sunset: date | datetime, link: str | None = None, *, since: date | datetime | None = None
) -> dict[str, str]:
    """The headers a deprecated route answers with. A `date` means 00:00 UTC that day."""
    sunset_at = _utc(sunset)
    headers = {"Sunset": format_datetime(sunset_at, usegmt=True)}
    if since is None:
        headers["Deprecation"] = "true"
    else:
        since_at = _utc(since)
        if since_at > sunset_at:
            raise ValueError("a route cannot be deprecated after its sunset")
        headers["Deprecation"] = f"@{int(since_at.timestamp())}"
    if link is not None:
        headers["Link"] = f'<{link}>; rel="deprecation"; type="text/html"'
    return headers


def deprecated(
    sunset: date | datetime, link: str | None = None, *, since: date | datetime | None = None
) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that marks the route's responses as deprecated (see the module doc).

    `sunset`: when the route stops answering. `link`: a page about the deprecation and what
    to use instead. `since`: when it was deprecated (RFC 9745 wants a date: `@<unix seconds>`);
    without it the header says `true`, as earlier drafts of the RFC did.
    """
    headers = deprecation_headers(sunset, link, since=since)

    async def mark_deprecated(request: Request) -> None:
        add_edge_headers(request.state, headers)

    return mark_deprecated
