"""``ConnectorRegistry``: discovers connector plugins and is the only caller of their hooks.

Built-in connectors (``DEFAULT_CONNECTORS``) register through the same hook as third-party
plugins found under the ``hub.connectors`` entry-point group. Loading happens once, on
first use or an explicit ``load()`` at app or worker start-up, never at import. Each plugin
is loaded, validated and called in isolation: an import error, a hook that raises or an
invalid class makes that plugin *unavailable* (with its error, and a logged warning); the
hub keeps running with the others.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from connectors import spec
from connectors.sdk import Connector, ConnectorDescription, Kind, validate_connector
from connectors.sdk._plugin import ENTRY_POINT_GROUP, PROJECT_NAME

logger = logging.getLogger(__name__)

DEFAULT_CONNECTORS: tuple[str, ...] = ("connectors.salesforce",)
"""Modules of the built-in connector plugins, registered before any entry point."""


class ConnectorNotFound(LookupError):
    """No available connector has this key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no available connector {key!r}")
        self.key = key


@dataclass(frozen=True)
class UnavailableConnector:
    """A plugin or connector that could not be loaded.

    :param key: the connector key if known, else the plugin's name.
    :param source: the plugin (module path or entry point) it came from.
    :param error: what went wrong, as ``ExceptionType: message``.
    """

    key: str
    source: str
    error: str


class ConnectorRegistry:
    """The connectors this hub process can use.

    :param builtins: modules of built-in plugins (``DEFAULT_CONNECTORS``).
    :param plugins: extra plugins, as module paths or plugin objects (e.g. tests adding
        ``connectors.testing.FAKE_CRM_PLUGIN``).
    :param load_entry_points: discover installed ``hub.connectors`` entry points; tests
        pass ``False`` so whatever is installed cannot leak in.
    :param allow: connector keys to enable (``HUB_CONNECTORS``); ``None`` enables all.
    :param block: connector keys to disable (``HUB_DISABLED_CONNECTORS``); an entry point
        whose name is blocked is not even imported.
    """

    def __init__(
        self,
        *,
        builtins: Sequence[str] = DEFAULT_CONNECTORS,
        plugins: Sequence[str | object] = (),
        load_entry_points: bool = True,
        allow: Collection[str] | None = None,
        block: Collection[str] = (),
    ) -> None:
        self._builtins = tuple(builtins)
        self._plugins = tuple(plugins)
        self._load_entry_points = load_entry_points
        self._allow = frozenset(allow) if allow is not None else None
        self._block = frozenset(block)
        self._lock = threading.Lock()
        self._loaded = False
        self._connectors: dict[str, type[Connector]] = {}
        self._sources: dict[str, str] = {}
        self._unavailable: list[UnavailableConnector] = []
        self._disabled: set[str] = set()

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Discover and register every plugin, once; later calls do nothing."""
        with self._lock:
            if self._loaded:
                return
            manager = pluggy.PluginManager(PROJECT_NAME)
            manager.add_hookspecs(spec)
            for path in self._builtins:
                self._add_plugin(manager, path, functools.partial(importlib.import_module, path))
            for plugin in self._plugins:
                if isinstance(plugin, str):
                    self._add_plugin(manager, plugin, functools.partial(importlib.import_module, plugin))
                else:
                    self._add_plugin(manager, _name_of(plugin), functools.partial(_identity, plugin))
            if self._load_entry_points:
                for entry_point in entry_points(group=ENTRY_POINT_GROUP):
                    if entry_point.name in self._block:
                        self._disabled.add(entry_point.name)
                        continue
                    self._add_plugin(manager, f"{entry_point.name} = {entry_point.value}", entry_point.load)
            for impl in manager.hook.register_connectors.get_hookimpls():
                self._call_plugin(impl.plugin_name, impl.function, impl.argnames)
            self._loaded = True

    def _add_plugin(self, manager: pluggy.PluginManager, source: str, load: Callable[[], object]) -> None:
        plugin: object = None
        try:
            plugin = load()
            if manager.is_registered(plugin):
                return  # e.g. an entry point naming a built-in module
            manager.register(plugin, name=source)
            # Raises for hooks no spec knows (a typo); only this plugin can be the cause.
            manager.check_pending()
        except Exception as exc:
            if plugin is not None and manager.is_registered(plugin):
                manager.unregister(plugin)
            self._fail(source, source, exc)

    def _call_plugin(self, source: str, hook: Callable[..., Any], argnames: Sequence[str]) -> None:
        registered: list[object] = []
        try:
            hook(**{name: registered.append for name in argnames if name == "register"})
        except Exception as exc:
            # All or nothing per plugin: half a registration is harder to reason about.
            self._fail(source, source, exc)
            return
        for cls in registered:
            self._register(source, cls)

    def _register(self, source: str, cls: object) -> None:
        key = str(getattr(cls, "key", None) or getattr(cls, "__qualname__", repr(cls)))
        try:
            validate_connector(cls)
        except TypeError as exc:
            self._fail(key, source, exc)
            return
        assert isinstance(cls, type) and issubclass(cls, Connector)
        if key in self._block or (self._allow is not None and key not in self._allow):
            self._disabled.add(key)
            return
        if key in self._connectors:
            self._fail(key, source, ValueError(f"key {key!r} is already provided by {self._sources[key]}"))
            return
        self._connectors[key] = cls
        self._sources[key] = source

    def _fail(self, key: str, source: str, exc: BaseException) -> None:
        logger.warning("connector plugin %s is unavailable: %s", source, exc, exc_info=exc)
        self._unavailable.append(UnavailableConnector(key=key, source=source, error=f"{type(exc).__name__}: {exc}"))

    # -- queries ---------------------------------------------------------------------------

    def definitions(self, kind: Kind | str | None = None) -> list[type[Connector]]:
        """The available connector classes, sorted by key, optionally of one ``kind``."""
        self.load()
        wanted = Kind(kind) if kind is not None else None
        return [cls for key, cls in sorted(self._connectors.items()) if wanted is None or cls.kind is wanted]

    def get(self, key: str) -> type[Connector]:
        """The available connector class ``key``.

        :raises ConnectorNotFound: unknown, disabled or unavailable.
        """
        self.load()
        try:
            return self._connectors[key]
        except KeyError:
            raise ConnectorNotFound(key) from None

    def describe(self, key: str) -> ConnectorDescription:
        """The published description of connector ``key`` (auth, schemas, streams, actions).

        :raises ConnectorNotFound: unknown, disabled or unavailable.
        """
        return self.get(key).describe()

    def unavailable(self) -> list[UnavailableConnector]:
        """Plugins and connectors that failed to load, with their errors."""
        self.load()
        return list(self._unavailable)

    def disabled(self) -> list[str]:
        """Connector keys (and entry-point names) turned off by the allow or block list."""
        self.load()
        return sorted(self._disabled)

    def source(self, key: str) -> str:
        """The plugin that registered connector ``key``.

        :raises ConnectorNotFound: unknown, disabled or unavailable.
        """
        self.get(key)
        return self._sources[key]


def _identity(plugin: object) -> object:
    return plugin


def _name_of(plugin: object) -> str:
    return str(getattr(plugin, "__name__", None) or type(plugin).__qualname__)
