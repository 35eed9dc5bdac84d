"""Auth schemes a connector declares, and the httpx auth flows that apply them.

A connector declares *what* it needs (``OAuth2AuthorizationCode``, ``ApiKeyAuth``...);
the host owns the OAuth client registration, runs the authorization flow, stores tokens
and supplies two callbacks to ``OAuth2Auth``:

- ``refresh(token) -> new token fields``: called at most once per expired token, under a
  lock, when the provider answers 401 (or the token's ``expires_at`` has passed);
- ``on_token_update(token)``: called with the merged token after every refresh, so the
  host can persist rotated tokens (encrypted) before they are lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx
from pydantic import BaseModel, SecretStr

from ._errors import AuthError, ProviderUnavailable

Token = Mapping[str, Any]
RefreshCallback = Callable[[Token], Awaitable[Token]]
TokenUpdateCallback = Callable[[dict[str, Any]], Awaitable[None]]


class AuthSpec(Protocol):
    """What every auth declaration provides."""

    scheme: ClassVar[str]

    def http_auth(
        self,
        config: BaseModel,
        credentials: Token,
        *,
        refresh: RefreshCallback | None = None,
        on_token_update: TokenUpdateCallback | None = None,
    ) -> httpx.Auth:
        """The httpx auth applying this scheme for one connection."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able description of the scheme (no secrets)."""
        ...


@dataclass(frozen=True)
class OAuth2AuthorizationCode:
    """OAuth 2.0 authorization-code flow (the host runs it, with PKCE by default).

    :param authorize_url: where the admin's browser is sent.
    :param token_url: where codes and refresh tokens are exchanged.
    :param scopes: scopes to request.
    :param pkce: whether to send an S256 code challenge.
    :param authorize_params: extra query parameters for the authorize URL.
    """

    scheme: ClassVar[str] = "oauth2_authorization_code"
    authorize_url: str
    token_url: str
    scopes: Sequence[str] = ()
    pkce: bool = True
    authorize_params: Mapping[str, str] = field(default_factory=dict)

    def http_auth(
        self,
        config: BaseModel,
        credentials: Token,
        *,
        refresh: RefreshCallback | None = None,
        on_token_update: TokenUpdateCallback | None = None,
    ) -> httpx.Auth:
        """A bearer-token flow over the stored token ``credentials``."""
        return OAuth2Auth(credentials, refresh=refresh, on_token_update=on_token_update)

    def describe(self) -> dict[str, Any]:
        """Scheme, URLs, scopes and PKCE flag."""
        return {
            "scheme": self.scheme,
            "authorize_url": self.authorize_url,
            "token_url": self.token_url,
            "scopes": list(self.scopes),
            "pkce": self.pkce,
        }


@dataclass(frozen=True)
class OAuth2ClientCredentials:
    """OAuth 2.0 client-credentials flow: the host mints tokens from a client id and secret.

    :param token_url: the token endpoint.
    :param scopes: scopes to request.
    """

    scheme: ClassVar[str] = "oauth2_client_credentials"
    token_url: str
    scopes: Sequence[str] = ()

    def http_auth(
        self,
        config: BaseModel,
        credentials: Token,
        *,
        refresh: RefreshCallback | None = None,
        on_token_update: TokenUpdateCallback | None = None,
    ) -> httpx.Auth:
        """A bearer-token flow; with no stored token yet, ``refresh`` mints the first one."""
        return OAuth2Auth(credentials, refresh=refresh, on_token_update=on_token_update)

    def describe(self) -> dict[str, Any]:
        """Scheme, token URL and scopes."""
        return {"scheme": self.scheme, "token_url": self.token_url, "scopes": list(self.scopes)}


@dataclass(frozen=True)
class ApiKeyAuth:
    """An API key sent in a header.

    :param header: header name, e.g. ``X-API-Key`` or ``Authorization``.
    :param from_field: the config field (or credentials key) holding the key.
    :param prefix: text before the key, e.g. ``"Bearer "``.
    """

    scheme: ClassVar[str] = "api_key"
    header: str
    from_field: str
    prefix: str = ""

    def http_auth(
        self,
        config: BaseModel,
        credentials: Token,
        *,
        refresh: RefreshCallback | None = None,
        on_token_update: TokenUpdateCallback | None = None,
    ) -> httpx.Auth:
        """Sets the header on every request."""
        return _HeaderAuth(self.header, self.prefix + _secret(config, credentials, self.from_field))

    def describe(self) -> dict[str, Any]:
        """Scheme, header and field name."""
        return {"scheme": self.scheme, "header": self.header, "from_field": self.from_field}


@dataclass(frozen=True)
class BasicAuth:
    """HTTP Basic auth from two config fields (or credentials keys).

    :param password_field: field holding the password (or API key).
    :param username_field: field holding the user name; ``None`` sends an empty user name
        (Affinity's API key convention).
    """

    scheme: ClassVar[str] = "basic"
    password_field: str
    username_field: str | None = None

    def http_auth(
        self,
        config: BaseModel,
        credentials: Token,
        *,
        refresh: RefreshCallback | None = None,
        on_token_update: TokenUpdateCallback | None = None,
    ) -> httpx.Auth:
        """httpx's Basic auth with the configured user name and password."""
        username = _secret(config, credentials, self.username_field) if self.username_field else ""
        return httpx.BasicAuth(username, _secret(config, credentials, self.password_field))

    def describe(self) -> dict[str, Any]:
        """Scheme and field names."""
        return {"scheme": self.scheme, "username_field": self.username_field, "password_field": self.password_field}


def _secret(config: BaseModel, credentials: Token, name: str) -> str:
    value = credentials.get(name, getattr(config, name, None))
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str) or not value:
        raise AuthError(f"credential field {name!r} is missing")
    return value


class _HeaderAuth(httpx.Auth):
    def __init__(self, header: str, value: str) -> None:
        self._header = header
        self._value = value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._header] = self._value
        yield request


class OAuth2Auth(httpx.Auth):
    """Bearer-token auth that refreshes once on 401 and reports rotated tokens to the host.

    :param token: the stored token: ``access_token``, optionally ``refresh_token``,
        ``expires_at`` (epoch seconds) and provider extras (e.g. Salesforce ``instance_url``).
    :param refresh: host callback ``await refresh(token)`` returning new token fields
        (raise ``AuthError`` when the grant is rejected). ``None`` disables refreshing.
    :param on_token_update: host callback receiving the merged token after each refresh.
    :param leeway: refresh this many seconds before ``expires_at``.
    :param clock: epoch clock, injectable for tests.
    """

    requires_response_body = False

    def __init__(
        self,
        token: Token,
        *,
        refresh: RefreshCallback | None = None,
        on_token_update: TokenUpdateCallback | None = None,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token: dict[str, Any] = dict(token)
        self._refresh = refresh
        self._on_token_update = on_token_update
        self._leeway = leeway
        self._clock = clock
        self._lock = asyncio.Lock()

    @property
    def token(self) -> dict[str, Any]:
        """A copy of the current token."""
        return dict(self._token)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("OAuth2Auth refreshes asynchronously; use it with an httpx.AsyncClient")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = self._token
        if self._needs_refresh(token):
            token = await self._refreshed(token)
        self._authorize(request, token)
        response = yield request
        if response.status_code != 401 or self._refresh is None:
            return
        token = await self._refreshed(token)
        self._authorize(request, token)
        yield request

    def _needs_refresh(self, token: Token) -> bool:
        if self._refresh is None:
            return False
        if not token.get("access_token"):
            return True
        expires_at = token.get("expires_at")
        return expires_at is not None and float(expires_at) - self._leeway <= self._clock()

    @staticmethod
    def _authorize(request: httpx.Request, token: Token) -> None:
        access = token.get("access_token")
        if not access:
            raise AuthError("no access token: the connection must be authorized")
        request.headers["Authorization"] = f"Bearer {access}"

    async def _refreshed(self, stale: dict[str, Any]) -> dict[str, Any]:
        assert self._refresh is not None
        async with self._lock:
            if self._token is not stale:  # a concurrent request already refreshed it
                return self._token
            fresh = await self._refresh(dict(stale))
            merged = {**stale, **fresh}
            if "expires_in" in fresh and "expires_at" not in fresh:
                merged["expires_at"] = self._clock() + float(fresh["expires_in"])
            if not merged.get("access_token"):
                raise AuthError("token refresh returned no access token")
            self._token = merged
            if self._on_token_update is not None:
                await self._on_token_update(dict(merged))
            return merged


async def refresh_oauth2_token(
    client: httpx.AsyncClient,
    *,
    token_url: str,
    token: Token,
    client_id: str,
    client_secret: str | None = None,
) -> dict[str, Any]:
    """Run the ``refresh_token`` grant (RFC 6749 §6): a ready-made ``refresh`` callback body.

    The provider's answer is returned as is; ``OAuth2Auth`` merges it into the stored token,
    so a response without a new ``refresh_token`` (Salesforce, Google) keeps the old one.

    :raises AuthError: no refresh token, or the grant was rejected (``invalid_grant``...):
        the admin must reconnect.
    :raises ProviderUnavailable: the token endpoint failed or could not be reached.
    """
    refresh_token = token.get("refresh_token")
    if not refresh_token:
        raise AuthError("no refresh token stored: the connection must be re-authorized")
    form = {"grant_type": "refresh_token", "refresh_token": str(refresh_token), "client_id": client_id}
    if client_secret:
        form["client_secret"] = client_secret
    return await _token_request(client, token_url, form)


async def fetch_client_credentials_token(
    client: httpx.AsyncClient,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    scopes: Sequence[str] = (),
) -> dict[str, Any]:
    """Mint a token with the ``client_credentials`` grant: a ready-made ``refresh`` callback body.

    :raises AuthError: the client was rejected.
    :raises ProviderUnavailable: the token endpoint failed or could not be reached.
    """
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
    if scopes:
        form["scope"] = " ".join(scopes)
    return await _token_request(client, token_url, form)


async def _token_request(client: httpx.AsyncClient, token_url: str, form: dict[str, str]) -> dict[str, Any]:
    where = httpx.URL(token_url).copy_with(query=None)
    try:
        response = await client.post(token_url, data=form, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"token request to {where} failed: {type(exc).__name__}") from None
    if response.status_code >= 500:
        raise ProviderUnavailable(
            f"token request to {where} returned {response.status_code}", status=response.status_code
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
        error = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        detail = f" ({error}: {str(description)[:200]})" if error else ""
        raise AuthError(
            f"token request to {where} was rejected with {response.status_code}{detail}",
            status=response.status_code,
            code=str(error) if error else None,
        )
    return body
