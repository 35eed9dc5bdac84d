"""The registry API: list definitions (filter by kind and status; unavailable plugins with
their error), one definition, its actions and its schemas; and the registry the app loads
from settings (HUB_CONNECTORS / HUB_DISABLED_CONNECTORS)."""

from __future__ import annotations

import pytest

from connectors.registry import ConnectorRegistry
from connectors.sdk import hookimpl
from core.roles import Role
from core.settings import Settings
from tests.hub.test_auth import assert_problem


class _BrokenPlugin:
    """A plugin whose hook raises: it must be listed as unavailable, not crash the hub."""

    __name__ = "hub_crashing_plugin"

    @staticmethod
    @hookimpl
    def register_connectors(register):
        raise RuntimeError("boom: missing dependency acme-sdk")


async def test_list_shows_the_available_connectors(client, tenant):
    r = await client.get("/api/v1/connectors", headers=tenant.headers(Role.ANALYST))
    assert r.status_code == 200, r.text
    items = {i["key"]: i for i in r.json()["items"]}
    assert {"salesforce", "fake_crm", "keyed_crm", "token_crm"} <= set(items)
    sf = items["salesforce"]
    assert (sf["kind"], sf["status"], sf["auth_scheme"], sf["source"]) == (
        "crm", "available", "oauth2_authorization_code", "connectors.salesforce",
    )  # fmt: skip
    assert sf["streams"] == ["opportunities", "opportunities_deleted"]
    assert sf["actions"] == ["upsert_deals", "upsert_record"]
    assert items["fake_crm"]["auth_scheme"] is None


async def test_list_filters_by_kind_and_status(client, tenant):
    r = await client.get("/api/v1/connectors", params={"kind": "crm"}, headers=tenant.headers())
    assert r.json()["items"] and all(i["kind"] == "crm" for i in r.json()["items"])
    r = await client.get("/api/v1/connectors", params={"kind": "enrichment"}, headers=tenant.headers())
    assert r.json()["items"] == []
    r = await client.get("/api/v1/connectors", params={"status": "unavailable"}, headers=tenant.headers())
    assert r.json()["items"] == []
    assert_problem(await client.get("/api/v1/connectors", params={"kind": "crystal_ball"}, headers=tenant.headers()), 422, "VALIDATION_FAILED")


async def test_unavailable_plugins_are_listed_with_their_error(client, tenant, app, monkeypatch):
    registry = ConnectorRegistry(
        plugins=["connectors.fake_crm", _BrokenPlugin(), "hub_plugin_that_is_not_installed"],
        load_entry_points=False,
        block=["salesforce"],
    )
    registry.load()
    monkeypatch.setattr(app.state.hub, "connectors", registry)
    r = await client.get("/api/v1/connectors", headers=tenant.headers())
    by_status: dict[str, list[dict]] = {}
    for item in r.json()["items"]:
        by_status.setdefault(item["status"], []).append(item)
    assert [i["key"] for i in by_status["available"]] == ["fake_crm"]
    errors = {i["source"]: i["error"] for i in by_status["unavailable"]}
    assert "RuntimeError: boom: missing dependency acme-sdk" in errors.values()
    assert any("ModuleNotFoundError" in e for e in errors.values())
    assert [i["key"] for i in by_status["disabled"]] == ["salesforce"]
    r = await client.get("/api/v1/connectors", params={"status": "unavailable"}, headers=tenant.headers())
    assert len(r.json()["items"]) == 2
    assert_problem(await client.get("/api/v1/connectors/salesforce", headers=tenant.headers()), 404, "NOT_FOUND")
    # A connection of a connector that went away still reads, but cannot run.
    assert_problem(
        await client.post("/api/v1/connections", json={"connector_key": "salesforce", "name": "x"}, headers=tenant.headers()),
        422,
        "VALIDATION_FAILED",
    )


async def test_one_definition(client, tenant):
    r = await client.get("/api/v1/connectors/keyed_crm", headers=tenant.headers(Role.AUDITOR))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["key"] == "keyed_crm" and body["kind"] == "crm" and body["status"] == "available"
    assert body["auth"] == {"scheme": "api_key", "header": "Authorization", "from_field": "api_key"}
    assert body["secret_fields"] == ["api_key"]
    assert set(body["config_schema"]["properties"]) == {"api_key", "region", "base_url"}
    assert body["config_schema"]["properties"]["api_key"]["writeOnly"] is True
    assert [s["name"] for s in body["streams"]] == ["deals"]
    assert [a["name"] for a in body["actions"]] == ["create_note"]

    sf = (await client.get("/api/v1/connectors/salesforce", headers=tenant.headers())).json()
    assert sf["auth"]["pkce"] is True and sf["auth"]["scopes"] == ["api", "refresh_token"]
    assert sf["secret_fields"] == []


async def test_one_definition_has_a_strong_etag(client, tenant):
    url = "/api/v1/connectors/keyed_crm"
    first = await client.get(url, headers=tenant.headers())
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag.startswith('"') and tag.endswith('"')
    assert (await client.get(url, headers=tenant.headers())).headers["etag"] == tag
    unchanged = await client.get(url, headers=tenant.headers(**{"If-None-Match": tag}))
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == tag
    other = await client.get("/api/v1/connectors/salesforce", headers=tenant.headers(**{"If-None-Match": tag}))
    assert other.status_code == 200 and other.headers["etag"] != tag


async def test_its_actions(client, tenant):
    r = await client.get("/api/v1/connectors/fake_crm/actions", headers=tenant.headers())
    assert r.status_code == 200
    (push,) = r.json()["items"]
    assert push["name"] == "push_status"
    assert push["description"] == "Record a deal status pushed from the hub"
    assert set(push["params_schema"]["required"]) == {"external_id", "status"}
    assert push["params_schema"]["additionalProperties"] is False
    assert push["result_schema"]["title"] == "PushStatusResult"


async def test_its_schemas(client, tenant):
    r = await client.get("/api/v1/connectors/salesforce/schemas", headers=tenant.headers())
    assert r.status_code == 200
    body = r.json()
    assert body["config_schema"]["properties"]["environment"]["enum"] == ["production", "sandbox"]
    assert set(body["actions"]) == {"upsert_record", "upsert_deals"}
    assert body["actions"]["upsert_record"]["params_schema"]["required"] == ["external_id_field", "external_id", "fields"]
    assert set(body["streams"]) == {"opportunities", "opportunities_deleted"}


@pytest.mark.parametrize("path", ["", "/actions", "/schemas"])
async def test_an_unknown_connector_is_404(client, tenant, path):
    assert_problem(await client.get(f"/api/v1/connectors/nope{path}", headers=tenant.headers()), 404, "NOT_FOUND")


async def test_every_role_may_read_the_registry_but_only_with_a_credential(client, tenant):
    for role in Role:
        assert (await client.get("/api/v1/connectors", headers=tenant.headers(role))).status_code == 200
    assert_problem(await client.get("/api/v1/connectors"), 401, "UNAUTHORIZED")


def test_settings_split_the_allow_and_block_lists(monkeypatch):
    monkeypatch.setenv("HUB_CONNECTORS", "salesforce, fake_crm")
    monkeypatch.setenv("HUB_DISABLED_CONNECTORS", "fake_crm")
    settings = Settings()
    assert settings.connectors == ["salesforce", "fake_crm"]
    assert settings.disabled_connectors == ["fake_crm"]
    registry = ConnectorRegistry(
        plugins=["connectors.fake_crm"], load_entry_points=False,
        allow=settings.connectors, block=settings.disabled_connectors,
    )  # fmt: skip
    assert [c.key for c in registry.definitions()] == ["salesforce"]
    assert registry.disabled() == ["fake_crm"]
    assert Settings(connectors=None).connectors is None  # unset: everything installed
