"""Salesforce: the conformance suite on the real samples, and its own behaviours."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from connectors.registry import DEFAULT_CONNECTORS, ConnectorRegistry
from connectors.salesforce import AmbiguousExternalId, ApiUsage, SalesforceConnector
from connectors.sdk import (
    AuthError,
    ConfigError,
    DealRecord,
    FatalProviderError,
    HubHttp,
    OAuth2AuthorizationCode,
    RateLimited,
    refresh_oauth2_token,
)
from connectors.testing import Recorded, SleepRecorder, connector_test_suite

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "provider-samples"


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


INSTANCE = sample("salesforce_oauth_token_success.json")["instance_url"]  # https://na1.salesforce.com
API = f"{INSTANCE}/services/data/v62.0"
TOKEN = {**sample("salesforce_oauth_token_success.json"), "refresh_token": "5Aep861TSESvWeug_xvFHRBTTbf_REFRESH"}
REFRESHED = {**sample("salesforce_oauth_token_success.json"), "access_token": "00Dx0000000BV7z!AR8AQ.REFRESHED"}
TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"


def opportunity(number: int, modstamp: str) -> dict[str, Any]:
    """An Opportunity row in the shape a SOQL query returns (attributes + fields)."""
    record_id = f"006x00000{number:04d}AAA"
    return {
        "attributes": {"type": "Opportunity", "url": f"/services/data/v62.0/sobjects/Opportunity/{record_id}"},
        "Id": record_id,
        "Name": f"Deal {number}",
        "StageName": "Prospecting",
        "Amount": 1000.0 * number,
        "CloseDate": "2024-06-30",
        "Probability": 10.0,
        "Type": None,
        "IsClosed": False,
        "IsWon": False,
        "AccountId": "001x000000XyZaBAAV",
        "Account": {
            "attributes": {"type": "Account", "url": "/services/data/v62.0/sobjects/Account/001x"},
            "Name": "Acme",
        },
        "OwnerId": "005x000000OwNeRAAF",
        "Owner": {"attributes": {"type": "User", "url": "/services/data/v62.0/sobjects/User/005x"}, "Name": "Jane Doe"},
        "LastModifiedDate": modstamp,
        "SystemModstamp": modstamp,
    }


# The real envelopes (totalSize/done/nextRecordsUrl), carrying Opportunity rows.
PAGE1 = {
    **sample("salesforce_query_page1.json"),
    "records": [opportunity(1, "2024-05-01T10:00:00.000+0000"), opportunity(2, "2024-05-01T10:05:00.000+0000")],
}
PAGE2 = {**sample("salesforce_query_page2_last.json"), "records": [opportunity(3, "2024-05-02T08:00:00.000+0000")]}
NEXT_URL = INSTANCE + PAGE1["nextRecordsUrl"]  # relative locator: /services/data/v26.0/query/01gD

RESPONSES = {
    "opportunities": [
        Recorded(f"{API}/query", json=PAGE1, headers={"Sforce-Limit-Info": "api-usage=18/5000"}),
        Recorded(NEXT_URL, json=PAGE2, headers={"Sforce-Limit-Info": "api-usage=19/5000; per-app-api-usage=2/250"}),
    ],
    "opportunities_deleted": [
        Recorded(f"{API}/sobjects/Opportunity/deleted/", json=sample("salesforce_get_deleted.json")),
    ],
}

TestSalesforceConformance = connector_test_suite(
    SalesforceConnector,
    config={},
    credentials=TOKEN,
    responses=RESPONSES,
    refreshed_token=REFRESHED,
    refresh_error=sample("salesforce_oauth_refresh_invalid_grant.json"),
    unauthorized=sample("salesforce_error_invalid_session.json"),
)

NOW = datetime(2024, 5, 10, 12, 0, 0, tzinfo=UTC)


class PinnedSalesforce(SalesforceConnector):
    def now(self) -> datetime:
        return NOW


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def connect(http_client: httpx.AsyncClient, sleeps: SleepRecorder):
    updates: list[dict] = []

    def connect(config: dict | None = None, credentials: dict | None = None) -> PinnedSalesforce:
        config = config or {}
        credentials = TOKEN if credentials is None else credentials

        async def refresh(token):
            return await refresh_oauth2_token(http_client, token_url=TOKEN_URL, token=token, client_id="cid")

        async def on_token_update(token):
            updates.append(token)

        auth = SalesforceConnector.http_auth(config, credentials, refresh=refresh, on_token_update=on_token_update)
        http = HubHttp(auth=auth, client=http_client, sleep=sleeps)
        return PinnedSalesforce(config=config, credentials=credentials, http=http)

    connect.updates = updates  # type: ignore[attr-defined]
    return connect


async def read_all(connector, stream: str, cursor=None):
    return [page async for page in connector.read(stream, cursor=cursor)]


def test_is_a_built_in_registered_through_the_hook() -> None:
    assert "connectors.salesforce" in DEFAULT_CONNECTORS
    registry = ConnectorRegistry(load_entry_points=False)
    assert registry.get("salesforce") is SalesforceConnector
    assert registry.source("salesforce") == "connectors.salesforce"


@respx.mock
async def test_reads_opportunities_following_next_records_url(connect) -> None:
    first = respx.get(f"{API}/query").respond(200, json=PAGE1, headers={"Sforce-Limit-Info": "api-usage=18/5000"})
    second = respx.get(NEXT_URL).respond(200, json=PAGE2, headers={"Sforce-Limit-Info": "api-usage=19/5000"})
    connector = connect()
    pages = await read_all(connector, "opportunities")
    assert first.calls.last.request.url.params["q"] == (
        "SELECT Id, Name, StageName, Amount, CloseDate, Probability, Type, IsClosed, IsWon, AccountId, "
        "Account.Name, OwnerId, Owner.Name, LastModifiedDate, SystemModstamp FROM Opportunity "
        "ORDER BY SystemModstamp ASC"
    )
    assert second.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN['access_token']}"
    deals = [deal for page in pages for deal in page.records]
    assert [deal.name for deal in deals] == ["Deal 1", "Deal 2", "Deal 3"]
    assert all(isinstance(deal, DealRecord) and deal.company == "Acme" for deal in deals)
    assert [page.cursor for page in pages] == [
        datetime(2024, 5, 1, 10, 5, tzinfo=UTC),
        datetime(2024, 5, 2, 8, 0, tzinfo=UTC),
    ]
    assert connector.api_usage == ApiUsage(used=19, max=5000)
    assert connector.api_usage.remaining == 4981


@respx.mock
async def test_incremental_query_starts_at_the_cursor(connect) -> None:
    route = respx.get(f"{API}/query").respond(200, json={**PAGE2, "records": []})
    pages = await read_all(connect(), "opportunities", cursor=datetime(2024, 5, 1, 12, 30, 15, 900000, tzinfo=UTC))
    soql = route.calls.last.request.url.params["q"]
    # Truncated to the second and inclusive: a record is re-read at worst, never skipped.
    assert "FROM Opportunity WHERE SystemModstamp >= 2024-05-01T12:30:15Z ORDER BY SystemModstamp ASC" in soql
    assert pages[0].cursor == datetime(2024, 5, 1, 12, 30, 15, 900000, tzinfo=UTC)


@respx.mock
async def test_configured_fields(connect) -> None:
    route = respx.get(f"{API}/query").respond(200, json={**PAGE2, "records": []})
    await read_all(
        connect({"multi_currency": True, "extra_fields": ["Hub_Score__c", "Account.Industry"]}), "opportunities"
    )
    assert (
        "SystemModstamp, CurrencyIsoCode, Hub_Score__c, Account.Industry FROM"
        in route.calls.last.request.url.params["q"]
    )


def test_extra_fields_cannot_inject_soql() -> None:
    with pytest.raises(ValueError):
        SalesforceConnector.Config.model_validate({"extra_fields": ["Name FROM User --"]})


@respx.mock
async def test_deleted_opportunities_are_tombstones(connect) -> None:
    route = respx.get(f"{API}/sobjects/Opportunity/deleted/").respond(200, json=sample("salesforce_get_deleted.json"))
    cursor = datetime(2024, 5, 9, tzinfo=UTC)
    (page,) = await read_all(connect(), "opportunities_deleted", cursor=cursor)
    assert dict(route.calls.last.request.url.params) == {
        "start": "2024-05-09T00:00:00+00:00",
        "end": "2024-05-10T12:00:00+00:00",
    }
    (tombstone,) = page.records
    assert tombstone == DealRecord(
        external_system="salesforce",
        external_id="a00D0000008pQRAIA2",
        deleted=True,
        updated_at=datetime(2013, 5, 7, 22, 7, 19, tzinfo=UTC),
    )
    assert page.cursor == datetime(2013, 5, 8, 21, 20, tzinfo=UTC)


@respx.mock
async def test_deleted_window_is_clamped_to_thirty_days(connect) -> None:
    route = respx.get(f"{API}/sobjects/Opportunity/deleted/").respond(200, json=sample("salesforce_get_deleted.json"))
    await read_all(connect(), "opportunities_deleted", cursor=datetime(2020, 1, 1, tzinfo=UTC))
    start = datetime.fromisoformat(route.calls.last.request.url.params["start"])
    assert NOW - timedelta(days=30) < start < NOW - timedelta(days=29)


async def test_deleted_with_a_fresh_cursor_asks_nothing(connect) -> None:
    cursor = NOW - timedelta(seconds=20)
    with respx.mock:  # any request would fail: none is mocked
        (page,) = await read_all(connect(), "opportunities_deleted", cursor=cursor)
    assert page.records == [] and page.cursor == cursor


UPSERT_URL = f"{API}/sobjects/Opportunity/Hub_Deal_Id__c/D%2F42"
UPSERT = {
    "external_id_field": "Hub_Deal_Id__c",
    "external_id": "D/42",
    "fields": {"Name": "Acme", "Id": "006x", "hub_deal_id__c": "D/42", "StageName": "Prospecting"},
}


@respx.mock
async def test_upsert_creates(connect) -> None:
    route = respx.patch(UPSERT_URL).respond(201, json=sample("salesforce_upsert_created.json"))
    result = await connect().run_action("upsert_record", UPSERT)
    assert (result.id, result.created) == ("00190000001pPvHAAU", True)
    # Neither Id nor the external id field may be in the body.
    assert json.loads(route.calls.last.request.content) == {"Name": "Acme", "StageName": "Prospecting"}


@pytest.mark.parametrize(
    ("status", "body", "expected_id"),
    [
        (200, {"id": "006x000000AbCdE", "success": True, "errors": [], "created": False}, "006x000000AbCdE"),
        (204, None, None),
    ],
)
@respx.mock
async def test_upsert_updates(connect, status: int, body: Any, expected_id: str | None) -> None:
    respx.patch(UPSERT_URL).respond(status, json=body) if body else respx.patch(UPSERT_URL).respond(status)
    result = await connect().run_action("upsert_record", UPSERT)
    assert (result.id, result.created) == (expected_id, False)


@respx.mock
async def test_upsert_with_an_ambiguous_external_id(connect) -> None:
    respx.patch(UPSERT_URL).respond(300, json=sample("salesforce_upsert_300_multiple_matches.json"))
    with pytest.raises(AmbiguousExternalId, match="Hub_Deal_Id__c='D/42' matches 2 Opportunity records"):
        await connect().run_action("upsert_record", UPSERT)


@respx.mock
async def test_upsert_by_an_unknown_field_is_a_config_error(connect) -> None:
    respx.patch(UPSERT_URL).respond(404, json=sample("salesforce_error_upsert_extid_not_found.json"))
    with pytest.raises(ConfigError, match="Provided external ID field does not exist or is not accessible: Namez"):
        await connect().run_action("upsert_record", UPSERT)


@respx.mock
async def test_upsert_with_an_invalid_field_is_a_config_error(connect) -> None:
    respx.patch(UPSERT_URL).respond(400, json=sample("salesforce_error_invalid_field.json"))
    with pytest.raises(ConfigError) as caught:
        await connect().run_action("upsert_record", UPSERT)
    assert caught.value.code == "INVALID_FIELD"


def deals(count: int) -> list[dict]:
    return [
        DealRecord(
            external_system="hub",
            external_id=f"D-{n}",
            name=f"Deal {n}",
            stage="Prospecting",
            close_date="2024-09-30",
            amount="1250.50",
        ).model_dump(mode="json")
        for n in range(count)
    ]


@respx.mock
async def test_collection_upsert_checks_each_item(connect) -> None:
    route = respx.patch(f"{API}/composite/sobjects/Opportunity/Hub_Deal_Id__c").respond(
        200,
        json=[
            {"id": "006A", "success": True, "errors": [], "created": True},
            {"id": "006B", "success": True, "errors": [], "created": False},
            {
                "success": False,
                "created": False,
                "errors": [
                    {
                        "statusCode": "REQUIRED_FIELD_MISSING",
                        "message": "Required fields are missing: [CloseDate]",
                        "fields": ["CloseDate"],
                    }
                ],
            },
        ],
    )
    result = await connect().run_action("upsert_deals", {"external_id_field": "Hub_Deal_Id__c", "deals": deals(3)})
    assert (result.created, result.updated, result.failed) == (1, 1, 1)
    assert result.results[2].external_id == "D-2"
    assert result.results[2].errors[0].code == "REQUIRED_FIELD_MISSING"
    body = json.loads(route.calls.last.request.content)
    assert body["allOrNone"] is False
    assert body["records"][0] == {
        "attributes": {"type": "Opportunity"},
        "Name": "Deal 0",
        "StageName": "Prospecting",
        "Amount": 1250.5,
        "CloseDate": "2024-09-30",
        "Hub_Deal_Id__c": "D-0",
    }


@respx.mock
async def test_collection_upsert_with_a_short_answer_is_fatal(connect) -> None:
    respx.patch(f"{API}/composite/sobjects/Opportunity/Hub_Deal_Id__c").respond(200, json=[])
    with pytest.raises(FatalProviderError, match="returned 0 results for 2 records"):
        await connect().run_action("upsert_deals", {"external_id_field": "Hub_Deal_Id__c", "deals": deals(2)})


async def test_collection_upsert_takes_at_most_200(connect) -> None:
    with pytest.raises(ValueError):
        await connect().run_action("upsert_deals", {"external_id_field": "Hub_Deal_Id__c", "deals": deals(201)})


@respx.mock
async def test_request_limit_exceeded_is_deferred_not_retried(connect, sleeps: SleepRecorder) -> None:
    route = respx.get(f"{API}/query").respond(
        403,
        json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
        headers={"Sforce-Limit-Info": "api-usage=5000/5000"},
    )
    connector = connect()
    with pytest.raises(RateLimited) as caught:
        await read_all(connector, "opportunities")
    assert caught.value.retry_after == 900.0 and caught.value.code == "REQUEST_LIMIT_EXCEEDED"
    assert route.call_count == 1 and sleeps.calls == []
    assert connector.api_usage == ApiUsage(5000, 5000)


@respx.mock
async def test_an_invalid_query_field_is_a_config_error(connect) -> None:
    respx.get(f"{API}/query").respond(400, json=sample("salesforce_error_invalid_field.json"))
    with pytest.raises(ConfigError, match="No such column 'foo' on sobject of type Bar"):
        await read_all(connect({"extra_fields": ["foo"]}), "opportunities")


@respx.mock
async def test_session_expiry_refreshes_and_follows_a_new_instance_url(connect) -> None:
    moved = {**REFRESHED, "instance_url": "https://na2.salesforce.com"}
    token_route = respx.post(TOKEN_URL).respond(200, json=moved)
    old = respx.patch(UPSERT_URL)
    old.side_effect = [
        httpx.Response(401, json=sample("salesforce_error_invalid_session.json")),
        httpx.Response(204),
    ]
    new = respx.patch(UPSERT_URL.replace(INSTANCE, "https://na2.salesforce.com")).respond(204)
    connector = connect()
    await connector.run_action("upsert_record", UPSERT)
    await connector.run_action("upsert_record", UPSERT)
    assert token_route.call_count == 1 and old.call_count == 2 and new.call_count == 1
    assert connect.updates[0]["instance_url"] == "https://na2.salesforce.com"
    assert connect.updates[0]["refresh_token"] == TOKEN["refresh_token"]


async def test_without_instance_url_the_connection_is_not_authorized(connect) -> None:
    connector = connect(credentials={"access_token": "x"})
    with pytest.raises(AuthError, match="instance_url"):
        connector.url("query")


@pytest.mark.parametrize(
    ("config", "host"),
    [
        ({}, "login.salesforce.com"),
        ({"environment": "sandbox"}, "test.salesforce.com"),
        (
            {"environment": "sandbox", "my_domain": "acme--uat.sandbox.my.salesforce.com"},
            "acme--uat.sandbox.my.salesforce.com",
        ),
    ],
)
def test_login_host_follows_the_config(config: dict, host: str) -> None:
    spec = SalesforceConnector.auth_for(SalesforceConnector.Config.model_validate(config))
    assert isinstance(spec, OAuth2AuthorizationCode)
    assert spec.authorize_url == f"https://{host}/services/oauth2/authorize"
    assert spec.token_url == f"https://{host}/services/oauth2/token"
    assert spec.scopes == ("api", "refresh_token") and spec.pkce


def test_my_domain_must_be_a_salesforce_host() -> None:
    with pytest.raises(ValueError):
        SalesforceConnector.Config.model_validate({"my_domain": "evil.example.com"})
