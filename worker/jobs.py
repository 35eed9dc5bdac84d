"""The worker's arq jobs.

Every job takes JSON arguments, is idempotent, has a timeout and is retried with
exponential backoff on transient failures (database or Redis away); its duration and
outcome are counted in the worker's metrics. A job that works a run (`run:<id>`) only
works a queued or running run, and carries on from the run's checkpoint, so running it
twice, or again after a crash, does no work twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from arq.worker import Function, Retry, func
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from core import deliveries, idempotency, jobs, retention, runs, webhooks
from core.models import utcnow
from core.settings import Settings
from worker import attempts, syncs

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger("worker.jobs")
# Failures worth another try: the database or Redis is (briefly) unreachable (asyncpg's
# connect timeout surfaces as a bare TimeoutError).
TRANSIENT: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, RedisError, ConnectionError, TimeoutError)
REPLAY_PAGE = 500

JobBody = Callable[..., Awaitable[Any]]
# How a job that works a run fails it when the job gives up: (runtime, tenant id, run id,
# code, message). Each kind fails its runs its own way (a sync with its event and health).
RunFailer = Callable[["WorkerRuntime", str, str, str, str], Awaitable[None]]


async def fail_run(runtime: WorkerRuntime, tenant_id: str, run_id: str, code: str, message: str) -> None:
    """Fail a run that records nothing else with its failure (a replay)."""
    error = {"code": code, "message": message}
    await runs.finish(runtime.db, tenant_id, run_id, runs.FAILED, error, worker_id=runtime.worker_id)


async def _give_up(fail: RunFailer, runtime: WorkerRuntime, args: tuple[Any, ...], code: str, message: str) -> None:
    tenant_id, run_id = args[0], args[1]
    try:
        await fail(runtime, tenant_id, run_id, code, message)
    except Exception:  # noqa: BLE001 - the unattended-runs sweep tries the run again later
        log.exception("could not mark the run failed", extra={"run_id": run_id})


class JobTimedOut(Exception):
    """A job outlived its timeout (a TimeoutError the job itself raised is another matter)."""


async def _within(timeout: float, work: Awaitable[Any]) -> Any:
    try:
        async with asyncio.timeout(timeout) as deadline:
            return await work
    except TimeoutError:
        if deadline.expired():
            raise JobTimedOut(f"not done within {timeout:g} s") from None
        raise


def instrumented(name: str, body: JobBody, settings: Settings, *, fails_run: RunFailer | None = None) -> Function:
    """`body(runtime, *args)` as an arq function with a timeout, retries and metrics; a job
    that works a run (args: tenant id, run id) fails it with `fails_run` when it gives up."""
    timeout = settings.worker_job_timeout_seconds
    max_tries = settings.worker_job_max_tries

    async def job(ctx: dict[str, Any], *args: Any) -> Any:
        runtime: WorkerRuntime = ctx["runtime"]
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = await _within(timeout, body(runtime, *args))
            outcome = "succeeded"
            return result
        except JobTimedOut:
            outcome = "timed_out"
            if fails_run is not None:
                await _give_up(fails_run, runtime, args, runs.TIMED_OUT, f"The run did not finish within {timeout:g} s")
            raise
        except TRANSIENT as exc:
            tries = int(ctx.get("job_try", 1))
            if tries < max_tries:
                outcome = "retried"
                raise Retry(defer=settings.worker_job_retry_seconds * 2 ** (tries - 1)) from exc
            if fails_run is not None:
                message = f"Gave up after {tries} tries: {type(exc).__name__}"
                await _give_up(fails_run, runtime, args, "UPSTREAM_UNAVAILABLE", message)
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"  # shutting down: arq runs the job again, and it resumes
            raise
        except Exception as exc:
            if fails_run is not None:
                await _give_up(fails_run, runtime, args, "JOB_FAILED", type(exc).__name__)
            raise
        finally:
            runtime.metrics.jobs.labels(name, outcome).inc()
            runtime.metrics.job_duration.labels(name).observe(time.perf_counter() - started)

    job.__qualname__ = job.__name__ = name
    # arq's own timeout is the backstop; ours fires first, so the run is marked failed.
    return func(job, name=name, timeout=timeout + 5, max_tries=max_tries, keep_result=0)


# --- the jobs


async def replay_deliveries(runtime: WorkerRuntime, tenant_id: str, run_id: str) -> dict[str, Any]:
    """Requeue an endpoint's failed deliveries in a time window, page by page (a run)."""
    return await attempts.attempt(runtime, tenant_id, run_id, _replay)


async def _replay(runtime: WorkerRuntime, tenant_id: str, started: runs.Started) -> dict[str, Any]:
    run, attempt = started.run, started.attempt
    endpoint_id = run.params["endpoint_id"]
    since = datetime.fromisoformat(run.params["since"])
    until = datetime.fromisoformat(run.params["until"])
    after = (run.checkpoint or {}).get("after")
    requeued = 0
    while True:
        async with runtime.db.write(tenant_id) as session:
            page = await deliveries.replay_failed_page(
                session, endpoint_id, since=since, until=until, after=after, limit=REPLAY_PAGE
            )
            cancel = await runs.record_progress(
                session, run.id, attempt=attempt, read=page.read, written=page.requeued, pages=1 if page.read else 0,
                checkpoint={"after": page.checkpoint},
            )  # fmt: skip
        requeued += page.requeued
        if page.requeued:
            runtime.wake(claim=True)
        if page.checkpoint is None:
            break
        if cancel:
            await runs.finish(runtime.db, tenant_id, run.id, runs.CANCELLED, attempt=attempt)
            return {"cancelled": True, "requeued": requeued}
        after = page.checkpoint
    await runs.finish(runtime.db, tenant_id, run.id, runs.SUCCEEDED, attempt=attempt)
    return {"requeued": requeued}


async def disable_failing_endpoints(runtime: WorkerRuntime) -> int:
    """Disable endpoints failing for longer than allowed (those with no recent attempt too)."""
    older_than = utcnow() - timedelta(seconds=runtime.settings.webhook_disable_after_seconds)
    disabled = 0
    for tenant_id, endpoint_id in await webhooks.failing_too_long(runtime.db, older_than=older_than):
        if await webhooks.disable_by_system(
            runtime.db, tenant_id, endpoint_id, reason=webhooks.FAILING, detail="Every attempt failed for longer than allowed"
        ):
            runtime.metrics.endpoints_disabled.labels(webhooks.FAILING).inc()
            disabled += 1
    return disabled


async def purge_expired_keys(runtime: WorkerRuntime) -> int:
    """Delete idempotency keys past their lifetime, in every tenant."""
    purged = await idempotency.purge_expired(runtime.db)
    runtime.metrics.idempotency_keys_purged.inc(purged)
    return purged


def _days_ago(now: datetime, days: float) -> datetime | None:
    return None if days <= 0 else now - timedelta(days=days)


async def prune_history(runtime: WorkerRuntime) -> dict[str, int]:
    """Delete finished deliveries and published events past their retention (core.retention)."""
    now, settings = utcnow(), runtime.settings
    pruned = await retention.prune(
        runtime.db,
        deliveries_before=_days_ago(now, settings.delivery_retention_days),
        events_before=_days_ago(now, settings.outbox_retention_days),
    )
    runtime.metrics.pruned.labels("webhook_deliveries").inc(pruned.deliveries)
    runtime.metrics.pruned.labels("outbox_events").inc(pruned.events)
    return {"deliveries": pruned.deliveries, "events": pruned.events}


# A run not started this long after it was queued has probably lost its job (Redis was away).
UNATTENDED_QUEUED_SECONDS = 30.0
# How often the sweep below runs (worker.schedules): paused runs due within the next tick
# are queued now, deferred to their time.
SWEEP_SECONDS = 10


async def requeue_unattended_runs(runtime: WorkerRuntime) -> int:
    """Enqueue the jobs of runs that look abandoned and of paused runs due to resume; a
    no-op for those whose job is still queued."""
    now = utcnow()
    stale_running = runtime.settings.worker_job_timeout_seconds + 60
    found = await runs.unattended(
        runtime.db,
        queued_before=now - timedelta(seconds=UNATTENDED_QUEUED_SECONDS),
        running_before=now - timedelta(seconds=stale_running),
        resuming_before=now + timedelta(seconds=SWEEP_SECONDS),
    )
    enqueued = 0
    for tenant_id, run_id, kind, resume_at in found:
        defer = (resume_at - now).total_seconds() if resume_at is not None and resume_at > now else None
        if await runtime.enqueue_run(kind, tenant_id, run_id, defer_seconds=defer):
            enqueued += 1
    # Runs whose worker was killed under them: its heartbeat has expired. arq would only
    # run their job again once its in-progress mark expires (minutes); hand them on now.
    quiet_since = now - timedelta(seconds=3 * runtime.settings.worker_heartbeat_seconds)
    for tenant_id, run_id, kind, worker_id in await runs.running(runtime.db, quiet_since=quiet_since):
        if worker_id is None or worker_id == runtime.worker_id or await jobs.alive(runtime.redis, runtime.keys, worker_id):
            continue
        log.warning("run orphaned by a stopped worker, queued again", extra={"run_id": run_id, "worker": worker_id})
        await jobs.reclaim(runtime.redis, runs.job_id(run_id))
        if await runtime.enqueue_run(kind, tenant_id, run_id):
            enqueued += 1
    return enqueued


def functions(settings: Settings) -> list[Function]:
    """The jobs this worker runs, by the names API processes enqueue them under."""
    return [
        instrumented(runs.JOBS[runs.WEBHOOK_REPLAY], replay_deliveries, settings, fails_run=fail_run),
        instrumented(runs.JOBS[runs.SYNC], syncs.sync_connection, settings, fails_run=syncs.fail_run),
    ]
