"""The pluggy marker plugin modules decorate their hook implementations with."""

from __future__ import annotations

import pluggy

PROJECT_NAME = "hub"
"""pluggy project name shared by the hook specifications and implementations."""

ENTRY_POINT_GROUP = "hub.connectors"
"""Entry-point group a plugin distribution declares its module under."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a plugin's ``register_connectors(register)`` implementation."""
