"""A third-party connector package: conformance from source, discovery once pip-installed."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import respx

from connectors.registry import ConnectorRegistry
from connectors.sdk import DealRecord, HubHttp
from connectors.testing import Recorded, connector_test_suite

THIRD_PARTY = Path(__file__).resolve().parents[1] / "third_party_connector"
BASE = "https://api.acme-crm.test/v1"


def load_from_source() -> ModuleType:
    """The plugin module straight from its source tree, without installing it."""
    path = THIRD_PARTY / "acme_crm" / "__init__.py"
    spec = importlib.util.spec_from_file_location("acme_crm", path, submodule_search_locations=[str(path.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered like any import: pydantic resolves the Config annotations through it.
    sys.modules["acme_crm"] = module
    spec.loader.exec_module(module)
    return module


def build_flags() -> list[str]:
    """``--no-build-isolation`` when this environment can build the plugin itself (setuptools
    before 70.1 needs ``wheel``, which a bare Python 3.11 venv lacks); else pip's isolated build."""
    if any(importlib.util.find_spec(name) for name in ("wheel", "setuptools.command.bdist_wheel")):
        return ["--no-build-isolation"]
    return []


acme = load_from_source()

PAGE1 = {
    "data": [
        {
            "id": 1,
            "title": "Series A",
            "pipeline_stage": "diligence",
            "value": 1250000.5,
            "currency": "USD",
            "organization": {"name": "Acme Robotics"},
            "updated_at": "2024-04-01T09:00:00Z",
        },
        {
            "id": 2,
            "title": "Bridge",
            "pipeline_stage": "ic",
            "value": None,
            "currency": None,
            "organization": None,
            "updated_at": "2024-04-02T09:00:00Z",
            "archived": True,
        },
    ],
    "meta": {"next_cursor": "c2"},
}
PAGE2 = {
    "data": [
        {
            "id": 3,
            "title": "Seed",
            "pipeline_stage": "sourcing",
            "value": 500000,
            "currency": "EUR",
            "organization": {"name": "Beta"},
            "updated_at": "2024-04-03T09:00:00Z",
        }
    ],
    "meta": {"next_cursor": None},
}
RESPONSES = {
    "deals": [
        Recorded(f"{BASE}/deals", json=PAGE1),
        Recorded(f"{BASE}/deals", json=PAGE2, params={"cursor": "c2"}),
    ]
}

TestAcmeCRMConformance = connector_test_suite(acme.AcmeCRM, config={"api_key": "acme-secret-key"}, responses=RESPONSES)


async def read_deals(cls, http_client: httpx.AsyncClient) -> tuple[list[DealRecord], list[httpx.Request]]:
    config = {"api_key": "acme-secret-key"}
    connector = cls(config=config, http=HubHttp(auth=cls.http_auth(config), client=http_client))
    with respx.mock(assert_all_called=True) as router:
        router.get(f"{BASE}/deals", params={"cursor": "c2"}).respond(200, json=PAGE2)
        router.get(f"{BASE}/deals").respond(200, json=PAGE1)
        since = datetime(2024, 3, 1, tzinfo=UTC)
        deals = [deal async for page in connector.read("deals", cursor=since) for deal in page.records]
        requests = [call.request for call in router.calls]
    return deals, requests


async def test_the_plugin_reads_its_stream_from_source(http_client) -> None:
    deals, requests = await read_deals(acme.AcmeCRM, http_client)
    assert [(deal.external_id, deal.company, deal.deleted) for deal in deals] == [
        ("1", "Acme Robotics", False),
        ("2", None, True),
        ("3", "Beta", False),
    ]
    first, second = requests
    assert second.url.params["cursor"] == "c2"
    assert first.headers["Authorization"] == "Bearer acme-secret-key"
    assert first.url.params["updated_since"] == "2024-03-01T00:00:00Z"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
async def test_an_installed_plugin_is_discovered_and_a_broken_one_reported(tmp_path, monkeypatch, http_client) -> None:
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    package = tmp_path / "acme"
    shutil.copytree(THIRD_PARTY, package, ignore=shutil.ignore_patterns("broken", "build", "*.egg-info", "__pycache__"))
    broken = tmp_path / "broken"
    shutil.copytree(THIRD_PARTY / "broken", broken, ignore=ignore)
    installed = await asyncio.to_thread(
        pip, "install", "--no-deps", *build_flags(), "--quiet", str(package), str(broken)
    )
    assert installed.returncode == 0, installed.stderr
    try:
        importlib.invalidate_caches()
        monkeypatch.delitem(sys.modules, "acme_crm", raising=False)  # import the installed copy
        registry = ConnectorRegistry()  # a fresh one, reading the installed entry points
        cls = registry.get("acme_crm")
        assert registry.source("acme_crm") == "acme_crm = acme_crm"
        assert "site-packages" in (sys.modules["acme_crm"].__file__ or "")
        assert registry.get("salesforce").key == "salesforce"  # built-ins unaffected
        broken_entries = [entry for entry in registry.unavailable() if entry.source.startswith("broken_crm")]
        assert len(broken_entries) == 1
        assert broken_entries[0].error == (
            "ModuleNotFoundError: No module named 'hub_broken_connector_missing_dependency'"
        )
        deals, _ = await read_deals(cls, http_client)
        assert [deal.external_id for deal in deals] == ["1", "2", "3"]
    finally:
        removed = await asyncio.to_thread(pip, "uninstall", "--yes", "--quiet", "hub-acme-crm", "hub-broken-connector")
        importlib.invalidate_caches()
    assert removed.returncode == 0, removed.stderr
