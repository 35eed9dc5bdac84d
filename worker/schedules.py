"""What the worker does on a schedule (arq cron jobs; one worker takes each tick)."""

from __future__ import annotations

from arq.cron import CronJob, cron

from core.settings import Settings
from worker import jobs, syncs


def cron_jobs(settings: Settings) -> list[CronJob]:
    # arq derives a tick's job id from the name, in a key space shared by every queue:
    # the namespace keeps two deployments on one Redis from taking each other's ticks.
    ns = settings.worker_namespace
    disable = jobs.instrumented(f"{ns}.disable_failing_endpoints", jobs.disable_failing_endpoints, settings)
    requeue = jobs.instrumented(f"{ns}.requeue_unattended_runs", jobs.requeue_unattended_runs, settings)
    scheduled = jobs.instrumented(f"{ns}.start_scheduled_syncs", syncs.start_scheduled_syncs, settings)
    purge = jobs.instrumented(f"{ns}.purge_expired_keys", jobs.purge_expired_keys, settings)
    prune = jobs.instrumented(f"{ns}.prune_history", jobs.prune_history, settings)
    every_sweep = set(range(5, 60, jobs.SWEEP_SECONDS))
    return [
        # Every minute, at :00.
        cron(disable.coroutine, name=disable.name, second=0, timeout=120, max_tries=1),
        # Every SWEEP_SECONDS: paused syncs resume and schedules fire within that much of their time.
        cron(requeue.coroutine, name=requeue.name, second=every_sweep, timeout=120, max_tries=1),
        cron(scheduled.coroutine, name=scheduled.name, second=every_sweep, timeout=120, max_tries=1),
        # Every ten minutes, at :30 past (keys live a day at least).
        cron(purge.coroutine, name=purge.name, minute=set(range(0, 60, 10)), second=30, timeout=600, max_tries=1),
        # Every ten minutes, at :40 past.
        cron(prune.coroutine, name=prune.name, minute=set(range(0, 60, 10)), second=40, timeout=600, max_tries=1),
    ]
