"""The connector conformance suite: declaration, check, read, incremental, pagination and
fault-injection tests generated for one connector over its recorded responses."""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import pytest
import respx
from pydantic import BaseModel, SecretStr, ValidationError

from connectors.sdk import (
    AsyncCircuitBreaker,
    AuthError,
    Connector,
    DealRecord,
    HubHttp,
    OAuth2AuthorizationCode,
    OAuth2ClientCredentials,
    OffsetPaginator,
    Page,
    PageNumberPaginator,
    PaginationError,
    ProviderUnavailable,
    Record,
    RestResource,
    RetryPolicy,
    fetch_client_credentials_token,
    parse_cursor,
    refresh_oauth2_token,
    validate_connector,
)

from .recorded import Recorded, Replay, Responses, load_responses

CLIENT_ID = "conformance-client-id"
CLIENT_SECRET = "conformance-client-secret"
REFRESHED_TOKEN = {"access_token": "conformance-refreshed-access-token", "token_type": "Bearer"}
REFRESH_ERROR = {"error": "invalid_grant", "error_description": "expired access/refresh token"}
UNAUTHORIZED = {"error": "invalid_token"}
_SECRET_KEYS = ("token", "secret", "key", "password", "signature", "assertion")
# random() pinned to 1.0: each backoff is its ceiling, so sleeps are predictable.
RETRY = RetryPolicy(random=lambda: 1.0)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building an SSL context costs ~0.2 s; every harness client can share one.
    return httpx.create_ssl_context()


@dataclass
class Harness:
    """A connector wired to recorded responses, recording sleeps and token traffic."""

    connector: Connector
    replay: Replay | None
    router: respx.MockRouter
    sleeps: list[float] = field(default_factory=list)
    refreshes: list[dict[str, Any]] = field(default_factory=list)
    token_updates: list[dict[str, Any]] = field(default_factory=list)


async def read_all(connector: Connector, stream: str, cursor: Any = None) -> list[Page[Any]]:
    """Every page of ``stream`` from ``cursor``."""
    pages: list[Page[Any]] = []
    async with aclosing(connector.read(stream, cursor=cursor)) as iterator:
        async for page in iterator:
            pages.append(page)
    return pages


def _status(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
    def fault(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=dict(headers or {}))
        return httpx.Response(status, json=body, headers=dict(headers or {}))

    return fault


def _raise(exc_type: type[httpx.TransportError]) -> Any:
    def fault(request: httpx.Request) -> httpx.Response:
        raise exc_type("injected by the conformance suite", request=request)

    return fault


def _truncated(recorded: Recorded) -> Any:
    def fault(request: httpx.Request) -> httpx.Response:
        text = recorded.body_text()
        truncated = text[: max(1, len(text) // 2)].encode()
        return httpx.Response(200, content=truncated, headers={"Content-Type": "application/json"})

    return fault


class ConnectorConformance:
    """Base of generated suites; ``connector_test_suite`` fills the class attributes."""

    __test__ = False

    connector_cls: ClassVar[type[Connector]]
    config: ClassVar[dict[str, Any]]
    credentials: ClassVar[dict[str, Any]]
    responses: ClassVar[dict[str, list[Recorded]]]
    refreshed_token: ClassVar[dict[str, Any]]
    refresh_error: ClassVar[Any]
    unauthorized: ClassVar[Any]
    repeated_token_streams: ClassVar[Collection[str] | None]

    # -- parametrisation -------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise ``stream`` with the streams each test applies to."""
        if "stream" not in metafunc.fixturenames:
            return
        kind = metafunc.function.__name__
        if kind == "test_incremental_resume":
            names = [name for name in self._readable() if self._stream(name).cursor_field]
        elif kind == "test_repeated_token_raises":
            names = self._repeatable()
        else:
            names = self._readable()
        metafunc.parametrize("stream", names)

    def _stream(self, name: str) -> Any:
        return next(stream for stream in self.connector_cls.streams if stream.name == name)

    def _readable(self) -> list[str]:
        if not self.responses:  # a connector without HTTP (FakeCRM): read everything
            return [stream.name for stream in self.connector_cls.streams]
        return [stream.name for stream in self.connector_cls.streams if stream.name in self.responses]

    def _repeatable(self) -> list[str]:
        if self.repeated_token_streams is not None:
            return list(self.repeated_token_streams)
        names = []
        for name in self._readable():
            stream = self._stream(name)
            # Offsets and page numbers grow by construction: there is no token to repeat.
            counting = isinstance(stream, RestResource) and isinstance(
                stream.paginator, (OffsetPaginator, PageNumberPaginator)
            )
            if len(self.responses.get(name, ())) >= 2 and not counting:
                names.append(name)
        return names

    def _probe(self) -> str:
        """The stream the fault tests read: the first one with recorded responses."""
        for name in self._readable():
            if self.responses.get(name):
                return name
        pytest.skip("no recorded responses: nothing to inject faults into")

    def _secrets(self) -> list[str]:
        """Secret config fields and secret-looking credential values (tokens, keys...)."""
        config = self.connector_cls.Config.model_validate(self.config)
        values = [value.get_secret_value() for value in vars(config).values() if isinstance(value, SecretStr)]
        for token in (self.credentials, self.refreshed_token):
            values += [
                value
                for key, value in token.items()
                if isinstance(value, str) and any(part in key.lower() for part in _SECRET_KEYS)
            ]
        return [value for value in values if len(value) >= 6]

    def _assert_no_secrets(self, exc: BaseException) -> None:
        text = f"{exc} {exc!r}"
        leaked = [secret for secret in self._secrets() if secret in text]
        assert not leaked, f"error message leaks a credential: {text}"

    # -- wiring ----------------------------------------------------------------------------

    @asynccontextmanager
    async def harness(self, stream: str | None, *, refresh_ok: bool = True) -> AsyncIterator[Harness]:
        """A connector whose HTTP replays ``stream``'s recorded responses."""
        cls = self.connector_cls
        config = cls.Config.model_validate(self.config)
        async with respx.mock(assert_all_called=False) as router, httpx.AsyncClient(verify=_ssl_context()) as client:
            exchanges = self.responses.get(stream, []) if stream else []
            replay = Replay(router, exchanges) if exchanges else None
            sleeps: list[float] = []
            refreshes: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []

            async def sleep(seconds: float) -> None:
                sleeps.append(seconds)

            async def on_token_update(token: dict[str, Any]) -> None:
                updates.append(token)

            refresh = None
            spec = cls.auth_for(config)
            if isinstance(spec, (OAuth2AuthorizationCode, OAuth2ClientCredentials)):
                answer = (
                    httpx.Response(200, json=self.refreshed_token)
                    if refresh_ok
                    else httpx.Response(400, json=self.refresh_error)
                )
                router.route(method="POST", url=spec.token_url).mock(return_value=answer)

                async def refresh(token: Mapping[str, Any]) -> dict[str, Any]:
                    refreshes.append(dict(token))
                    if isinstance(spec, OAuth2ClientCredentials):
                        return await fetch_client_credentials_token(
                            client, token_url=spec.token_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
                        )
                    return await refresh_oauth2_token(
                        client, token_url=spec.token_url, token=token, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
                    )

            http = HubHttp(
                auth=cls.http_auth(config, self.credentials, refresh=refresh, on_token_update=on_token_update),
                client=client,
                retry=RETRY,
                breaker=AsyncCircuitBreaker("conformance", fail_max=RETRY.max_attempts * 3),
                sleep=sleep,
            )
            connector = cls(config=config, credentials=self.credentials, http=http)
            yield Harness(connector, replay, router, sleeps, refreshes, updates)

    # -- declaration -----------------------------------------------------------------------

    async def test_declaration_is_valid(self) -> None:
        validate_connector(self.connector_cls)
        description = self.connector_cls.describe()
        assert description.model_dump_json()
        self.connector_cls.Config.model_validate(self.config)
        declared = {stream.name for stream in self.connector_cls.streams}
        assert set(self.responses) <= declared, f"responses for undeclared streams: {set(self.responses) - declared}"

    async def test_config_forbids_unknown_fields(self) -> None:
        with pytest.raises(ValidationError):
            self.connector_cls.Config.model_validate({**self.config, "surely_not_a_config_field": 1})

    async def test_actions_declare_schemas(self) -> None:
        for declared in self.connector_cls.actions.values():
            assert issubclass(declared.params_model, BaseModel)
            assert declared.describe()["params_schema"]["type"] == "object"

    # -- reading ---------------------------------------------------------------------------

    async def test_check(self) -> None:
        first = self.connector_cls.streams[0].name if self.connector_cls.streams else None
        async with self.harness(first) as harness:
            await harness.connector.check()

    async def test_read(self, stream: str) -> None:
        async with self.harness(stream) as harness:
            pages = await read_all(harness.connector, stream)
        if self.responses:
            assert pages, f"stream {stream} yielded no page"
        incremental = self._stream(stream).cursor_field is not None
        previous = None
        for page in pages:
            for record in page.records:
                assert isinstance(record, (Record, DealRecord)), f"{type(record)} is not a Record or DealRecord"
                assert record.id, "a record without id"
            if incremental and page.cursor is not None:
                assert not isinstance(page.cursor, str) or not _looks_like_datetime(page.cursor), (
                    "cursor is a datetime string; yield a datetime (the hub stores real types)"
                )
                assert previous is None or page.cursor >= previous, "cursor went backwards"
                previous = page.cursor
        if harness.replay is not None:
            replay = harness.replay
            missed = [r.url for r, route in zip(replay.exchanges, replay.routes, strict=True) if not route.called]
            assert not missed, f"recorded pages never requested (pagination stopped early): {missed}"

    async def test_incremental_resume(self, stream: str) -> None:
        async with self.harness(stream) as harness:
            pages = await read_all(harness.connector, stream)
        cursors = [page.cursor for page in pages if page.cursor is not None]
        if not cursors:
            pytest.skip(f"stream {stream} produced no cursor from its recorded responses")
        last = cursors[-1]
        async with self.harness(stream) as harness:
            resumed = await read_all(harness.connector, stream, cursor=last)
        for page in resumed:
            if page.cursor is not None:
                assert type(page.cursor) is type(last), "cursor changed type on resume"
                assert page.cursor >= last, "resuming moved the cursor backwards"

    async def test_repeated_token_raises(self, stream: str) -> None:
        async with self.harness(stream) as harness:
            assert harness.replay is not None
            harness.replay.bodies[1] = harness.replay.bodies[0]  # page 2 answers like page 1
            with pytest.raises(PaginationError):
                await read_all(harness.connector, stream)

    # -- faults ----------------------------------------------------------------------------

    async def _read_with(self, *faults: Any, refresh_ok: bool = True) -> Harness:
        stream = self._probe()
        async with self.harness(stream, refresh_ok=refresh_ok) as harness:
            assert harness.replay is not None
            harness.replay.inject(0, *faults)
            await read_all(harness.connector, stream)
        return harness

    async def test_honours_retry_after(self) -> None:
        harness = await self._read_with(_status(429, {"error": "rate limited"}, {"Retry-After": "7"}))
        assert harness.sleeps == [7.0]

    async def test_backs_off_on_429_without_retry_after(self) -> None:
        harness = await self._read_with(_status(429, {"error": "rate limited"}))
        assert harness.sleeps == [RETRY.backoff(1)]

    async def test_survives_server_error_burst(self) -> None:
        harness = await self._read_with(_status(503), _status(502), _status(500))
        assert harness.sleeps == [RETRY.backoff(1), RETRY.backoff(2), RETRY.backoff(3)]

    async def test_persistent_outage_raises_unavailable(self) -> None:
        with pytest.raises(ProviderUnavailable) as caught:
            await self._read_with(*[_status(503)] * RETRY.max_attempts)
        self._assert_no_secrets(caught.value)

    async def test_retries_timeouts(self) -> None:
        harness = await self._read_with(_raise(httpx.ReadTimeout), _raise(httpx.ConnectError))
        assert len(harness.sleeps) == 2

    async def test_retries_truncated_page(self) -> None:
        stream = self._probe()
        harness = await self._read_with(_truncated(self.responses[stream][0]))
        assert len(harness.sleeps) == 1

    async def test_refreshes_once_on_401(self) -> None:
        if not self._uses_oauth():
            pytest.skip("not an OAuth2 connector")
        harness = await self._read_with(_status(401, self.unauthorized))
        assert len(harness.refreshes) == 1, "expected exactly one token refresh"
        assert len(harness.token_updates) == 1, "the refreshed token was not handed to the host"
        new_access = self.refreshed_token["access_token"]
        assert harness.token_updates[0]["access_token"] == new_access
        assert harness.replay is not None
        last = harness.replay.requests[-1]
        assert last.headers["Authorization"] == f"Bearer {new_access}"

    async def test_expired_refresh_token_raises_auth_error(self) -> None:
        if not self._uses_oauth():
            pytest.skip("not an OAuth2 connector")
        with pytest.raises(AuthError) as caught:
            await self._read_with(_status(401, self.unauthorized), refresh_ok=False)
        self._assert_no_secrets(caught.value)

    async def test_rejected_credentials_raise_auth_error(self) -> None:
        # OAuth2: refreshed once, rejected again; other schemes: rejected outright.
        with pytest.raises(AuthError) as caught:
            await self._read_with(_status(401, self.unauthorized), _status(401, self.unauthorized))
        self._assert_no_secrets(caught.value)

    def _uses_oauth(self) -> bool:
        config = self.connector_cls.Config.model_validate(self.config)
        return isinstance(self.connector_cls.auth_for(config), (OAuth2AuthorizationCode, OAuth2ClientCredentials))


def _looks_like_datetime(value: str) -> bool:
    return not isinstance(parse_cursor(value), str)


def connector_test_suite(
    connector_cls: type[Connector],
    *,
    config: Mapping[str, Any],
    credentials: Mapping[str, Any] | None = None,
    responses: Responses | str | os.PathLike[str] | None = None,
    refreshed_token: Mapping[str, Any] | None = None,
    refresh_error: Any = None,
    unauthorized: Any = None,
    repeated_token_streams: Collection[str] | None = None,
) -> type[ConnectorConformance]:
    """Build the conformance test class for ``connector_cls``; assign it to a ``Test*`` name.

    :param config: a valid configuration.
    :param credentials: stored credentials (an OAuth token with ``access_token``...).
    :param responses: recorded exchanges per stream name (``Recorded`` or dicts), or a
        directory of ``<stream>.json`` files; each stream's list covers one full read.
    :param refreshed_token: what the token endpoint answers to a refresh.
    :param refresh_error: the JSON body of a rejected refresh (HTTP 400).
    :param unauthorized: the JSON body of the provider's 401.
    :param repeated_token_streams: streams whose pagination can repeat a token (default:
        those with two or more recorded pages, except offset and page-number paging).
    """
    attributes = {
        "__test__": True,
        "connector_cls": connector_cls,
        "config": dict(config),
        "credentials": dict(credentials or {}),
        "responses": load_responses(responses),
        "refreshed_token": dict(refreshed_token or REFRESHED_TOKEN),
        "refresh_error": refresh_error if refresh_error is not None else REFRESH_ERROR,
        "unauthorized": unauthorized if unauthorized is not None else UNAUTHORIZED,
        "repeated_token_streams": repeated_token_streams,
    }
    return type(f"Test{connector_cls.__name__}Conformance", (ConnectorConformance,), attributes)
