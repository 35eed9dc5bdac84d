"""Test kit for connector authors and for hub/worker tests; also a pytest plugin.

Installed as the ``hub_connectors`` pytest plugin (``pytest11`` entry point), so importing
this module must stay cheap and side-effect free: the heavy parts load on first use.

In a plugin's test module::

    from connectors.testing import Recorded, connector_test_suite

    TestAcme = connector_test_suite(
        AcmeConnector,
        config={"api_key": "test-key"},
        responses={"deals": [Recorded("https://api.acme.test/deals", json={...})]},
    )

which generates declaration, check, read, incremental, pagination and fault tests
(429 with and without ``Retry-After``, 401 then refresh, 5xx bursts, timeouts,
truncated pages, repeated cursors, expired refresh tokens). Tests are ``async``: run them
with pytest-asyncio.

For hub and worker tests, ``FakeCRM`` is a deterministic in-memory CRM: register it with
``ConnectorRegistry(plugins=[FAKE_CRM_PLUGIN])`` or use the ``connector_registry`` fixture.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from connectors._testkit.recorded import Recorded
    from connectors._testkit.suite import ConnectorConformance, connector_test_suite
    from connectors.fake_crm import FakeCRM, FakeCRMConfig, fake_deal
    from connectors.registry import ConnectorRegistry

FAKE_CRM_PLUGIN = "connectors.fake_crm"
"""Plugin module registering ``FakeCRM``; pass it in ``ConnectorRegistry(plugins=...)``."""

_LAZY = {
    "ConnectorConformance": "connectors._testkit.suite",
    "connector_test_suite": "connectors._testkit.suite",
    "Recorded": "connectors._testkit.recorded",
    "FakeCRM": "connectors.fake_crm",
    "FakeCRMConfig": "connectors.fake_crm",
    "fake_deal": "connectors.fake_crm",
}

__all__ = [
    "FAKE_CRM_PLUGIN",
    "ConnectorConformance",
    "FakeCRM",
    "FakeCRMConfig",
    "Recorded",
    "SleepRecorder",
    "connector_registry",
    "connector_sleeps",
    "connector_test_suite",
    "fake_deal",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


class SleepRecorder:
    """An async ``sleep`` that records the delays instead of waiting (``HubHttp(sleep=...)``)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    @property
    def total(self) -> float:
        """Seconds that would have been slept."""
        return sum(self.calls)


@pytest.fixture
def connector_sleeps() -> SleepRecorder:
    """A fresh ``SleepRecorder``."""
    return SleepRecorder()


@pytest.fixture
def connector_registry() -> ConnectorRegistry:
    """A registry with the built-in connectors and ``FakeCRM``, ignoring installed plugins."""
    from connectors.registry import ConnectorRegistry

    registry = ConnectorRegistry(plugins=[FAKE_CRM_PLUGIN], load_entry_points=False)
    registry.load()
    return registry
