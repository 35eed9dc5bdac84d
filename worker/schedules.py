"""What the worker does on a schedule (arq cron jobs; one worker takes each tick)."""

from __future__ import annotations

from arq.cron import CronJob, cron

from core.settings import Settings
from worker import jobs


def cron_jobs(settings: Settings) -> list[CronJob]:
    # arq derives a tick's job id from the name, in a key space shared by every queue:
    # the namespace keeps two deployments on one Redis from taking each other's ticks.
    ns = settings.worker_namespace
    disable = jobs.instrumented(f"{ns}.disable_failing_endpoints", jobs.disable_failing_endpoints, settings)
    requeue = jobs.instrumented(f"{ns}.requeue_unattended_runs", jobs.requeue_unattended_runs, settings)
    return [
        # Every minute, at :00 and :30.
        cron(disable.coroutine, name=disable.name, second=0, timeout=120, max_tries=1),
        cron(requeue.coroutine, name=requeue.name, second=30, timeout=120, max_tries=1),
    ]
