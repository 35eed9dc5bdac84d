"""The connector SDK: the only module a connector plugin imports.

A plugin declares a ``Connector`` subclass (key, kind, auth, ``Config``, streams, actions)
and registers it from a ``@hookimpl`` ``register_connectors(register)`` function named by
an entry point in group ``hub.connectors``. The hub supplies a ``HubHttp`` per tenant
connection with auth, retries, rate limiting and a circuit breaker; the connector only
turns provider data into ``Record``/``DealRecord`` pages and back.

Everything public is listed in ``__all__``; anything else (``_modules``) may change.
"""

from ._actions import Action, action
from ._auth import (
    ApiKeyAuth,
    AuthSpec,
    BasicAuth,
    OAuth2Auth,
    OAuth2AuthorizationCode,
    OAuth2ClientCredentials,
    fetch_client_credentials_token,
    refresh_oauth2_token,
)
from ._breaker import (
    AsyncCircuitBreaker,
    BreakerChange,
    BreakerSnapshot,
    BreakerStorage,
    InMemoryBreakerStorage,
    RedisBreakerStorage,
)
from ._connector import Connector, ConnectorDescription, InvalidConnector, validate_connector
from ._errors import (
    DEFAULT_ERRORS,
    AuthError,
    CircuitOpen,
    ConfigError,
    ErrorAction,
    ErrorRule,
    ErrorTable,
    FatalProviderError,
    PaginationError,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    is_outage,
)
from ._http import HubHttp, JsonResponse
from ._pagination import (
    CursorPaginator,
    LinkHeaderPaginator,
    NextUrlPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    PageRequest,
    Paginator,
    RawPage,
    paginate,
)
from ._plugin import hookimpl
from ._ratelimit import RateLimit, TokenBucket
from ._records import DealRecord, Kind, Page, Record
from ._retry import RetryPolicy, parse_retry_after
from ._streams import RestResource, Stream, parse_cursor
from ._webhooks import WebhookVerificationError, sign_webhook, verify_webhook

__all__ = [
    "DEFAULT_ERRORS",
    "Action",
    "ApiKeyAuth",
    "AsyncCircuitBreaker",
    "AuthError",
    "AuthSpec",
    "BasicAuth",
    "BreakerChange",
    "BreakerSnapshot",
    "BreakerStorage",
    "CircuitOpen",
    "ConfigError",
    "Connector",
    "ConnectorDescription",
    "CursorPaginator",
    "DealRecord",
    "ErrorAction",
    "ErrorRule",
    "ErrorTable",
    "FatalProviderError",
    "HubHttp",
    "InMemoryBreakerStorage",
    "InvalidConnector",
    "JsonResponse",
    "Kind",
    "LinkHeaderPaginator",
    "NextUrlPaginator",
    "OAuth2Auth",
    "OAuth2AuthorizationCode",
    "OAuth2ClientCredentials",
    "OffsetPaginator",
    "Page",
    "PageNumberPaginator",
    "PageRequest",
    "PaginationError",
    "Paginator",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimit",
    "RateLimited",
    "RawPage",
    "Record",
    "RedisBreakerStorage",
    "RestResource",
    "RetryPolicy",
    "Stream",
    "TokenBucket",
    "WebhookVerificationError",
    "action",
    "fetch_client_credentials_token",
    "hookimpl",
    "is_outage",
    "paginate",
    "parse_cursor",
    "parse_retry_after",
    "refresh_oauth2_token",
    "sign_webhook",
    "validate_connector",
    "verify_webhook",
]
