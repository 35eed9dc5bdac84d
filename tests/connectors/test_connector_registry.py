"""ConnectorRegistry: built-ins and entry points through one hook, isolation of broken plugins."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint
from types import SimpleNamespace

import pytest

import connectors.registry as registry_module
from connectors.fake_crm import FakeCRM
from connectors.registry import ConnectorNotFound, ConnectorRegistry, UnavailableConnector
from connectors.salesforce import SalesforceConnector
from connectors.sdk import Connector, ConnectorDescription, Kind, hookimpl


def plugin(hook) -> SimpleNamespace:
    """A plugin object whose register_connectors is ``hook``."""
    return SimpleNamespace(__name__=f"test_plugin_{id(hook)}", register_connectors=hookimpl(hook))


class Enricher(Connector):
    key = "enricher"
    title = "Enricher"
    kind = Kind.ENRICHMENT


class Unnamed(Connector):
    key = "Not A Key"
    title = "Bad"
    kind = Kind.CRM


def registers(*classes):
    def register_connectors(register):
        for cls in classes:
            register(cls)

    return plugin(register_connectors)


@pytest.fixture
def no_entry_points(monkeypatch):
    def forbidden(**kwargs):
        raise AssertionError("entry points must not be read")

    monkeypatch.setattr(registry_module, "entry_points", forbidden)


@pytest.fixture
def fake_entry_points(monkeypatch):
    points: list[EntryPoint] = []
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [ep for ep in points if ep.group == group])
    return points


def test_built_ins_are_registered_through_the_hook(no_entry_points) -> None:
    registry = ConnectorRegistry(load_entry_points=False)
    assert registry.definitions() == [SalesforceConnector]
    assert registry.unavailable() == []


def test_loading_is_lazy_and_happens_once(no_entry_points) -> None:
    calls = []
    registry = ConnectorRegistry(
        builtins=(), plugins=[plugin(lambda register: calls.append(register(Enricher)))], load_entry_points=False
    )
    assert calls == []
    registry.definitions()
    registry.get("enricher")
    registry.load()
    assert len(calls) == 1


def test_queries(no_entry_points) -> None:
    registry = ConnectorRegistry(plugins=["connectors.fake_crm", registers(Enricher)], load_entry_points=False)
    assert [cls.key for cls in registry.definitions()] == ["enricher", "fake_crm", "salesforce"]
    assert registry.definitions(kind=Kind.ENRICHMENT) == [Enricher]
    assert registry.definitions(kind="crm") == [FakeCRM, SalesforceConnector]
    assert registry.definitions(kind="document_source") == []
    description = registry.describe("salesforce")
    assert isinstance(description, ConnectorDescription) and description.auth["scheme"] == "oauth2_authorization_code"
    with pytest.raises(ConnectorNotFound) as caught:
        registry.get("hubspot")
    assert isinstance(caught.value, LookupError) and caught.value.key == "hubspot"


def test_an_import_error_makes_the_plugin_unavailable(no_entry_points, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="connectors.registry"):
        registry = ConnectorRegistry(plugins=["connectors.no_such_plugin"], load_entry_points=False)
        assert registry.get("salesforce") is SalesforceConnector
    (entry,) = registry.unavailable()
    assert entry.key == "connectors.no_such_plugin"
    assert entry.error == "ModuleNotFoundError: No module named 'connectors.no_such_plugin'"
    assert "connectors.no_such_plugin is unavailable" in caplog.text


def test_a_raising_hook_registers_nothing(no_entry_points) -> None:
    def register_connectors(register):
        register(Enricher)
        raise RuntimeError("boom")

    registry = ConnectorRegistry(plugins=[plugin(register_connectors)], load_entry_points=False)
    assert "enricher" not in [cls.key for cls in registry.definitions()]
    (entry,) = registry.unavailable()
    assert entry.error == "RuntimeError: boom"


def test_an_invalid_class_is_unavailable_and_its_siblings_are_kept(no_entry_points) -> None:
    registry = ConnectorRegistry(builtins=(), plugins=[registers(Unnamed, Enricher, object)], load_entry_points=False)
    assert registry.definitions() == [Enricher]
    errors = {entry.key: entry.error for entry in registry.unavailable()}
    assert errors["Not A Key"].startswith("InvalidConnector: Unnamed: key 'Not A Key' must match")
    assert errors["object"] == "InvalidConnector: <class 'object'> is not a Connector subclass"


def test_a_hook_with_a_typo_is_unavailable(no_entry_points) -> None:
    typo = SimpleNamespace(__name__="typo_plugin", register_conectors=hookimpl(lambda register: None))
    wrong_argument = SimpleNamespace(__name__="arg_plugin", register_connectors=hookimpl(lambda registry: None))
    registry = ConnectorRegistry(plugins=[typo, wrong_argument, registers(Enricher)], load_entry_points=False)
    assert registry.get("enricher") is Enricher
    errors = {entry.source: entry.error for entry in registry.unavailable()}
    assert errors["typo_plugin"].startswith("PluginValidationError")
    assert "register_conectors" in errors["typo_plugin"]
    assert errors["arg_plugin"].startswith("PluginValidationError")


def test_a_duplicate_key_cannot_take_over_a_built_in(no_entry_points) -> None:
    class Impostor(SalesforceConnector):
        title = "Not Salesforce"

    registry = ConnectorRegistry(plugins=[registers(Impostor)], load_entry_points=False)
    assert registry.get("salesforce") is SalesforceConnector
    (entry,) = registry.unavailable()
    assert entry.key == "salesforce" and "already provided by connectors.salesforce" in entry.error


def test_allow_and_block_lists(no_entry_points) -> None:
    allowed = ConnectorRegistry(plugins=[registers(Enricher)], allow={"enricher"}, load_entry_points=False)
    assert allowed.definitions() == [Enricher]
    assert allowed.disabled() == ["salesforce"]
    blocked = ConnectorRegistry(plugins=[registers(Enricher)], block={"enricher"}, load_entry_points=False)
    assert blocked.definitions() == [SalesforceConnector]
    with pytest.raises(ConnectorNotFound):
        blocked.get("enricher")


def test_entry_points_are_loaded_guarded(fake_entry_points) -> None:
    fake_entry_points.extend(
        [
            EntryPoint("fake_crm", "connectors.fake_crm", "hub.connectors"),
            EntryPoint("ghost", "hub_ghost_connector_that_is_not_installed", "hub.connectors"),
            EntryPoint("other_group", "connectors.no_such_module", "something.else"),
        ]
    )
    registry = ConnectorRegistry()
    assert [cls.key for cls in registry.definitions()] == ["fake_crm", "salesforce"]
    assert registry.source("fake_crm") == "fake_crm = connectors.fake_crm"
    assert registry.unavailable() == [
        UnavailableConnector(
            key="ghost = hub_ghost_connector_that_is_not_installed",
            source="ghost = hub_ghost_connector_that_is_not_installed",
            error="ModuleNotFoundError: No module named 'hub_ghost_connector_that_is_not_installed'",
        )
    ]


def test_a_blocked_entry_point_is_not_even_imported(fake_entry_points) -> None:
    fake_entry_points.append(EntryPoint("ghost", "hub_ghost_connector_that_is_not_installed", "hub.connectors"))
    registry = ConnectorRegistry(block={"ghost"})
    assert registry.unavailable() == []
    assert registry.disabled() == ["ghost"]


def test_an_entry_point_naming_a_built_in_is_not_registered_twice(fake_entry_points) -> None:
    fake_entry_points.append(EntryPoint("salesforce", "connectors.salesforce", "hub.connectors"))
    registry = ConnectorRegistry()
    assert registry.definitions() == [SalesforceConnector] and registry.unavailable() == []
