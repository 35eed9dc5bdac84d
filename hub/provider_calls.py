"""Running a mutating route that calls a provider (check, execute an action, refresh a token).

`hub.writes.perform` runs its action inside the write transaction; a provider call must
not be: it may take seconds, and on SQLite (one writer) the token write-back it triggers
would wait for the transaction holding the writer. So here:

1. with an `Idempotency-Key`, the key is claimed in a short transaction of its own (a
   duplicate, even a concurrent one, never calls the provider a second time);
2. the provider is called outside any transaction;
3. one transaction records what happened (audit and outbox events, health) and stores
   the response under the key; a failure answer releases the key so a retry runs again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.responses import Response

from connectors.host import classify
from connectors.sdk import AuthError, ProviderError, ProviderUnavailable, RateLimited
from core import idempotency
from core.changes import ChangeContext, Mutation, mutation
from core.connections import Outcome as CallOutcome
from core.errors import HubError, UpstreamAuthFailed, UpstreamError, UpstreamUnavailable
from core.identity import Principal
from core.models import utcnow
from hub.state import HubState
from hub.writes import Outcome, committed, idempotent, render, request_fingerprint, respond, stored_response

log = logging.getLogger("hub.integrations")
T = TypeVar("T")


# What `finish` answers: a status, a body and headers, as a route's write does.
Answer = Outcome


@dataclass
class CallResult(Generic[T]):
    """What a provider call returned or raised, and how long it took."""

    value: T | None = None
    error: BaseException | None = None
    duration_ms: float = 0.0

    @property
    def outcome(self) -> CallOutcome:
        return CallOutcome.SUCCEEDED if self.error is None else CallOutcome(classify(self.error))


async def timed_call(call: Callable[[], Awaitable[T]], *, timeout: float) -> CallResult[T]:
    """Run `call` with a timeout; provider failures are captured, not raised."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            value = await call()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified and answered by the caller
        if not isinstance(exc, (ProviderError, TimeoutError, HubError)):
            log.exception("connector call failed unexpectedly")
        return CallResult(error=exc, duration_ms=round((time.perf_counter() - started) * 1000, 2))
    return CallResult(value=value, duration_ms=round((time.perf_counter() - started) * 1000, 2))


def error_summary(exc: BaseException) -> dict[str, Any]:
    """A failure as events and responses show it: type, provider code and status, and a
    message free of credentials (the SDK's messages never carry them)."""
    if isinstance(exc, ProviderError):
        return {"type": type(exc).__name__, "code": exc.code, "status": exc.status, "message": exc.message}
    if isinstance(exc, TimeoutError):
        return {"type": "Timeout", "code": None, "status": None, "message": "the provider call timed out"}
    if isinstance(exc, HubError):
        return {"type": type(exc).__name__, "code": exc.code, "status": exc.status, "message": exc.detail}
    return {"type": type(exc).__name__, "code": None, "status": None, "message": "the connector failed unexpectedly"}


def upstream_problem(exc: BaseException) -> HubError:
    """The problem a route answers for a failed provider call."""
    if isinstance(exc, HubError):
        return exc
    summary = error_summary(exc)
    message = summary["message"]
    retry_after = getattr(exc, "retry_after", None)
    seconds = max(1, math.ceil(retry_after)) if isinstance(retry_after, (int, float)) else None
    if isinstance(exc, AuthError):
        return UpstreamAuthFailed(f"The provider rejected the connection's credentials; reconnect it ({message})")
    if isinstance(exc, (ProviderUnavailable, RateLimited)):
        return UpstreamUnavailable(f"The provider is unavailable: {message}", retry_after=seconds)
    if isinstance(exc, TimeoutError):
        return UpstreamUnavailable("The provider did not answer in time")
    if isinstance(exc, ProviderError):
        return UpstreamError(f"The provider refused the call: {message}")
    return UpstreamError("The connector failed unexpectedly")


def _claim_lease(state: HubState) -> timedelta:
    """How long an unanswered provider call holds its key: the call's time limit, and as
    long again to store its answer."""
    return timedelta(seconds=2 * state.settings.connector_timeout_seconds)


async def _release(state: HubState, principal: Principal, key: str, until: datetime) -> None:
    async with state.db.write(principal.tenant_id) as session:
        await idempotency.release(session, actor=principal.actor_key, key=key, until=until)


async def _claim_or_replay(request: Request, state: HubState, principal: Principal, key: str) -> Response | datetime:
    """When this request's claim of `key` expires, once it holds the key (its later writes
    to the key go by it); else the stored response of the request that held it."""
    idempotency.check_key(key)
    fingerprint = request_fingerprint(request, await request.body())
    lease = _claim_lease(state)
    until: datetime | None = None

    async def claim() -> bool | None:
        # In a short transaction of its own: the provider is called outside any. Until
        # the answer is stored the claim is only a lease, so a key whose request died
        # mid-call (its release never ran) is free again soon, not after a day.
        nonlocal until
        now = utcnow()
        async with state.db.write(principal.tenant_id) as session:
            claimed = await idempotency.claim(
                session, tenant_id=principal.tenant_id, actor=principal.actor_key, key=key,
                request_fingerprint=fingerprint, ttl=lease, now=now,
            )  # fmt: skip
        if claimed:
            until = now + lease
        return claimed or None

    held = await idempotent(state, principal, key, fingerprint, claim)
    if isinstance(held, Response):
        return held
    assert until is not None
    return until


async def perform_call(
    request: Request,
    state: HubState,
    principal: Principal,
    *,
    call: Callable[[], Awaitable[T]],
    finish: Callable[[Mutation, T], Awaitable[Answer | HubError]],
) -> Response:
    """Claim the idempotency key, `call` the provider outside any transaction, then
    `finish` in one transaction: it records the events and returns the answer, or the
    problem to raise once the record is committed."""
    key = request.headers.get("idempotency-key")
    context = ChangeContext(principal, getattr(request.state, "request_id", None), key)
    until = utcnow()  # (unused without a key)
    if key is not None:
        held = await _claim_or_replay(request, state, principal, key)
        if isinstance(held, Response):
            return held
        until = held
    try:
        value = await call()
        async with mutation(state.db, context) as m:
            answer = await finish(m, value)
            body = b""
            if key is not None and isinstance(answer, Answer):
                body = render(answer.body)
                # A claim that lapsed mid-call may be another request's now: its answer is the key's.
                if await idempotency.holds(m.session, actor=principal.actor_key, key=key, until=until):
                    await idempotency.complete(
                        m.session, actor=principal.actor_key, key=key, response=stored_response(answer, body),
                        expires_at=utcnow() + timedelta(hours=state.settings.idempotency_ttl_hours),
                    )  # fmt: skip
                else:
                    log.warning("idempotency key lapsed during a provider call; its answer is not stored")
    except BaseException:
        if key is not None:
            await _release(state, principal, key, until)
        raise
    committed(state, m)
    if isinstance(answer, HubError):
        if key is not None:
            await _release(state, principal, key, until)
        raise answer
    return respond(answer.status_code, body or render(answer.body), answer.headers)
