"""The sync job: read a connection's streams page by page into the domain.

Credentials are decrypted here, in the worker, and only for the provider calls. Each page
is stored with its cursor and the run's checkpoint in one transaction (`core.syncs`), so
a sync killed at any point resumes from the last page it stored. A rate limit or an
unavailable provider (open breaker included) pauses the sync; it resumes later from its
checkpoint. A long sync works in slices: after `sync_slice_seconds` it queues the rest.

A failure is the provider's only when reading from it raised it (`_ProviderFailed`): the
same exception type raised while storing (asyncpg's connect timeout is a bare
`TimeoutError`) is the database's, and the job is retried from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from connectors.host import LiveConnector, classify
from connectors.registry import ConnectorNotFound
from connectors.sdk import (
    AuthError,
    ConfigError,
    DealRecord,
    Page,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    parse_cursor,
)
from core import runs, syncs
from core.connections import ConnectionStatus, ConnectionStore, Outcome
from core.credentials import CredentialStatus
from core.errors import NotFound
from core.jsonable import normalise
from core.models import utcnow
from worker import attempts

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger("worker.syncs")
# The database or Redis away: the job is retried and resumes from the checkpoint.
_OURS_AWAY = (OperationalError, InterfaceError, RedisError)
# What reading from the provider may raise that pauses the sync rather than failing it.
_PAUSES = (RateLimited, ProviderUnavailable, TimeoutError, httpx.TransportError)


class SyncFailed(Exception):
    """The sync cannot go on: the run fails with `code` and `message`."""

    def __init__(self, code: str, message: str, outcome: Outcome = Outcome.REJECTED) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome


async def _live(runtime: WorkerRuntime, tenant_id: str, connection_id: str, run_id: str) -> LiveConnector:
    store = ConnectionStore(runtime.db, runtime.vault, syncs.integration(tenant_id, connection_id, run_id))
    try:
        loaded = await store.load(connection_id)
    except NotFound:
        raise SyncFailed("CONNECTION_GONE", "The connection was deleted") from None
    if loaded.status == ConnectionStatus.DISABLED:
        raise SyncFailed("CONNECTION_DISABLED", "The connection was disabled")
    try:
        cls = runtime.connectors.get(loaded.connector_key)
    except ConnectorNotFound:
        raise SyncFailed(
            "CONNECTOR_UNAVAILABLE", f"The connector {loaded.connector_key!r} is not available in this worker"
        ) from None
    if loaded.credential_status == CredentialStatus.REVOKED:
        raise SyncFailed("AUTH_ERROR", "The connection's credentials were revoked; reconnect it", Outcome.AUTH_FAILED)
    try:
        return runtime.connector_host.build_for(cls, loaded, store)
    except ValueError:  # the configuration no longer validates (secrets removed, say)
        raise SyncFailed("CONFIG_INCOMPLETE", "The connection's configuration is incomplete") from None


def _streams(live: LiveConnector) -> list[str]:
    return [stream.name for stream in live.connector.streams]


_END = object()
T = TypeVar("T")


async def _prepared(pages: AsyncIterator[Page[Any]], run_id: str) -> AsyncIterator[tuple[syncs.Prepared, Any]]:
    async for page in pages:
        records = [r for r in page.records if isinstance(r, DealRecord)]
        yield syncs.prepare(records, run_id=run_id), page.cursor


async def read_ahead(pages: AsyncIterator[T]) -> AsyncIterator[T]:
    """`pages`, fetching and preparing the next one while the caller stores the current
    one: the provider's answer, its parsing and validation overlap the database's work.
    One page ahead, so memory stays flat; a page fetched ahead and never stored is read
    again on resume (its cursor was not saved)."""
    ahead: asyncio.Future[Any] = asyncio.ensure_future(anext(pages, _END))
    try:
        while (page := await ahead) is not _END:
            ahead = asyncio.ensure_future(anext(pages, _END))
            yield page
    finally:
        if not ahead.done():
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead


class _ProviderFailed(Exception):
    """Reading from the provider raised `__cause__` (see the module's docstring)."""


async def _from_provider(pages: AsyncIterator[T]) -> AsyncIterator[T]:
    """`pages`, with what fetching them raised wrapped in `_ProviderFailed`; the database or
    Redis away (a token refresh saved, the shared breaker) stays ours."""
    try:
        async for page in pages:
            yield page
    except _OURS_AWAY:
        raise
    except Exception as exc:
        raise _ProviderFailed from exc


def _pause_for(runtime: WorkerRuntime, exc: BaseException, pauses: int) -> float:
    """How long to pause after `exc`, the `pauses`-th pause in a row (from 1): as long as
    the provider's Retry-After asks (a daily quota may ask for hours), else a backoff."""
    settings = runtime.settings
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, (int, float)) and retry_after > 0:
        return min(float(retry_after), settings.sync_max_retry_after_seconds)
    return min(settings.sync_pause_seconds * 2 ** (pauses - 1), settings.sync_max_pause_seconds)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message[:1000]}


async def sync_connection(runtime: WorkerRuntime, tenant_id: str, run_id: str) -> dict[str, Any]:
    """Work a sync run from its checkpoint to the end, a pause, or the end of its slice."""
    return await attempts.attempt(runtime, tenant_id, run_id, _work)


async def _work(runtime: WorkerRuntime, tenant_id: str, started: runs.Started) -> dict[str, Any]:
    run, attempt = started.run, started.attempt
    run_id, connection_id = run.id, run.connection_id
    assert connection_id is not None
    checkpoint: dict[str, Any] = dict(run.checkpoint or {})
    done: list[str] = list(checkpoint.get("done", []))
    positions: dict[str, Any] = dict(checkpoint.get("cursors", {}))
    pauses = int(checkpoint.get("pauses", 0))
    full = run.params.get("mode") == "full"
    deadline = time.monotonic() + runtime.settings.sync_slice_seconds

    async def fail(code: str, message: str, outcome: Outcome = Outcome.REJECTED) -> dict[str, Any]:
        await syncs.finish(
            runtime.db, tenant_id, run_id, connection_id, status=runs.FAILED, outcome=outcome, error=_error(code, message),
            attempt=attempt,
        )  # fmt: skip
        return {"failed": code}

    async def cancelled() -> dict[str, Any]:
        await syncs.finish(runtime.db, tenant_id, run_id, connection_id, status=runs.CANCELLED, attempt=attempt)
        return {"cancelled": True}

    try:
        live = await _live(runtime, tenant_id, connection_id, run_id)
    except SyncFailed as exc:
        return await fail(exc.code, exc.message, exc.outcome)
    stored = {} if full else await syncs.cursors(runtime.db, tenant_id, connection_id)
    try:
        for stream in _streams(live):
            if stream in done:
                continue
            cursor = parse_cursor(positions[stream]) if stream in positions else parse_cursor(stored.get(stream))
            source = live.connector.read(stream, cursor=cursor)
            prepared = _prepared(source, run_id)
            async with (
                aclosing(source), aclosing(prepared), aclosing(read_ahead(prepared)) as ahead,
                aclosing(_from_provider(ahead)) as pages,
            ):  # fmt: skip
                async for page, page_cursor in pages:
                    # The checkpoint only ever holds the cursors of stored pages.
                    stored_to = {**positions, stream: normalise(page_cursor)}
                    result = await syncs.store_page(
                        runtime.db, tenant_id, run_id, connection_id, stream=stream, page=page, cursor=page_cursor,
                        checkpoint={"done": done, "cursors": stored_to, "pauses": 0}, attempt=attempt,
                    )  # fmt: skip
                    positions, pauses = stored_to, 0
                    if result.written:
                        runtime.wake()
                    if result.cancel_requested:
                        return await cancelled()
                    if time.monotonic() > deadline:
                        if not await syncs.pause(runtime.db, tenant_id, run_id, attempt=attempt, resume_at=utcnow()):
                            return await cancelled()
                        return {"sliced": True}
            done.append(stream)
            if await runs.progress(
                runtime.db, tenant_id, run_id, attempt=attempt, checkpoint={"done": done, "cursors": positions, "pauses": 0}
            ):
                return await cancelled()
    except _ProviderFailed as failed:
        exc = failed.__cause__
        assert exc is not None
        if not isinstance(exc, _PAUSES):
            code, message = _failure(exc, run_id)
            return await fail(code, message, Outcome(classify(exc)))
        pauses += 1
        if pauses > runtime.settings.sync_max_pauses:
            return await fail("PROVIDER_UNAVAILABLE", f"Gave up after {pauses - 1} pauses: {_describe(exc)}", Outcome(classify(exc)))
        seconds = _pause_for(runtime, exc, pauses)
        resume_at = utcnow() + timedelta(seconds=math.ceil(seconds))
        paused = await syncs.pause(
            runtime.db, tenant_id, run_id, attempt=attempt, resume_at=resume_at, error=_error(_pause_code(exc), _describe(exc)),
            checkpoint={"done": done, "cursors": positions, "pauses": pauses},
        )  # fmt: skip
        if not paused:  # a cancel was asked for before the pause: it wins
            return await cancelled()
        log.info("sync paused", extra={"run_id": run_id, "resume_at": resume_at.isoformat(), "reason": type(exc).__name__})
        return {"paused_until": resume_at.isoformat()}
    except (*_OURS_AWAY, TimeoutError, runs.RunLost):  # a TimeoutError out here is the database's
        raise
    except Exception as exc:
        log.exception("sync failed unexpectedly", extra={"run_id": run_id})
        return await fail("SYNC_FAILED", f"The sync failed unexpectedly ({type(exc).__name__})")
    await syncs.finish(runtime.db, tenant_id, run_id, connection_id, status=runs.SUCCEEDED, attempt=attempt)
    return {"succeeded": True}


async def fail_run(runtime: WorkerRuntime, tenant_id: str, run_id: str, code: str, message: str) -> None:
    """Fail a sync its job gave up on (`worker.jobs`: timed out, or out of tries) like any
    failed sync: with its `sync.failed` event and the connection's health. Outliving the
    job's timeout counts against the provider, which most likely kept the sync waiting."""
    async with runtime.db.read(tenant_id) as session:
        connection_id = (await runs.get(session, run_id)).connection_id
    assert connection_id is not None
    outcome = Outcome.UNAVAILABLE if code == runs.TIMED_OUT else Outcome.REJECTED
    await syncs.finish(
        runtime.db, tenant_id, run_id, connection_id, status=runs.FAILED, outcome=outcome, error=_error(code, message),
        worker_id=runtime.worker_id,
    )  # fmt: skip


def _failure(exc: BaseException, run_id: str) -> tuple[str, str]:
    """The error code and message of a sync failed by reading from the provider (its health
    outcome is `connectors.host.classify`'s)."""
    if isinstance(exc, AuthError):
        return "AUTH_ERROR", f"The provider rejected the connection's credentials: {exc.message}"
    if isinstance(exc, ConfigError):
        return "PROVIDER_CONFIG_ERROR", exc.message
    if isinstance(exc, ProviderError):
        return "PROVIDER_ERROR", exc.message
    log.error("sync failed unexpectedly", exc_info=exc, extra={"run_id": run_id})
    return "SYNC_FAILED", f"The sync failed unexpectedly ({type(exc).__name__})"


def _pause_code(exc: BaseException) -> str:
    return "RATE_LIMITED" if isinstance(exc, RateLimited) else "PROVIDER_UNAVAILABLE"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "the provider did not answer in time"
    return f"the provider could not be reached ({type(exc).__name__})"


async def start_scheduled_syncs(runtime: WorkerRuntime, now: datetime | None = None) -> int:
    """Queue the syncs whose schedule is due (one tick; a missed tick is caught up once)."""
    now = now or utcnow()
    started = 0
    for tenant_id, connection_id in await syncs.due(runtime.db, now):
        run_id = await syncs.start_scheduled(runtime.db, tenant_id, connection_id, now)
        if run_id is not None:
            await runtime.enqueue_run(runs.SYNC, tenant_id, run_id)
            started += 1
    return started
