"""Running a mutating route: one transaction for the change, its audit and outbox
events and, when the caller sent an `Idempotency-Key`, the stored response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Header, Request
from fastapi.responses import Response
from pydantic import BaseModel

from core import idempotency
from core.idempotency import IDEMPOTENCY_KEY_PATTERN
from core.changes import ChangeContext, Mutation, mutation
from core.errors import IdempotencyInProgress
from core.identity import Principal
from core.jsonable import dumps
from hub.outbox_nudge import notify_outbox
from hub.state import HubState

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Repeat a request safely: the same key and payload return the first response.",
        examples=["5b0c2f7e-3a1d-4f7a-9f1e-2b8d7c6a5e41"],
    ),
]
_RETRY_PAUSE_SECONDS = 0.02
T = TypeVar("T")


@dataclass
class Outcome:
    status_code: int
    body: BaseModel | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # What the idempotency store keeps instead of `body`, when the body holds a secret.
    stored_body: BaseModel | dict[str, Any] | None = None


Action = Callable[[Mutation], Awaitable[Outcome]]


def render(body: BaseModel | dict[str, Any] | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, BaseModel):
        return body.model_dump_json().encode()
    return dumps(body)


def respond(status_code: int, body: bytes, headers: dict[str, str], *, replayed: bool = False) -> Response:
    headers = dict(headers)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    media_type = "application/json" if body else None
    return Response(body, status_code=status_code, media_type=media_type, headers=headers)


def _replay(stored: idempotency.StoredResponse) -> Response:
    return respond(stored.status_code, stored.body, stored.headers, replayed=True)


def committed(state: HubState, m: Mutation) -> None:
    """After a write transaction committed: count its audit events, and wake the outbox
    relay if it wrote events (so webhooks leave now, not at the relay's next sweep)."""
    state.metrics.audit_events.inc(m.trail.written)
    if m.events.written:
        notify_outbox(state)


def stored_response(outcome: Outcome, body: bytes) -> idempotency.StoredResponse:
    """What the idempotency store keeps of an outcome (never a secret it marks as such)."""
    kept = body if outcome.stored_body is None else render(outcome.stored_body)
    return idempotency.StoredResponse(outcome.status_code, "application/json" if kept else None, kept, outcome.headers)


def request_fingerprint(request: Request, body: bytes) -> str:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return idempotency.fingerprint(request.method, path, body)


async def idempotent(
    state: HubState,
    principal: Principal,
    key: str,
    fingerprint: str,
    attempt: Callable[[], Awaitable[T | None]],
) -> T | Response:
    """Run `attempt` (which claims the key in its transaction and answers None if
    another request holds it) until it answers or the holder's stored response
    can be replayed. A fresh key costs no extra read."""
    deadline = time.monotonic() + state.settings.idempotency_wait_seconds
    while True:
        response = await attempt()
        if response is not None:
            return response
        # Another request holds the key: replay its response once it has committed.
        async with state.db.read(principal.tenant_id) as session:
            stored = await idempotency.find(session, principal.actor_key, key, fingerprint)
        if stored is not None:
            state.metrics.idempotent_replays.inc()
            return _replay(stored)
        if time.monotonic() > deadline:
            raise IdempotencyInProgress("A request with this Idempotency-Key is still being processed; retry later")
        await asyncio.sleep(_RETRY_PAUSE_SECONDS)


async def perform(request: Request, state: HubState, principal: Principal, action: Action) -> Response:
    key = request.headers.get("idempotency-key")
    context = ChangeContext(principal, getattr(request.state, "request_id", None), key)
    if key is None:
        async with mutation(state.db, context) as m:
            outcome = await action(m)
        committed(state, m)
        return respond(outcome.status_code, render(outcome.body), outcome.headers)

    idempotency.check_key(key)
    fingerprint = request_fingerprint(request, await request.body())
    ttl = timedelta(hours=state.settings.idempotency_ttl_hours)

    async def attempt() -> Response | None:
        async with mutation(state.db, context) as m:
            claim = idempotency.Claim(principal.actor_key, key, fingerprint)
            if not await idempotency.claim_many(m.session, tenant_id=principal.tenant_id, claims=[claim], ttl=ttl):
                return None
            outcome = await action(m)
            body = render(outcome.body)
            await idempotency.complete_many(m.session, [(principal.actor_key, key, stored_response(outcome, body))])
        committed(state, m)
        return respond(outcome.status_code, body, outcome.headers)

    return await idempotent(state, principal, key, fingerprint, attempt)
