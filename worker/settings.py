"""The arq worker's settings: a typed object, built from the hub's settings, so a
misspelt or mistyped option fails at start-up instead of being ignored."""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.worker import Function, Worker
from pydantic import BaseModel, ConfigDict, Field

from core import jobs
from core.settings import Settings


class WorkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_name: str = Field(min_length=1)
    max_jobs: int = Field(ge=1)
    job_timeout: float = Field(gt=0)
    max_tries: int = Field(ge=1)
    poll_delay: float = Field(gt=0)
    # Results live in the database (runs), not in Redis.
    keep_result: float = 0
    health_check_interval: float = Field(gt=0)
    allow_abort_jobs: bool = True
    # The runtime handles signals (and the app's server does, in-process).
    handle_signals: bool = False
    log_results: bool = False
    burst: bool = False

    @classmethod
    def from_hub(cls, settings: Settings, *, burst: bool = False) -> WorkerSettings:
        return cls(
            queue_name=jobs.Keys(settings.worker_namespace).queue,
            max_jobs=settings.worker_max_jobs,
            job_timeout=settings.worker_job_timeout_seconds + 5,
            max_tries=settings.worker_job_max_tries,
            poll_delay=settings.worker_poll_seconds,
            health_check_interval=settings.worker_heartbeat_seconds,
            burst=burst,
        )

    def build(
        self, *, redis: ArqRedis, functions: list[Function], cron_jobs: list[CronJob], ctx: dict[str, Any]
    ) -> Worker:
        """An arq worker with these settings and JSON (never pickle) job serialisation."""
        return Worker(
            functions=functions,
            cron_jobs=cron_jobs,
            redis_pool=redis,
            ctx=ctx,
            job_serializer=jobs.serialize,
            job_deserializer=jobs.deserialize,
            **self.model_dump(),
        )
