"""Running connectors for a host process (the hub's API, the worker): one ``ConnectorHost``
per process builds a live connector per tenant connection.

What it wires, per connection: the connection's configuration (plain fields and secrets
merged back), its auth (OAuth tokens with a ``refresh`` callback that runs the right grant
and stores the new token, one process at a time per connection), a ``HubHttp`` on the
process's shared ``httpx.AsyncClient``, a circuit breaker named for the tenant connection
in shared storage (Redis), and a rate limiter of its own, so one tenant's failing or busy
connection never slows another's.

Persistence comes in through the ``TokenStore`` protocol (the hub and the worker pass
``core.connections.ConnectionStore``); this module imports the SDK only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, get_args

import httpx
from pydantic import BaseModel, SecretBytes, SecretStr

from connectors.locks import RedisLock
from connectors.oauth import OAuthClient, client_for, with_expiry
from connectors.sdk import (
    AsyncCircuitBreaker,
    AuthError,
    BreakerStorage,
    ConfigError,
    Connector,
    HubHttp,
    OAuth2AuthorizationCode,
    OAuth2ClientCredentials,
    ProviderError,
    ProviderUnavailable,
    RetryPolicy,
    TokenBucket,
    fetch_client_credentials_token,
    refresh_oauth2_token,
)

logger = logging.getLogger(__name__)

_MAX_RATE_LIMITERS = 10_000


class TokenStore(Protocol):
    """Where a host writes what it learns about a connection's credentials."""

    async def save_token(self, connection_id: str, token: dict[str, Any]) -> None:
        """Persist a refreshed or newly minted token (encrypted) before it is used."""
        ...

    async def auth_failed(self, connection_id: str, reason: str) -> None:
        """The provider refused to refresh or mint a token: the connection needs reconnecting."""
        ...

    async def current_token(self, connection_id: str) -> dict[str, Any] | None:
        """The token as stored now (another process may have refreshed it meanwhile)."""
        ...


class StoredSecrets(Protocol):
    """A connection's decrypted secrets (``core.credentials.Credentials`` by shape)."""

    @property
    def secrets(self) -> Mapping[str, str]: ...

    @property
    def token(self) -> Mapping[str, Any] | None: ...


class StoredConnection(Protocol):
    """A tenant connection as its host loaded it (``core.connections.LoadedConnection`` by shape)."""

    @property
    def id(self) -> str: ...

    @property
    def tenant_id(self) -> str: ...

    @property
    def config(self) -> Mapping[str, Any]: ...

    @property
    def credentials(self) -> StoredSecrets | None: ...


def classify(exc: BaseException) -> str:
    """What a failed call says about the connection's health (the values of
    ``core.connections.Outcome``):

    - ``auth_failed``: credentials rejected (or their refresh refused): reconnect needed;
    - ``unavailable``: the provider is down, timing out, or the breaker is open;
    - ``misconfigured``: the provider refuses the setup (permission, missing field);
    - ``rejected``: this one request was refused (bad input, quota) or the connector
      failed on it: the connection itself is fine.
    """
    if isinstance(exc, AuthError):
        return "auth_failed"
    if isinstance(exc, ProviderUnavailable):  # CircuitOpen included
        return "unavailable"
    if isinstance(exc, ConfigError):
        return "misconfigured"
    if isinstance(exc, ProviderError):
        return "rejected"
    if isinstance(exc, (TimeoutError, httpx.TransportError)):
        return "unavailable"
    return "rejected"


def secret_fields(config_model: type[BaseModel]) -> frozenset[str]:
    """The fields of a connector's ``Config`` that hold secrets (``SecretStr``/``SecretBytes``,
    also inside ``Optional``/unions): they go to the vault, never into plain config."""
    found = set()
    for name, info in config_model.model_fields.items():
        stack: list[Any] = [info.annotation]
        while stack:
            annotation = stack.pop()
            if annotation in (SecretStr, SecretBytes):
                found.add(name)
                break
            stack.extend(get_args(annotation))
    return frozenset(found)


@dataclass(frozen=True)
class SplitConfig:
    """A validated configuration, split into what may be stored in clear and the secrets."""

    model: BaseModel
    plain: dict[str, Any]
    secrets: dict[str, str]

    def __repr__(self) -> str:
        return f"SplitConfig(plain={self.plain!r}, secrets={sorted(self.secrets)})"


def split_config(cls: type[Connector], values: Mapping[str, Any]) -> SplitConfig:
    """Validate ``values`` against ``cls.Config`` and split it.

    Only the fields given (or set by the caller) are kept in ``plain``, so later defaults of
    the connector apply to fields the admin never set.

    :raises pydantic.ValidationError: the values do not fit the connector's ``Config``.
    """
    model = cls.Config.model_validate(dict(values))
    hidden = secret_fields(cls.Config)
    plain = model.model_dump(mode="json", exclude_unset=True, exclude=set(hidden))
    secrets: dict[str, str] = {}
    for name in hidden:
        value = getattr(model, name, None)
        if isinstance(value, SecretStr):
            secrets[name] = value.get_secret_value()
        elif isinstance(value, SecretBytes):
            secrets[name] = value.get_secret_value().decode("utf-8", "surrogateescape")
    return SplitConfig(model=model, plain=plain, secrets=secrets)


def parse_config(cls: type[Connector], plain: Mapping[str, Any], secrets: Mapping[str, str]) -> BaseModel:
    """The connector's ``Config`` from stored plain fields and decrypted secrets."""
    return cls.Config.model_validate({**dict(plain), **dict(secrets)})


@dataclass
class LiveConnector:
    """A connector ready to call its provider for one tenant connection."""

    connector: Connector
    http: HubHttp
    breaker: AsyncCircuitBreaker

    def __repr__(self) -> str:
        return f"LiveConnector({type(self.connector).__name__}, breaker={self.breaker.name!r})"


Refresh = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]


class ConnectorHost:
    """The process-wide pieces every live connector shares, and the factory of live connectors.

    :param client: the shared ``httpx.AsyncClient`` (connection pooling).
    :param breaker_storage: where circuit breakers live (``RedisBreakerStorage`` so every
        process sees the same breaker per tenant connection).
    :param oauth_clients: the hub's OAuth registrations by connector key.
    :param retry: the retry policy of provider calls.
    :param breaker_fail_max: consecutive outages that open a connection's breaker.
    :param breaker_reset_timeout: seconds an open breaker refuses calls.
    :param sleep: async sleep used between retries (tests pass a no-op).
    :param refresh_lock: shared by every hub process (``RedisLock``), so one process at a
        time refreshes a connection's token and the others use what it stored; ``None``
        coordinates nothing beyond one auth's own lock.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        breaker_storage: BreakerStorage,
        oauth_clients: Mapping[str, OAuthClient] | None = None,
        retry: RetryPolicy | None = None,
        breaker_fail_max: int = 5,
        breaker_reset_timeout: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        refresh_lock: RedisLock | None = None,
    ) -> None:
        self.client = client
        self.refresh_lock = refresh_lock
        self.breaker_storage = breaker_storage
        self.oauth_clients: dict[str, OAuthClient] = dict(oauth_clients or {})
        self.retry = retry or RetryPolicy()
        self.breaker_fail_max = breaker_fail_max
        self.breaker_reset_timeout = breaker_reset_timeout
        self.sleep = sleep
        self._rate_limiters: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    def breaker(self, tenant_id: str, connection_id: str) -> AsyncCircuitBreaker:
        """The circuit breaker of one tenant connection."""
        return AsyncCircuitBreaker.for_connection(
            tenant_id,
            connection_id,
            storage=self.breaker_storage,
            fail_max=self.breaker_fail_max,
            reset_timeout=self.breaker_reset_timeout,
        )

    def _rate_limiter(self, cls: type[Connector], tenant_id: str, connection_id: str) -> TokenBucket | None:
        if cls.rate_limit is None:
            return None
        # Per connection: provider quotas are per account, and one tenant's burst must not
        # queue another tenant's calls.
        key = (tenant_id, connection_id)
        bucket = self._rate_limiters.get(key)
        if bucket is None:
            bucket = TokenBucket.from_limit(cls.rate_limit)
            self._rate_limiters[key] = bucket
            if len(self._rate_limiters) > _MAX_RATE_LIMITERS:
                self._rate_limiters.popitem(last=False)
        else:
            self._rate_limiters.move_to_end(key)
        return bucket

    def oauth_client(self, cls: type[Connector], config: BaseModel, secrets: Mapping[str, str]) -> OAuthClient | None:
        return client_for(cls.key, config, secrets, self.oauth_clients)

    def refresher(
        self,
        cls: type[Connector],
        config: BaseModel,
        secrets: Mapping[str, str],
        *,
        connection_id: str,
        store: TokenStore | None,
        must_store: bool = False,
    ) -> Refresh | None:
        """The ``refresh`` callback of a connection's OAuth auth, or ``None`` if its scheme
        has no token to refresh. With a `store`, the new token is stored before the callback
        returns (inside the shared refresh lock, so the next process to take it finds the
        token); a refused grant is reported to ``store.auth_failed``. A token that could not
        be stored is still used by the call that got it (logged), unless `must_store`."""
        spec = cls.auth_for(config)
        if not isinstance(spec, (OAuth2AuthorizationCode, OAuth2ClientCredentials)):
            return None
        client = self.oauth_client(cls, config, secrets)

        async def refresh(token: Mapping[str, Any]) -> Mapping[str, Any]:
            if store is None:
                return await grant(token)
            if self.refresh_lock is None:
                return await renewed(store, token)
            async with self.refresh_lock.held(f"oauth-refresh:{connection_id}"):
                stored = await store.current_token(connection_id)
                if stored and _refreshed_since(stored, token):
                    return stored  # another process refreshed it while this one waited
                # The stored token's refresh token is the latest (a rotated one replaces it).
                return await renewed(store, stored or token)

        async def renewed(store: TokenStore, token: Mapping[str, Any]) -> dict[str, Any]:
            """`token` renewed by the provider and stored (under the lock, when there is one)."""
            # Like OAuth2Auth: a refresh without a new refresh_token keeps the old one.
            merged = {**token, **with_expiry(await grant(token))}
            if not merged.get("access_token"):
                raise AuthError("token refresh returned no access token")
            try:
                await store.save_token(connection_id, merged)
            except Exception:
                if must_store:
                    raise
                logger.exception("a refreshed token of connection %s could not be stored", connection_id)
            return merged

        async def grant(token: Mapping[str, Any]) -> Mapping[str, Any]:
            try:
                if client is None:
                    raise AuthError(f"no OAuth client is configured for {cls.key}")
                if isinstance(spec, OAuth2ClientCredentials):
                    if not client.client_secret:
                        raise AuthError(f"the OAuth client of {cls.key} has no client secret")
                    fresh = await fetch_client_credentials_token(
                        self.client,
                        token_url=spec.token_url,
                        client_id=client.client_id,
                        client_secret=client.client_secret,
                        scopes=spec.scopes,
                    )
                else:
                    fresh = await refresh_oauth2_token(
                        self.client,
                        token_url=spec.token_url,
                        token=token,
                        client_id=client.client_id,
                        client_secret=client.client_secret,
                    )
            except AuthError as exc:
                logger.warning("token refresh of connection %s refused: %s", connection_id, exc.message)
                if store is not None:
                    await store.auth_failed(connection_id, exc.message)
                raise
            return fresh

        return refresh

    def build(
        self,
        cls: type[Connector],
        *,
        tenant_id: str,
        connection_id: str,
        config: Mapping[str, Any],
        secrets: Mapping[str, str],
        token: Mapping[str, Any] | None,
        store: TokenStore | None,
    ) -> LiveConnector:
        """A live connector for one tenant connection.

        :param config: the stored plain configuration.
        :param secrets: the decrypted secret fields of the configuration.
        :param token: the decrypted OAuth token, if any.
        :param store: receives rotated tokens and refusals; ``None`` keeps them in memory only.
        """
        parsed = parse_config(cls, config, secrets)
        # The refresher stores what it gets (see `refresher`): the auth needs no token callback.
        refresh = self.refresher(cls, parsed, secrets, connection_id=connection_id, store=store)
        auth = cls.http_auth(parsed, dict(token or {}), refresh=refresh)
        breaker = self.breaker(tenant_id, connection_id)
        http = HubHttp(
            auth=auth,
            client=self.client,
            retry=self.retry,
            rate_limiter=self._rate_limiter(cls, tenant_id, connection_id),
            breaker=breaker,
            errors=cls.errors,
            sleep=self.sleep,
        )
        connector = cls(config=parsed, credentials=dict(token or {}), http=http)
        return LiveConnector(connector=connector, http=http, breaker=breaker)

    def build_for(self, cls: type[Connector], connection: StoredConnection, store: TokenStore | None) -> LiveConnector:
        """`build` for a connection as the host's store loaded it (decrypted credentials, if any)."""
        found = connection.credentials
        return self.build(
            cls, tenant_id=connection.tenant_id, connection_id=connection.id, config=connection.config,
            secrets=found.secrets if found else {}, token=found.token if found else None, store=store,
        )  # fmt: skip

    async def refresh_now(
        self,
        cls: type[Connector],
        *,
        connection_id: str,
        config: Mapping[str, Any],
        secrets: Mapping[str, str],
        token: Mapping[str, Any] | None,
        store: TokenStore,
    ) -> dict[str, Any]:
        """Refresh (or mint) a connection's token now and persist it.

        :raises ValueError: the connector's auth scheme has no token to refresh.
        :raises AuthError: the provider refused (already reported to ``store``).
        :raises ProviderUnavailable: the token endpoint failed.
        """
        parsed = parse_config(cls, config, secrets)
        refresh = self.refresher(cls, parsed, secrets, connection_id=connection_id, store=store, must_store=True)
        if refresh is None:
            raise ValueError(f"{cls.key} has no token to refresh")
        return dict(await refresh(dict(token or {})))  # stored by the refresher


# A token refreshed by another process is used only with this much of its life left.
_FRESH_ENOUGH_SECONDS = 60.0


def _refreshed_since(stored: Mapping[str, Any], seen: Mapping[str, Any]) -> bool:
    """Whether `stored` replaced the token this process last `seen`, and is still good."""
    if not stored.get("access_token") or stored.get("access_token") == seen.get("access_token"):
        return False
    expires_at = stored.get("expires_at")
    return expires_at is None or float(expires_at) - _FRESH_ENOUGH_SECONDS > time.time()


def pooled_client() -> httpx.AsyncClient:
    """The one pooled HTTP client of a process, for every provider call it makes."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=10.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )


class _OAuthRegistration(Protocol):
    client_id: str
    client_secret: SecretStr | None


class HostSettings(Protocol):
    """What a host takes from the hub's settings (``core.settings.Settings`` by shape)."""

    oauth_clients: Mapping[str, _OAuthRegistration]
    connector_retry_attempts: int
    breaker_fail_max: int
    breaker_reset_seconds: float


def connector_host_for(
    settings: HostSettings, client: httpx.AsyncClient, breaker_storage: BreakerStorage, *, refresh_lock: RedisLock | None = None
) -> ConnectorHost:
    """The host of a hub process (the API or a worker) as its settings describe it."""
    return ConnectorHost(
        refresh_lock=refresh_lock,
        client=client,
        breaker_storage=breaker_storage,
        oauth_clients={
            key: OAuthClient(c.client_id, c.client_secret.get_secret_value() if c.client_secret else None)
            for key, c in settings.oauth_clients.items()
        },
        retry=RetryPolicy(max_attempts=settings.connector_retry_attempts),
        breaker_fail_max=settings.breaker_fail_max,
        breaker_reset_timeout=settings.breaker_reset_seconds,
    )
