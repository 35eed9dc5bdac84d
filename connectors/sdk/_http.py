"""``HubHttp``: the one way connectors talk to providers.

Every call goes: rate limiter -> circuit breaker -> httpx (auth flow, timeouts) ->
classification by the ``ErrorTable`` -> retry with backoff, or a typed ``ProviderError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, NamedTuple

import httpx
import orjson

from ._breaker import AsyncCircuitBreaker
from ._errors import (
    DEFAULT_ERRORS,
    CircuitOpen,
    ErrorAction,
    ErrorTable,
    ProviderError,
    describe_request,
)
from ._ratelimit import TokenBucket
from ._retry import RetryPolicy, parse_retry_after

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEFAULT_HEADERS = {"User-Agent": "deal-hub-connectors/1", "Accept": "application/json"}
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Failures that prove the request never reached the provider, so even a POST may be resent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

ResponseObserver = Callable[[httpx.Response], None]
Sleep = Callable[[float], Awaitable[None]]


def _loads(content: bytes) -> Any:
    """A JSON body: orjson (several times faster on big pages), and the standard library
    for what orjson refuses but JSON allows (integers beyond 64 bits)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


class JsonResponse(NamedTuple):
    """A response and its decoded JSON body (``None`` for an empty body)."""

    response: httpx.Response
    body: Any


class HubHttp:
    """An ``httpx.AsyncClient`` wrapper applying auth, timeouts, retries, rate limit and breaker.

    The host builds one per tenant connection and hands it to the connector.

    :param auth: httpx auth for this connection (see ``Connector.http_auth``).
    :param client: a shared ``httpx.AsyncClient`` (connection pooling); one is created and
        owned (closed by ``aclose``) if omitted.
    :param timeout: per-request timeouts.
    :param retry: attempts, backoff and the longest ``Retry-After`` honoured in-process.
    :param rate_limiter: paces requests (e.g. one ``TokenBucket`` per provider).
    :param breaker: this connection's circuit breaker.
    :param errors: default error table; connectors pass their own per call.
    :param headers: headers added to every request.
    :param sleep: async sleep, injectable so tests never really wait.
    """

    def __init__(
        self,
        *,
        auth: httpx.Auth | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        rate_limiter: TokenBucket | None = None,
        breaker: AsyncCircuitBreaker | None = None,
        errors: ErrorTable = DEFAULT_ERRORS,
        headers: Mapping[str, str] | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.auth = auth
        self._client = client if client is not None else httpx.AsyncClient()
        self._owns_client = client is None
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter
        self.breaker = breaker
        self.errors = errors
        self.headers = {**DEFAULT_HEADERS, **(headers or {})}
        self._sleep = sleep

    async def __aenter__(self) -> HubHttp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying client if this instance created it."""
        if self._owns_client:
            await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        accept: Collection[int] = (),
        idempotent: bool | None = None,
        errors: ErrorTable | None = None,
        observe: ResponseObserver | None = None,
    ) -> httpx.Response:
        """Send a request with retries and return the final response.

        :param accept: error statuses returned to the caller instead of raised (e.g. an
            upsert handling 300 and 404 itself).
        :param idempotent: whether resending is safe; defaults by method (GET, PUT,
            DELETE...: yes; POST, PATCH: only when the request provably never arrived or
            was refused with 429).
        :param errors: the connector's error table.
        :param observe: called with every response received, errors and retries included
            (e.g. to read quota headers).
        :raises ProviderError: a typed subclass once retrying is pointless or exhausted.
        """
        result = await self._exchange(
            method, url, params, json, data, content, headers, accept, idempotent, errors, observe, decode=False
        )
        return result.response

    async def request_json(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        accept: Collection[int] = (),
        idempotent: bool | None = None,
        errors: ErrorTable | None = None,
        observe: ResponseObserver | None = None,
    ) -> JsonResponse:
        """Like ``request``, and decode the body as JSON inside the retry loop.

        A truncated or garbled body on a successful status is retried like a dropped
        connection, then raised as ``ProviderUnavailable``.
        """
        return await self._exchange(
            method, url, params, json, data, content, headers, accept, idempotent, errors, observe, decode=True
        )

    async def get_json(self, url: str | httpx.URL, *, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """GET ``url`` and return its decoded JSON body."""
        return (await self.request_json("GET", url, params=params, **kwargs)).body

    async def _exchange(
        self,
        method: str,
        url: str | httpx.URL,
        params: Mapping[str, Any] | None,
        json_body: Any,
        data: Mapping[str, Any] | None,
        content: bytes | str | None,
        headers: Mapping[str, str] | None,
        accept: Collection[int],
        idempotent: bool | None,
        errors: ErrorTable | None,
        observe: ResponseObserver | None,
        *,
        decode: bool,
    ) -> JsonResponse:
        table = errors or self.errors
        method = method.upper()
        if params:
            # Merge into the URL's own query: httpx would replace it (next-page URLs carry one).
            url = httpx.URL(url).copy_merge_params(params)
        repeatable = method in _IDEMPOTENT if idempotent is None else idempotent
        attempt = 0
        while True:
            attempt += 1
            request = self._client.build_request(
                method,
                url,
                json=json_body,
                data=data,
                content=content,
                headers={**self.headers, **(headers or {})},
                timeout=self.timeout,
            )
            try:
                if self.breaker is not None:
                    return await self.breaker.call(self._attempt, request, table, accept, observe, decode)
                return await self._attempt(request, table, accept, observe, decode)
            except ProviderError as error:
                wait = self._retry_wait(error, attempt, repeatable)
                if wait is None:
                    raise
                logger.info(
                    "retrying %s in %.2fs (attempt %d of %d): %s",
                    describe_request(request),
                    wait,
                    attempt + 1,
                    self.retry.max_attempts,
                    error.code or error.status or type(error).__name__,
                )
                await self._sleep(wait)

    async def _attempt(
        self,
        request: httpx.Request,
        table: ErrorTable,
        accept: Collection[int],
        observe: ResponseObserver | None,
        decode: bool,
    ) -> JsonResponse:
        if self.rate_limiter is not None:
            await self.rate_limiter.acquire()
        try:
            response = await self._client.send(request, auth=self.auth or httpx.USE_CLIENT_DEFAULT)
        except ProviderError:
            raise  # from the auth flow, e.g. a rejected refresh token
        except httpx.HTTPError as exc:
            raise table.error_for_exception(exc, request, table.classify_exception(exc)) from exc
        if observe is not None:
            observe(response)
        status = response.status_code
        if status < 400 or status in accept:
            if not decode or not response.content:
                return JsonResponse(response, None)
            try:
                return JsonResponse(response, _loads(response.content))
            except ValueError as exc:
                if status >= 300:
                    return JsonResponse(response, None)  # an accepted error without a JSON body
                message = f"{describe_request(request)} returned an incomplete or invalid JSON body"
                raise table.error_for_exception(exc, request, table.classify_exception(exc), message) from None
        rule = table.classify_response(response)
        assert rule is not None
        error = table.error_for_response(response, rule)
        header = parse_retry_after(response.headers.get("Retry-After"))
        error.retry_after = header if header is not None else rule.retry_after
        raise error

    def _retry_wait(self, error: ProviderError, attempt: int, repeatable: bool) -> float | None:
        """Seconds to wait before retrying, or ``None`` to give up and raise ``error``."""
        if isinstance(error, CircuitOpen) or attempt >= self.retry.max_attempts:
            return None
        if error.action is ErrorAction.RATE_LIMITED:
            pass  # a refused request was not processed: safe to resend whatever the method
        elif error.action is not ErrorAction.RETRY or not (repeatable or isinstance(error.__cause__, _NOT_SENT)):
            return None
        wait = error.retry_after if error.retry_after is not None else self.retry.backoff(attempt)
        # Longer waits are the host's to schedule (job deferral), not a worker's to sleep through.
        return wait if wait <= self.retry.max_retry_after else None
