"""The ``Connector`` base class: a declaration the hub reads, instantiated per tenant connection."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict

from ._actions import Action, collect_actions
from ._auth import AuthSpec, RefreshCallback, TokenUpdateCallback
from ._errors import DEFAULT_ERRORS, ErrorTable
from ._http import HubHttp
from ._pagination import PageRequest
from ._ratelimit import RateLimit
from ._records import Kind, Page
from ._streams import Stream

_KEY = re.compile(r"^[a-z][a-z0-9_]{1,62}$")


class InvalidConnector(TypeError):
    """A class registered as a connector does not declare what the hub needs."""


class NoConfig(BaseModel):
    """The configuration of a connector that needs none."""

    model_config = ConfigDict(extra="forbid")


class StreamDescription(BaseModel):
    """A stream as the registry publishes it."""

    name: str
    description: str
    primary_key: list[str]
    cursor_field: str | None
    incremental: bool
    record_schema: dict[str, Any] | None


class ActionDescription(BaseModel):
    """An action as the registry publishes it."""

    name: str
    description: str
    params_schema: dict[str, Any]
    result_schema: dict[str, Any] | None


class ConnectorDescription(BaseModel):
    """Everything the hub publishes about a connector: identity, auth, schemas, methods."""

    key: str
    title: str
    kind: Kind
    version: str
    auth: dict[str, Any] | None
    config_schema: dict[str, Any]
    streams: list[StreamDescription]
    actions: list[ActionDescription]


class Connector:
    """Base class of every connector. Subclasses declare, the hub reads and instantiates.

    Declare as class attributes: ``key`` (``[a-z][a-z0-9_]+``), ``title``, ``kind``,
    ``auth`` (an auth spec or ``None``), ``base_url``, a nested pydantic ``Config`` with
    ``extra="forbid"`` (secrets as ``SecretStr``), ``streams``, optionally ``errors``
    (provider error codes), ``rate_limit`` and ``version``; and actions as ``@action``
    methods.

    The hub builds one instance per tenant connection::

        connector = MyConnector(config=config, credentials=token, http=hub_http)
        async for page in connector.read("deals", cursor=checkpoint):
            ...  # store page.records, then checkpoint page.cursor

    :param config: the connection's configuration (validated against ``Config``).
    :param credentials: the connection's stored token or secrets, if any.
    :param http: the ``HubHttp`` built by the host for this connection.
    """

    key: ClassVar[str]
    title: ClassVar[str]
    kind: ClassVar[Kind]
    auth: ClassVar[AuthSpec | None] = None
    base_url: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type[BaseModel]] = NoConfig
    streams: ClassVar[Sequence[Stream]] = ()
    actions: ClassVar[Mapping[str, Action]] = {}
    errors: ClassVar[ErrorTable] = DEFAULT_ERRORS
    rate_limit: ClassVar[RateLimit | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        module = sys.modules.get(cls.__module__)
        declared = collect_actions(dict(vars(cls)), vars(module) if module else None)
        cls.actions = {**cls.actions, **declared}

    def __init__(
        self,
        *,
        config: BaseModel | Mapping[str, Any],
        credentials: Mapping[str, Any] | None = None,
        http: HubHttp,
    ) -> None:
        self.config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        self.credentials: dict[str, Any] = dict(credentials or {})
        self.http = http

    # -- declaration -----------------------------------------------------------------------

    @classmethod
    def auth_for(cls, config: BaseModel) -> AuthSpec | None:
        """The auth spec for one configuration; override when URLs depend on it (e.g. a
        sandbox or custom domain). Defaults to ``auth``."""
        return cls.auth

    @classmethod
    def http_auth(
        cls,
        config: BaseModel | Mapping[str, Any],
        credentials: Mapping[str, Any] | None = None,
        *,
        refresh: RefreshCallback | None = None,
        on_token_update: TokenUpdateCallback | None = None,
    ) -> httpx.Auth | None:
        """The httpx auth for one connection, to pass to ``HubHttp(auth=...)``.

        :param refresh: host callback for OAuth2 (see ``OAuth2Auth``).
        :param on_token_update: host callback persisting refreshed tokens.
        """
        parsed = config if isinstance(config, cls.Config) else cls.Config.model_validate(config)
        spec = cls.auth_for(parsed)
        if spec is None:
            return None
        return spec.http_auth(parsed, credentials or {}, refresh=refresh, on_token_update=on_token_update)

    @classmethod
    def describe(cls) -> ConnectorDescription:
        """The connector's published description (key, kind, auth, schemas, streams, actions)."""
        auth = cls.auth
        return ConnectorDescription(
            key=cls.key,
            title=cls.title,
            kind=cls.kind,
            version=cls.version,
            auth=auth.describe() if auth is not None else None,
            config_schema=cls.Config.model_json_schema(),
            streams=[StreamDescription(**stream.describe()) for stream in cls.streams],
            actions=[ActionDescription(**action.describe()) for action in cls.actions.values()],
        )

    # -- runtime ---------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        """Base URL of API paths: the config's ``base_url`` override if it has one, else the
        class's ``base_url``. Override when it comes from credentials (Salesforce)."""
        return str(getattr(self.config, "base_url", None) or self.base_url)

    def url(self, path: str) -> str:
        """``path`` resolved against ``api_base`` (appended, like httpx's ``base_url``);
        absolute URLs are returned unchanged."""
        if httpx.URL(path).is_absolute_url:
            return path
        return self.api_base.rstrip("/") + "/" + path.lstrip("/")

    def observe_response(self, response: httpx.Response) -> None:
        """Called with every response the connector receives (e.g. to track quota headers)."""

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """``HubHttp.request`` with this connector's URL base, error table and observer."""
        return await self.http.request(
            method, self.url(path), errors=self.errors, observe=self.observe_response, **kwargs
        )

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like ``request``; returns the decoded JSON body."""
        result = await self.http.request_json(
            method, self.url(path), errors=self.errors, observe=self.observe_response, **kwargs
        )
        return result.body

    async def fetch(self, request: PageRequest) -> tuple[httpx.Response, Any]:
        """GET one page (the ``fetch`` that ``paginate`` needs)."""
        result = await self.http.request_json(
            "GET", self.url(request.url), params=request.params, errors=self.errors, observe=self.observe_response
        )
        return result.response, result.body

    def stream(self, name: str) -> Stream:
        """The declared stream called ``name``.

        :raises KeyError: no such stream.
        """
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(f"{self.key} has no stream {name!r}")

    async def read(self, stream: str, *, cursor: Any = None) -> AsyncGenerator[Page[Any], None]:
        """Yield the pages of ``stream`` from ``cursor`` on (everything if ``None``).

        Store each page's records, then checkpoint its ``cursor``: a crash between pages
        resumes without losing records.
        """
        pages = self.stream(stream).read(self, cursor)
        async with aclosing(pages):
            async for page in pages:
                yield page

    async def check(self) -> None:
        """Prove the connection works by fetching one page of the first stream.

        :raises ProviderError: the connection does not work.
        """
        if not self.streams:
            return
        async with aclosing(self.read(self.streams[0].name)) as pages:
            async for _ in pages:
                break

    async def run_action(self, name: str, params: BaseModel | Mapping[str, Any]) -> Any:
        """Validate ``params`` against the action's model and run it.

        :raises KeyError: no such action.
        :raises pydantic.ValidationError: invalid params.
        """
        try:
            declared = self.actions[name]
        except KeyError:
            raise KeyError(f"{self.key} has no action {name!r}") from None
        model = declared.params_model
        validated = params if isinstance(params, model) else model.model_validate(params)
        return await getattr(self, declared.method)(validated)


def validate_connector(cls: object) -> None:
    """Check that ``cls`` declares everything the hub needs.

    :raises InvalidConnector: with every problem found.
    """
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise InvalidConnector(f"{cls!r} is not a Connector subclass")
    problems: list[str] = []
    key = getattr(cls, "key", None)
    if not isinstance(key, str) or not _KEY.match(key):
        problems.append(f"key {key!r} must match {_KEY.pattern}")
    if not isinstance(getattr(cls, "title", None), str) or not cls.title.strip():
        problems.append("title must be a non-empty string")
    if not isinstance(getattr(cls, "kind", None), Kind):
        problems.append(f"kind must be one of {[k.value for k in Kind]}")
    config = cls.Config
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        problems.append("Config must be a pydantic model")
    elif config.model_config.get("extra") != "forbid":
        problems.append('Config must forbid extra fields (model_config = ConfigDict(extra="forbid"))')
    if cls.auth is not None and not (hasattr(cls.auth, "http_auth") and hasattr(cls.auth, "describe")):
        problems.append("auth must be an auth spec (OAuth2AuthorizationCode, ApiKeyAuth...) or None")
    names = [getattr(stream, "name", None) for stream in cls.streams]
    if not all(isinstance(stream, Stream) for stream in cls.streams):
        problems.append("streams must be Stream instances")
    elif len(set(names)) != len(names):
        problems.append(f"stream names must be unique: {names}")
    if not problems:
        try:
            cls.describe()
        except Exception as exc:  # schema generation fails on unsupported field types
            problems.append(f"describe() failed: {type(exc).__name__}: {exc}")
    if problems:
        raise InvalidConnector(f"{getattr(cls, '__qualname__', cls)}: " + "; ".join(problems))
