"""Salesforce connector plugin (built in, registered through the same hook as third parties)."""

from __future__ import annotations

from collections.abc import Callable

from connectors.sdk import Connector, hookimpl

from .connector import SALESFORCE_ERRORS, AmbiguousExternalId, SalesforceConfig, SalesforceConnector
from .limits import ApiUsage
from .mapping import from_deal, to_deal

__all__ = [
    "SALESFORCE_ERRORS",
    "AmbiguousExternalId",
    "ApiUsage",
    "SalesforceConfig",
    "SalesforceConnector",
    "from_deal",
    "register_connectors",
    "to_deal",
]


@hookimpl
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    """Register the Salesforce connector."""
    register(SalesforceConnector)
