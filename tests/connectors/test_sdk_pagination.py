"""Paginators and the pagination loop, including the repeated-token guard."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from connectors.sdk import (
    CursorPaginator,
    HubHttp,
    LinkHeaderPaginator,
    NextUrlPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    PageRequest,
    PaginationError,
    Paginator,
    paginate,
)
from connectors.sdk._pagination import lookup

INSTANCE = "https://na1.salesforce.com"


@pytest.fixture
def fetch(http_client: httpx.AsyncClient):
    http = HubHttp(client=http_client)

    async def fetch(request: PageRequest) -> tuple[httpx.Response, Any]:
        result = await http.request_json("GET", request.url, params=request.params)
        return result.response, result.body

    return fetch


async def collect(fetch, url: str, paginator: Paginator | None, records_at: Any, params: dict | None = None):
    pages = []
    async for page in paginate(fetch, PageRequest(url, params or {}), paginator=paginator, records_at=records_at):
        pages.append(page)
    return pages


def test_lookup_paths() -> None:
    body = {"data": {"items": [1]}, "@odata.nextLink": "x"}
    assert lookup(body, "data.items") == [1]
    assert lookup(body, ("@odata.nextLink",)) == "x"
    assert lookup(body, "data.missing") is None
    assert lookup([1], None) == [1]


@respx.mock
async def test_salesforce_relative_next_records_url(fetch, sample) -> None:
    first = respx.get(f"{INSTANCE}/services/data/v62.0/query", params={"q": "SELECT Id FROM Whizbang"})
    first.respond(200, json=sample("salesforce_query_page1.json"))
    # The locator is relative to the instance host, not to the API base path.
    second = respx.get(f"{INSTANCE}/services/data/v26.0/query/01gD")
    second.respond(200, json=sample("salesforce_query_page2_last.json"))
    pages = await collect(
        fetch,
        f"{INSTANCE}/services/data/v62.0/query",
        NextUrlPaginator(url_at="nextRecordsUrl", done_at="done"),
        "records",
        {"q": "SELECT Id FROM Whizbang"},
    )
    assert [page.records[0]["Text_Label"] for page in pages] == ["First Page", "Last Page"]
    assert second.calls.last.request.url.params == httpx.QueryParams()  # the locator carries the state


@respx.mock
async def test_next_url_in_a_nested_key_with_dots(fetch) -> None:
    base = "https://graph.microsoft.com/v1.0/drives/d1/root/delta"
    respx.get(base, params={"token": "2"}).respond(200, json={"value": [{"id": "b"}], "@odata.deltaLink": "x"})
    respx.get(base).respond(200, json={"value": [{"id": "a"}], "@odata.nextLink": f"{base}?token=2"})
    pages = await collect(fetch, base, NextUrlPaginator(url_at=("@odata.nextLink",)), "value")
    assert [page.records for page in pages] == [[{"id": "a"}], [{"id": "b"}]]


@respx.mock
async def test_cursor_in_body_keeps_the_other_parameters(fetch) -> None:
    url = "https://api.affinity.co/organizations"
    second = respx.get(url, params={"page_token": "t2"}).respond(
        200, json={"organizations": [{"id": 2}], "next_page_token": None}
    )
    respx.get(url).respond(200, json={"organizations": [{"id": 1}], "next_page_token": "t2"})
    pages = await collect(
        fetch,
        url,
        CursorPaginator(token_at="next_page_token", param="page_token"),
        "organizations",
        {"term": "acme", "page_size": 1},
    )
    assert [page.records for page in pages] == [[{"id": 1}], [{"id": 2}]]
    assert dict(second.calls.last.request.url.params) == {"term": "acme", "page_size": "1", "page_token": "t2"}


@respx.mock
async def test_cursor_with_a_has_more_flag(fetch) -> None:
    url = "https://api.dropboxapi.test/list"
    respx.get(url).respond(200, json={"entries": [1], "cursor": "c1", "has_more": False})
    paginator = CursorPaginator(token_at="cursor", param="cursor", more_at="has_more")
    assert len(await collect(fetch, url, paginator, "entries")) == 1


@respx.mock
async def test_offset_paging_until_the_total(fetch) -> None:
    url = "https://acme.dealcloud.com/api/rest/v4/data/entrydata/rows/Deal"

    def rows(request: httpx.Request) -> httpx.Response:
        skip = int(request.url.params["skip"])
        return httpx.Response(
            200, json={"totalRecords": 5, "rows": [{"EntryId": i} for i in range(skip, min(skip + 2, 5))]}
        )

    route = respx.get(url).mock(side_effect=rows)
    pages = await collect(fetch, url, OffsetPaginator(limit=2, offset_param="skip", total_at="totalRecords"), "rows")
    assert [len(page.records) for page in pages] == [2, 2, 1]
    assert [call.request.url.params["skip"] for call in route.calls] == ["0", "2", "4"]


@respx.mock
async def test_offset_paging_stops_at_total_on_a_full_page(fetch) -> None:
    url = "https://acme.dealcloud.com/rows"
    respx.get(url).respond(200, json={"totalRecords": 2, "rows": [{"id": 1}, {"id": 2}]})
    pages = await collect(fetch, url, OffsetPaginator(limit=2, offset_param="skip", total_at="totalRecords"), "rows")
    assert len(pages) == 1


@respx.mock
async def test_page_numbers_until_an_empty_page(fetch) -> None:
    url = "https://api.example.test/deals"

    def page(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["page"])
        return httpx.Response(200, json=[{"id": number}] if number <= 2 else [])

    route = respx.get(url).mock(side_effect=page)
    pages = await collect(fetch, url, PageNumberPaginator(), None)
    assert [page.records for page in pages] == [[{"id": 1}], [{"id": 2}], []]
    assert route.call_count == 3


@respx.mock
async def test_page_numbers_stop_on_a_short_page(fetch) -> None:
    url = "https://api.example.test/deals"
    route = respx.get(url).respond(200, json=[{"id": 1}])
    pages = await collect(fetch, url, PageNumberPaginator(page_size=50), None)
    assert len(pages) == 1
    assert dict(route.calls.last.request.url.params) == {"page": "1", "per_page": "50"}


@respx.mock
async def test_link_header(fetch) -> None:
    url = "https://api.github.test/repos"
    respx.get(url, params={"page": "2"}).respond(200, json=[{"id": 2}])
    respx.get(url).respond(
        200, json=[{"id": 1}], headers={"Link": '</repos?page=2>; rel="next", </repos?page=9>; rel="last"'}
    )
    pages = await collect(fetch, url, LinkHeaderPaginator(), None)
    assert [page.records for page in pages] == [[{"id": 1}], [{"id": 2}]]


@pytest.mark.parametrize(
    ("paginator", "body"),
    [
        (
            NextUrlPaginator(url_at="nextRecordsUrl", done_at="done"),
            {"done": False, "nextRecordsUrl": "/services/data/v62.0/query/01g-500", "records": [{"Id": 1}]},
        ),
        (
            CursorPaginator(token_at="next_page_token", param="page_token"),
            {"next_page_token": "same", "records": [{"Id": 1}]},
        ),
    ],
)
@respx.mock
async def test_a_repeated_token_raises_instead_of_looping(fetch, paginator: Paginator, body: dict) -> None:
    route = respx.get(url__startswith=INSTANCE).respond(200, json=body)
    with pytest.raises(PaginationError, match="repeated a pagination token"):
        await collect(fetch, f"{INSTANCE}/services/data/v62.0/query", paginator, "records")
    assert route.call_count == 2  # the first page and the page its token named, which repeats it


@respx.mock
async def test_a_page_without_a_record_list_is_a_pagination_error(fetch) -> None:
    respx.get(f"{INSTANCE}/x").respond(200, json={"done": True})
    with pytest.raises(PaginationError, match="without a record list at 'records'"):
        await collect(fetch, f"{INSTANCE}/x", None, "records")
