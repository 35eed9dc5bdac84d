"""The Connector base class: declaration, validation, description, reading, actions."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import respx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from connectors.sdk import (
    ApiKeyAuth,
    Connector,
    CursorPaginator,
    DealRecord,
    FatalProviderError,
    HubHttp,
    InvalidConnector,
    Kind,
    Record,
    RestResource,
    Stream,
    action,
    parse_cursor,
    validate_connector,
)

BASE = "https://api.demo.test/v2"


class Company(BaseModel):
    id: int
    name: str
    updated_at: datetime


class NoteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deal_id: str
    text: str


class NoteResult(BaseModel):
    id: str


def deal_from(raw) -> DealRecord:
    return DealRecord(
        external_system="demo", external_id=str(raw["id"]), name=raw["title"], updated_at=parse_cursor(raw["modified"])
    )


class DemoCRM(Connector):
    """A demo CRM."""

    key = "demo_crm"
    title = "Demo CRM"
    kind = Kind.CRM
    base_url = BASE
    auth = ApiKeyAuth(header="X-Api-Key", from_field="api_key")

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        api_key: SecretStr
        base_url: str | None = None

    streams = (
        RestResource(
            "deals",
            "/deals",
            records_at="data",
            primary_key="id",
            cursor_field="modified",
            cursor_param="modified_since",
            paginator=CursorPaginator(token_at="next", param="cursor"),
            to_record=deal_from,
        ),
        RestResource("companies", "companies", records_at="items", cursor_field="updated_at", model=Company),
    )

    @action(description="Add a note to a deal")
    async def add_note(self, params: NoteParams) -> NoteResult:
        body = await self.request_json("POST", f"deals/{params.deal_id}/notes", json={"text": params.text})
        return NoteResult(id=body["id"])

    @action()
    async def ping(self, params: NoteParams) -> dict:
        """Answer pong.

        More text that is not the description."""
        return {"pong": params.text}


@pytest.fixture
async def demo(http_client: httpx.AsyncClient) -> DemoCRM:
    config = {"api_key": "k-secret"}
    http = HubHttp(auth=DemoCRM.http_auth(config), client=http_client)
    return DemoCRM(config=config, http=http)


async def read_all(connector: Connector, stream: str, cursor=None):
    return [page async for page in connector.read(stream, cursor=cursor)]


def test_a_valid_declaration_passes() -> None:
    validate_connector(DemoCRM)


def test_actions_are_collected_from_decorated_methods() -> None:
    assert set(DemoCRM.actions) == {"add_note", "ping"}
    assert DemoCRM.actions["add_note"].description == "Add a note to a deal"
    assert DemoCRM.actions["ping"].description == "Answer pong."
    assert DemoCRM.actions["ping"].params_model is NoteParams


def test_describe_publishes_schemas() -> None:
    description = DemoCRM.describe()
    assert description.key == "demo_crm" and description.kind is Kind.CRM
    assert description.auth == {"scheme": "api_key", "header": "X-Api-Key", "from_field": "api_key"}
    secret = description.config_schema["properties"]["api_key"]
    assert secret["format"] == "password" and secret["writeOnly"] is True
    assert description.config_schema["additionalProperties"] is False
    deals, companies = description.streams
    assert (deals.name, deals.primary_key, deals.cursor_field, deals.incremental) == ("deals", ["id"], "modified", True)
    assert companies.record_schema is not None and companies.record_schema["title"] == "Company"
    note = next(a for a in description.actions if a.name == "add_note")
    assert note.params_schema["required"] == ["deal_id", "text"]
    assert note.result_schema is not None and note.result_schema["title"] == "NoteResult"
    assert description.model_dump_json()


def test_config_is_validated_and_forbids_extras(http_client) -> None:
    with pytest.raises(ValidationError):
        DemoCRM(config={"api_key": "k", "surprise": 1}, http=HubHttp(client=http_client))


@respx.mock
async def test_incremental_read_sends_the_cursor_and_yields_typed_cursors(demo: DemoCRM) -> None:
    first = respx.get(f"{BASE}/deals", params={"cursor": "p2"}).respond(
        200, json={"data": [{"id": 3, "title": "C", "modified": "2024-03-01T00:00:00Z"}], "next": None}
    )
    start = respx.get(f"{BASE}/deals").respond(
        200,
        json={
            "data": [
                {"id": 1, "title": "A", "modified": "2024-01-01T00:00:00Z"},
                {"id": 2, "title": "B", "modified": "2024-02-01T00:00:00Z"},
            ],
            "next": "p2",
        },
    )
    since = datetime(2023, 12, 1, tzinfo=UTC)
    pages = await read_all(demo, "deals", cursor=since)
    assert [[deal.external_id for deal in page.records] for page in pages] == [["1", "2"], ["3"]]
    assert [page.cursor for page in pages] == [datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)]
    assert start.calls.last.request.url.params["modified_since"] == "2023-12-01T00:00:00Z"
    assert first.calls.last.request.url.params["modified_since"] == "2023-12-01T00:00:00Z"
    assert start.calls.last.request.headers["X-Api-Key"] == "k-secret"


@respx.mock
async def test_the_cursor_never_moves_backwards(demo: DemoCRM) -> None:
    respx.get(f"{BASE}/deals").respond(
        200, json={"data": [{"id": 1, "title": "A", "modified": "2020-01-01T00:00:00Z"}], "next": None}
    )
    since = datetime(2024, 1, 1, tzinfo=UTC)
    pages = await read_all(demo, "deals", cursor=since)
    assert pages[0].cursor == since


@respx.mock
async def test_model_validated_records(demo: DemoCRM) -> None:
    respx.get(f"{BASE}/companies").respond(
        200, json={"items": [{"id": 7, "name": "Acme", "updated_at": "2024-01-01T10:00:00+00:00", "extra": 1}]}
    )
    (page,) = await read_all(demo, "companies")
    (record,) = page.records
    assert isinstance(record, Record)
    assert record.id == "7" and record.data == {"id": 7, "name": "Acme", "updated_at": "2024-01-01T10:00:00Z"}
    assert record.updated_at == datetime(2024, 1, 1, 10, tzinfo=UTC)


@respx.mock
async def test_invalid_records_name_the_fields_not_the_values(demo: DemoCRM) -> None:
    respx.get(f"{BASE}/companies").respond(200, json={"items": [{"id": "x", "name": "SECRET-NAME"}]})
    with pytest.raises(FatalProviderError) as caught:
        await read_all(demo, "companies")
    assert "['id', 'updated_at']" in str(caught.value) and "SECRET-NAME" not in str(caught.value)


@respx.mock
async def test_check_reads_one_page_of_the_first_stream(demo: DemoCRM) -> None:
    route = respx.get(f"{BASE}/deals").respond(
        200, json={"data": [{"id": 1, "title": "A", "modified": "2024-01-01T00:00:00Z"}], "next": "more"}
    )
    await demo.check()
    assert route.call_count == 1


@respx.mock
async def test_run_action_validates_params(demo: DemoCRM) -> None:
    route = respx.post(f"{BASE}/deals/d1/notes").respond(201, json={"id": "n1"})
    result = await demo.run_action("add_note", {"deal_id": "d1", "text": "hello"})
    assert result == NoteResult(id="n1")
    assert route.calls.last.request.content == b'{"text":"hello"}'
    with pytest.raises(ValidationError):
        await demo.run_action("add_note", {"deal_id": "d1"})
    with pytest.raises(KeyError):
        await demo.run_action("nope", {})


async def test_base_url_override_and_url_joining(http_client) -> None:
    connector = DemoCRM(
        config={"api_key": "k", "base_url": "https://eu.demo.test/v2/"}, http=HubHttp(client=http_client)
    )
    assert connector.url("/deals") == "https://eu.demo.test/v2/deals"
    assert connector.url("deals") == "https://eu.demo.test/v2/deals"
    assert connector.url("https://other.test/x") == "https://other.test/x"


async def test_unknown_stream(demo: DemoCRM) -> None:
    with pytest.raises(KeyError):
        await read_all(demo, "nope")


def make(**attributes) -> type:
    namespace = {"key": "ok_key", "title": "Ok", "kind": Kind.CRM, **attributes}
    return type("Candidate", (Connector,), namespace)


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ({"key": "Bad-Key"}, "key 'Bad-Key' must match"),
        ({"title": ""}, "title must be a non-empty string"),
        ({"kind": "crm-ish"}, "kind must be one of"),
        ({"Config": type("Loose", (BaseModel,), {})}, "Config must forbid extra fields"),
        ({"Config": dict}, "Config must be a pydantic model"),
        ({"streams": (Stream("a"), Stream("a"))}, "stream names must be unique"),
        ({"streams": ("deals",)}, "streams must be Stream instances"),
        ({"auth": "api-key"}, "auth must be an auth spec"),
    ],
)
def test_invalid_declarations_are_reported(attributes: dict, problem: str) -> None:
    with pytest.raises(InvalidConnector, match=problem):
        validate_connector(make(**attributes))


def test_non_connectors_are_refused() -> None:
    with pytest.raises(InvalidConnector):
        validate_connector(object)


def test_actions_must_be_async_and_take_a_model() -> None:
    with pytest.raises(TypeError, match="async"):
        action()(lambda self, params: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pydantic model"):

        class Broken(Connector):
            @action()
            async def bad(self, params: dict) -> None: ...
