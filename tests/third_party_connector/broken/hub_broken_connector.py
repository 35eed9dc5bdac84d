"""A plugin whose import fails, as one with a missing dependency would."""

import hub_broken_connector_missing_dependency  # noqa: F401

from connectors.sdk import hookimpl


@hookimpl
def register_connectors(register):
    """Never reached."""
