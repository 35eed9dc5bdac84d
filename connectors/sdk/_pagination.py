"""Paginators: small objects that read the next-page token from a page and apply it.

A paginator is stateless configuration, shared by every read of a stream. ``paginate``
runs the loop and owns the safety rule every paginator gets for free: a token seen before
raises ``PaginationError`` instead of looping forever.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from ._errors import PaginationError, describe_request

RecordPath = str | Sequence[str] | None
"""Where records sit in a body: a dotted path (``"data.items"``), a sequence of keys (for
keys containing dots, e.g. ``("@odata.nextLink",)``), or ``None`` for the body itself."""


def lookup(body: Any, path: RecordPath) -> Any:
    """The value at ``path`` in a decoded JSON ``body``, or ``None`` if any step is missing."""
    if path is None:
        return body
    keys = path.split(".") if isinstance(path, str) else path
    node = body
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


@dataclass(frozen=True)
class PageRequest:
    """The request for one page: a URL and its query parameters.

    :param url: absolute URL.
    :param params: query parameters (merged into those already in ``url``).
    """

    url: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def with_params(self, **params: Any) -> PageRequest:
        """This request with ``params`` added or replaced."""
        return replace(self, params={**self.params, **params})


@dataclass(frozen=True)
class RawPage:
    """A fetched page before mapping: the response, its decoded body and its raw records."""

    response: httpx.Response
    body: Any
    records: Sequence[Any]


class Paginator(ABC):
    """Reads the next-page token from a page and applies it to the next request."""

    def first(self, request: PageRequest) -> PageRequest:
        """The first request (e.g. with a page size added); unchanged by default."""
        return request

    @abstractmethod
    def next(self, page: RawPage) -> Any | None:
        """The token of the next page, or ``None`` when ``page`` is the last one."""

    @abstractmethod
    def apply(self, request: PageRequest, token: Any) -> PageRequest:
        """The request for the page that ``token`` designates, derived from ``request``."""


@dataclass(frozen=True)
class CursorPaginator(Paginator):
    """A token in the body sent back as a query parameter (cursors, page tokens).

    E.g. Affinity v1 ``CursorPaginator(token_at="next_page_token", param="page_token")`` or
    Drive ``CursorPaginator(token_at="nextPageToken", param="pageToken")``. Other parameters
    are kept, as Affinity requires.

    :param token_at: path of the token in the body; a missing or empty token ends paging.
    :param param: query parameter that carries it.
    :param more_at: optional path of a boolean "has more" flag; false ends paging.
    """

    token_at: RecordPath
    param: str
    more_at: RecordPath = None

    def next(self, page: RawPage) -> Any | None:
        if self.more_at is not None and not lookup(page.body, self.more_at):
            return None
        return lookup(page.body, self.token_at) or None

    def apply(self, request: PageRequest, token: Any) -> PageRequest:
        return request.with_params(**{self.param: token})


@dataclass(frozen=True)
class NextUrlPaginator(Paginator):
    """A next-page URL in the body, absolute or relative to the page's URL.

    E.g. Salesforce ``NextUrlPaginator(url_at="nextRecordsUrl")`` (a path relative to the
    instance host), Affinity v2 ``"pagination.nextUrl"``, Graph ``("@odata.nextLink",)``.
    The URL carries all parameters, so the previous ones are dropped.

    :param url_at: path of the URL in the body; missing or empty ends paging.
    :param done_at: optional path of a boolean "done" flag; true ends paging.
    """

    url_at: RecordPath
    done_at: RecordPath = None

    def next(self, page: RawPage) -> Any | None:
        if self.done_at is not None and lookup(page.body, self.done_at):
            return None
        url = lookup(page.body, self.url_at)
        if not url:
            return None
        return str(page.response.request.url.join(str(url)))

    def apply(self, request: PageRequest, token: Any) -> PageRequest:
        return PageRequest(url=str(token))


@dataclass(frozen=True)
class LinkHeaderPaginator(Paginator):
    """The RFC 8288 ``Link`` header's ``rel="next"`` URL (GitHub style).

    :param rel: the relation to follow.
    """

    rel: str = "next"

    def next(self, page: RawPage) -> Any | None:
        url = page.response.links.get(self.rel, {}).get("url")
        return str(page.response.request.url.join(url)) if url else None

    def apply(self, request: PageRequest, token: Any) -> PageRequest:
        return PageRequest(url=str(token))


@dataclass(frozen=True)
class OffsetPaginator(Paginator):
    """``limit``/``offset`` paging; stops on a short page or when ``total_at`` is reached.

    E.g. DealCloud ``OffsetPaginator(limit=1000, offset_param="skip", total_at="totalRecords")``.

    :param limit: page size to request.
    :param offset_param: query parameter of the offset.
    :param limit_param: query parameter of the page size.
    :param total_at: optional path of the total record count in the body.
    """

    limit: int
    offset_param: str = "offset"
    limit_param: str = "limit"
    total_at: RecordPath = None

    def first(self, request: PageRequest) -> PageRequest:
        return request.with_params(**{self.limit_param: self.limit, self.offset_param: 0})

    def next(self, page: RawPage) -> Any | None:
        if len(page.records) < self.limit:
            return None
        offset = int(page.response.request.url.params.get(self.offset_param, 0)) + self.limit
        total = lookup(page.body, self.total_at) if self.total_at is not None else None
        if isinstance(total, int) and offset >= total:
            return None
        return offset

    def apply(self, request: PageRequest, token: Any) -> PageRequest:
        return request.with_params(**{self.offset_param: token})


@dataclass(frozen=True)
class PageNumberPaginator(Paginator):
    """``page=1,2,3…`` paging; stops on an empty or short page.

    :param param: query parameter of the page number.
    :param start: number of the first page.
    :param page_size: page size to request (and to detect a short last page).
    :param size_param: query parameter of the page size.
    """

    param: str = "page"
    start: int = 1
    page_size: int | None = None
    size_param: str = "per_page"

    def first(self, request: PageRequest) -> PageRequest:
        params: dict[str, Any] = {self.param: self.start}
        if self.page_size is not None:
            params[self.size_param] = self.page_size
        return request.with_params(**params)

    def next(self, page: RawPage) -> Any | None:
        if not page.records or (self.page_size is not None and len(page.records) < self.page_size):
            return None
        return int(page.response.request.url.params.get(self.param, self.start)) + 1

    def apply(self, request: PageRequest, token: Any) -> PageRequest:
        return request.with_params(**{self.param: token})


Fetch = Callable[[PageRequest], Awaitable[tuple[httpx.Response, Any]]]


async def paginate(
    fetch: Fetch,
    request: PageRequest,
    *,
    paginator: Paginator | None,
    records_at: RecordPath = None,
) -> AsyncGenerator[RawPage, None]:
    """Fetch ``request`` and every following page, yielding each as a ``RawPage``.

    :param fetch: fetches one page and returns the response and decoded body
        (``Connector.fetch`` does, with retries, auth and the breaker).
    :param request: the first page's request.
    :param paginator: how to find and apply the next-page token; ``None`` for one page.
    :param records_at: where the records sit in each body.
    :raises PaginationError: a page has no record list, or a token repeats.
    """
    seen: set[Any] = set()
    if paginator is not None:
        request = paginator.first(request)
    while True:
        response, body = await fetch(request)
        records = lookup(body, records_at)
        if not isinstance(records, list):
            raise PaginationError(
                f"{describe_request(response.request)} returned a page without a record list at {records_at!r}"
            )
        page = RawPage(response=response, body=body, records=records)
        yield page
        token = paginator.next(page) if paginator is not None else None
        if token is None:
            return
        key = _hashable(token)
        if key in seen:
            raise PaginationError(
                f"{describe_request(response.request)} repeated a pagination token after {len(seen) + 1} pages"
            )
        seen.add(key)
        request = paginator.apply(request, token)  # type: ignore[union-attr]


def _hashable(token: Any) -> Any:
    try:
        hash(token)
    except TypeError:
        return repr(token)
    return token
