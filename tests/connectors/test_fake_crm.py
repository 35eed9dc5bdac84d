"""FakeCRM: deterministic data for hub and worker tests; it passes the conformance suite too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from connectors.registry import ConnectorRegistry
from connectors.sdk import HubHttp, ProviderUnavailable
from connectors.testing import FAKE_CRM_PLUGIN, FakeCRM, connector_test_suite, fake_deal

TestFakeCRMConformance = connector_test_suite(FakeCRM, config={"records": 7, "page_size": 3})

START = datetime(2024, 1, 1, tzinfo=UTC)


def fake(http_client: httpx.AsyncClient, **config) -> FakeCRM:
    return FakeCRM(config=config, http=HubHttp(client=http_client))


async def read_all(connector, cursor=None):
    return [page async for page in connector.read("deals", cursor=cursor)]


async def test_pages_are_deterministic(http_client) -> None:
    pages = await read_all(fake(http_client, records=25, page_size=10))
    assert [len(page.records) for page in pages] == [10, 10, 5]
    first = pages[0].records[0]
    assert first.external_id == "FAKE-00001" and first.amount == Decimal(1000) and first.updated_at == START
    assert pages[-1].cursor == START + timedelta(minutes=24)
    assert pages == await read_all(fake(http_client, records=25, page_size=10))


async def test_resuming_from_a_page_cursor_neither_loses_nor_repeats(http_client) -> None:
    connector = fake(http_client, records=25, page_size=10)
    everything = [deal.external_id for page in await read_all(connector) for deal in page.records]
    first_page = (await read_all(connector))[0]
    rest = [deal.external_id for page in await read_all(connector, first_page.cursor) for deal in page.records]
    assert [deal.external_id for deal in first_page.records] + rest == everything


async def test_a_simulated_crash_mid_sync(http_client) -> None:
    connector = fake(http_client, records=25, page_size=10, fail_on_page=2)
    seen = []
    with pytest.raises(ProviderUnavailable):
        async for page in connector.read("deals"):
            seen.append(page)
    assert len(seen) == 1


async def test_tombstones(http_client) -> None:
    pages = await read_all(fake(http_client, records=10, deleted_every=5))
    assert [deal.external_id for page in pages for deal in page.records if deal.deleted] == ["FAKE-00005", "FAKE-00010"]


async def test_push_status_action(http_client) -> None:
    connector = fake(http_client)
    result = await connector.run_action("push_status", {"external_id": "FAKE-00001", "status": "IC approved"})
    assert result.accepted and connector.pushed[0].status == "IC approved"


def test_fake_deal_is_exposed_for_expectations() -> None:
    from connectors.fake_crm import FakeCRMConfig

    assert fake_deal(FakeCRMConfig(), 2).stage == "Proposal"


def test_registered_only_when_asked() -> None:
    production = ConnectorRegistry(load_entry_points=False)
    assert "fake_crm" not in [cls.key for cls in production.definitions()]
    testing = ConnectorRegistry(load_entry_points=False, plugins=[FAKE_CRM_PLUGIN])
    assert testing.get("fake_crm") is FakeCRM


def test_the_registry_fixture_has_it(connector_registry: ConnectorRegistry) -> None:
    assert connector_registry.get("fake_crm") is FakeCRM
    assert connector_registry.get("salesforce").key == "salesforce"
