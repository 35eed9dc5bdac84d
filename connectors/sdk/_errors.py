"""Typed provider errors and the one table that classifies every failure.

The exception tree a host has to handle::

    ProviderError                 anything that went wrong talking to a provider
    ├── RateLimited               over quota; ``retry_after`` tells the host when to come back
    ├── AuthError                 credentials rejected or refresh failed: reconnect needed
    ├── ConfigError               the admin must fix something (permission, field, setting)
    ├── ProviderUnavailable       outage: 5xx, timeouts, connection errors after retries
    │   └── CircuitOpen           the breaker refuses calls for now
    ├── FatalProviderError        the request itself is wrong; retrying cannot help
    └── PaginationError           the provider's paging misbehaved (repeated token, bad page)

``ErrorTable`` maps a response (status + provider error codes) or an exception to an
``ErrorRule``: the action (``ErrorAction``) and whether it counts as an outage for the
circuit breaker. ``HubHttp`` drives retries from it, the breaker counts only outages, and
the host maps the raised exception type to job deferral or a "reconnect needed" state.

Messages never include credentials: they are built from the method, the URL path
(never the query string, which can carry API keys) and the provider's own error code and
message, truncated.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

_MAX_MESSAGE = 300


class ErrorAction(enum.StrEnum):
    """What to do about a failed call."""

    RETRY = "retry"
    """Transient: retry with exponential backoff."""
    RATE_LIMITED = "rate_limited"
    """Over a quota: wait for ``Retry-After`` (or back off), or defer the job."""
    REFRESH_THEN_RETRY = "refresh_then_retry"
    """Credentials expired: refresh once, retry; if that fails the connection needs reconnecting."""
    CONFIG_ERROR = "config_error"
    """The admin must fix something (permission, missing field, bad setting)."""
    FATAL = "fatal"
    """The request is wrong; retrying cannot help."""


class ProviderError(Exception):
    """Base of every error raised while talking to a provider.

    :param message: human readable, free of credentials.
    :param status: HTTP status of the provider's answer, if there was one.
    :param code: the provider's own error code (e.g. ``INVALID_SESSION_ID``), if any.
    :param retry_after: seconds after which a retry may succeed, if the provider said
        (``Retry-After``) or the error table knows; the host defers the job by it.
    """

    action: ErrorAction = ErrorAction.FATAL
    outage: bool = False
    """Whether this failure counts against the circuit breaker."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


class RateLimited(ProviderError):
    """The provider refused the call because a quota is exhausted; see ``retry_after``."""

    action = ErrorAction.RATE_LIMITED


class AuthError(ProviderError):
    """Credentials were rejected, or refreshing them failed: the connection needs reconnecting."""

    action = ErrorAction.REFRESH_THEN_RETRY


class ConfigError(ProviderError):
    """The provider rejected the call for a reason an admin must fix (permission, field, setting)."""

    action = ErrorAction.CONFIG_ERROR


class ProviderUnavailable(ProviderError):
    """The provider is failing (5xx, timeout, connection error) and retries did not help."""

    action = ErrorAction.RETRY
    outage = True


class CircuitOpen(ProviderUnavailable):
    """The circuit breaker refuses calls to this connection until its reset timeout passes;
    ``retry_after`` says when it lets a trial call through."""

    outage = False  # refusing a call is not a new failure of the provider


class FatalProviderError(ProviderError):
    """The provider rejected the request itself (400, 404, 409, 422...); retrying cannot help."""

    action = ErrorAction.FATAL


class PaginationError(ProviderError):
    """The provider's pagination misbehaved: a repeated token or a page without records."""

    action = ErrorAction.FATAL


_ERROR_FOR_ACTION: dict[ErrorAction, type[ProviderError]] = {
    ErrorAction.RETRY: ProviderUnavailable,
    ErrorAction.RATE_LIMITED: RateLimited,
    ErrorAction.REFRESH_THEN_RETRY: AuthError,
    ErrorAction.CONFIG_ERROR: ConfigError,
    ErrorAction.FATAL: FatalProviderError,
}


@dataclass(frozen=True)
class ErrorRule:
    """One row of the error table: which failures it matches and what to do about them.

    A rule matches a response when ``status`` matches (an int, a range, or ``None`` for any)
    and, if ``code`` is set, the provider reported that error code; it matches an exception
    when ``exception`` is set and the exception is an instance of it.

    :param action: what to do.
    :param status: HTTP status or range of statuses.
    :param code: provider error code, e.g. ``REQUEST_LIMIT_EXCEEDED``.
    :param exception: exception class, e.g. ``httpx.TimeoutException``.
    :param outage: whether the failure counts against the circuit breaker.
    :param retry_after: seconds to wait when the provider sends no ``Retry-After``;
        ``None`` means back off exponentially.
    """

    action: ErrorAction
    status: int | range | None = None
    code: str | None = None
    exception: type[BaseException] | None = None
    outage: bool = False
    retry_after: float | None = None

    def matches_response(self, status: int, codes: Sequence[str]) -> bool:
        """Whether this rule applies to a response with ``status`` and provider ``codes``."""
        if self.exception is not None:
            return False
        if isinstance(self.status, int) and status != self.status:
            return False
        if isinstance(self.status, range) and status not in self.status:
            return False
        return self.code is None or self.code in codes

    def matches_exception(self, exc: BaseException) -> bool:
        """Whether this rule applies to exception ``exc``."""
        return self.exception is not None and isinstance(exc, self.exception)


@dataclass(frozen=True)
class ProviderErrorDetails:
    """Error codes and a message extracted from a provider's error body."""

    codes: tuple[str, ...] = ()
    message: str | None = None


def provider_error_details(response: httpx.Response) -> ProviderErrorDetails:
    """Extract error codes and a message from the common provider error envelopes.

    Understands Salesforce's array ``[{errorCode, message}]``, ``{errors: [{code, message}]}``
    (Affinity v2), ``{error: {code, message}}`` (Graph, Google), ``{error, error_description}``
    (OAuth), ``{error_summary}`` (Dropbox) and ``{message}`` (DealCloud).
    """
    try:
        body: Any = json.loads(response.content) if response.content else None
    except ValueError:
        return ProviderErrorDetails()
    items: list[Any] = body if isinstance(body, list) else [body]
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        items = body["errors"]
    codes: list[str] = []
    messages: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        error = item.get("error")
        if isinstance(error, dict):
            # Graph nests ever more specific codes in innerError.
            node: Any = error
            while isinstance(node, dict):
                if isinstance(node.get("code"), str):
                    codes.append(node["code"])
                if isinstance(node.get("message"), str):
                    messages.append(node["message"])
                node = node.get("innerError") or node.get("innererror")
            continue
        for key in ("errorCode", "code", "error", "error_summary"):
            if isinstance(item.get(key), (str, int)):
                codes.append(str(item[key]))
                break
        for key in ("message", "error_description"):
            if isinstance(item.get(key), str):
                messages.append(item[key])
                break
    message = "; ".join(messages) or None
    return ProviderErrorDetails(tuple(codes), _truncate(message) if message else None)


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def describe_request(request: httpx.Request) -> str:
    """``METHOD scheme://host/path`` for messages and logs; the query string is left out
    because it may carry credentials (some providers take API keys as query parameters)."""
    url = request.url
    return f"{request.method} {url.scheme}://{url.host}{url.path}"


_DEFAULT_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(ErrorAction.RATE_LIMITED, status=429),
    ErrorRule(ErrorAction.REFRESH_THEN_RETRY, status=401),
    ErrorRule(ErrorAction.CONFIG_ERROR, status=403),
    ErrorRule(ErrorAction.RETRY, status=408, outage=True),
    ErrorRule(ErrorAction.RETRY, status=425),
    ErrorRule(ErrorAction.RETRY, status=range(500, 600), outage=True),
    ErrorRule(ErrorAction.FATAL, status=range(400, 500)),
    ErrorRule(ErrorAction.RETRY, exception=httpx.TimeoutException, outage=True),
    ErrorRule(ErrorAction.RETRY, exception=httpx.TransportError, outage=True),
    ErrorRule(ErrorAction.RETRY, exception=httpx.DecodingError, outage=True),
    # A body that is not the JSON it claims to be: a truncated or garbled transfer.
    ErrorRule(ErrorAction.RETRY, exception=ValueError, outage=True),
)


@dataclass(frozen=True)
class ErrorTable:
    """The ordered rules that classify failures; the first matching rule wins.

    :param rules: the rules, most specific first.
    :param details: extracts provider error codes and message from a response.

    Providers extend the default table with their own codes::

        errors = DEFAULT_ERRORS.extend(
            ErrorRule(ErrorAction.RATE_LIMITED, status=403, code="REQUEST_LIMIT_EXCEEDED"),
        )
    """

    rules: tuple[ErrorRule, ...]
    details: Callable[[httpx.Response], ProviderErrorDetails] = field(default=provider_error_details)

    def extend(self, *rules: ErrorRule) -> ErrorTable:
        """A new table with ``rules`` placed before the existing ones, so they take precedence."""
        return replace(self, rules=(*rules, *self.rules))

    def classify_response(self, response: httpx.Response) -> ErrorRule | None:
        """The rule for an error response, or ``None`` if ``response`` is not an error (< 400)."""
        if response.status_code < 400:
            return None
        codes = self.details(response).codes
        for rule in self.rules:
            if rule.matches_response(response.status_code, codes):
                return rule
        return ErrorRule(ErrorAction.FATAL, status=response.status_code)

    def classify_exception(self, exc: BaseException) -> ErrorRule:
        """The rule for an exception raised while sending a request or reading its body."""
        if isinstance(exc, ProviderError):
            return ErrorRule(exc.action, outage=exc.outage)
        for rule in self.rules:
            if rule.matches_exception(exc):
                return rule
        return ErrorRule(ErrorAction.FATAL)

    def error_for_response(self, response: httpx.Response, rule: ErrorRule) -> ProviderError:
        """The typed exception to raise for an error ``response`` classified as ``rule``."""
        details = self.details(response)
        code = details.codes[0] if details.codes else None
        parts = [describe_request(response.request), f"returned {response.status_code}"]
        if code:
            parts.append(code)
        message = " ".join(parts) + (f": {details.message}" if details.message else "")
        error = _build(rule.action, message, status=response.status_code, code=code)
        error.outage = rule.outage
        return error

    def error_for_exception(
        self, exc: BaseException, request: httpx.Request, rule: ErrorRule, message: str | None = None
    ) -> ProviderError:
        """The typed exception to raise for ``exc`` raised while sending ``request``.

        :param message: replaces the default message (method, URL path, exception type).
        """
        if isinstance(exc, ProviderError):
            return exc
        # Only the exception type: its text could quote a URL with credentials in the query.
        error = _build(rule.action, message or f"{describe_request(request)} failed: {type(exc).__name__}")
        error.outage = rule.outage
        return error


def _build(action: ErrorAction, message: str, *, status: int | None = None, code: str | None = None) -> ProviderError:
    return _ERROR_FOR_ACTION[action](message, status=status, code=code)


DEFAULT_ERRORS = ErrorTable(_DEFAULT_RULES)
"""The default classification, for providers without special codes."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is evidence that the provider is down (the circuit breaker's failure test).

    401/403/400 and other answers of a working provider are not; 5xx, timeouts and connection
    errors are. Exceptions unrelated to the provider (bugs) are not counted either.
    """
    if isinstance(exc, ProviderError):
        return exc.outage
    return isinstance(exc, (httpx.TimeoutException, httpx.TransportError, httpx.DecodingError))
