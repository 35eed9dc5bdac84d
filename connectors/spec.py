"""Hook specifications of the ``hub`` plugin system.

Hooks only register things; they do no I/O and stay synchronous (pluggy is). Network work
belongs in the async methods of the classes they register. The hub never calls these
hooks directly: ``connectors.registry.ConnectorRegistry`` does, one plugin at a time, so a
broken plugin is isolated.

A plugin module implements a hook with the marker from the SDK::

    from connectors.sdk import hookimpl

    @hookimpl
    def register_connectors(register):
        register(AcmeConnector)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

from connectors.sdk._plugin import PROJECT_NAME

if TYPE_CHECKING:
    from connectors.sdk import Connector

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    """Register the connector classes this plugin provides.

    Call ``register`` once per class; pass the class, not an instance: the hub instantiates
    it per tenant connection with that connection's config and credentials. An invalid
    class is reported as unavailable by the registry rather than raised here.

    :param register: host-owned callback taking a ``Connector`` subclass.

    Added in 1.0.
    """
