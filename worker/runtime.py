"""One worker: arq jobs and schedules, the outbox relay, webhook delivery and a heartbeat.

`hub worker` runs it as a process (`run_process`); `hub serve` on the embedded default
starts one in its lifespan, sharing the app's database engines and metrics registry.
Everything the worker does is recorded in the database first, so stopping it, killing
it, or losing Redis under it delays work and loses none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from typing import Any

import httpx
from arq.worker import Worker
from prometheus_client import CollectorRegistry
from redis.asyncio import ConnectionPool, Redis

from connectors.host import ConnectorHost, connector_host_for, pooled_client
from connectors.locks import RedisLock
from connectors.registry import ConnectorRegistry
from connectors.sdk import RedisBreakerStorage
from core import jobs, runs
from core.db import Database
from core.jobs import Keys
from core.migrate import upgrade_to_head
from core.process import tune_gc
from core.settings import Settings
from core.vault import Vault, load_keyring
from worker import jobs as worker_jobs
from worker import schedules
from worker.delivery import Dispatcher
from worker.metrics import WorkerMetrics, serve_metrics
from worker.relay import LISTEN_SECONDS, OutboxRelay
from worker.settings import WorkerSettings
from worker.tasks import cancel_all

log = logging.getLogger("worker")
# Running jobs and requests get this long to finish when the worker stops.
STOP_GRACE_SECONDS = 10.0


def vault_for(settings: Settings) -> Vault:
    configured = settings.vault_keys.get_secret_value() if settings.vault_keys is not None else None
    return Vault(load_keyring(configured, settings.vault_key_file))


class WorkerRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str,
        db: Database | None = None,
        vault: Vault | None = None,
        registry: CollectorRegistry | None = None,
        serve_metrics_port: bool = False,
        connectors: ConnectorRegistry | None = None,
        connector_host: ConnectorHost | None = None,
    ) -> None:
        """
        :param connectors: the connectors syncs may use (an in-process worker shares the
            app's); by default the installed ones, filtered by HUB_CONNECTORS.
        :param connector_host: the factory of live connectors (likewise shared); by default
            one of the worker's own, with its circuit breakers in Redis.
        """
        self.settings = settings
        self.redis_url = redis_url
        self.keys = Keys(settings.worker_namespace)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.metrics = WorkerMetrics(registry)
        self._own_db = db is None
        self.db = db if db is not None else Database(settings.effective_database_url, pool_size=settings.db_pool_size)
        self.vault = vault if vault is not None else vault_for(settings)
        self._serve_metrics = serve_metrics_port and settings.worker_metrics_port is not None
        self._pool: ConnectionPool | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._arq: Worker | None = None
        self._metrics_runner: Any = None
        self._started_at = time.time()
        self.dispatcher: Dispatcher | None = None
        self.relay: OutboxRelay | None = None
        self._stopping = False
        self._connectors = connectors
        self._connector_host = connector_host
        self._own_http: httpx.AsyncClient | None = None

    @property
    def redis(self) -> Redis:
        assert self._pool is not None
        return Redis(connection_pool=self._pool)

    @property
    def connectors(self) -> ConnectorRegistry:
        assert self._connectors is not None
        return self._connectors

    @property
    def connector_host(self) -> ConnectorHost:
        assert self._connector_host is not None
        return self._connector_host

    async def enqueue_run(self, kind: str, tenant_id: str, run_id: str, *, defer_seconds: float | None = None) -> bool:
        """Queue the job of a run; False if it is already queued or running."""
        return await jobs.enqueue(
            self.redis, self.keys, runs.JOBS[kind], tenant_id, run_id, job_id=runs.job_id(run_id), defer_seconds=defer_seconds
        )

    def wake(self, *, claim: bool = False) -> None:
        """Have the relay look at the outbox now (an in-process nudge); with `claim`, at
        due deliveries too."""
        if self.relay is not None:
            self.relay.wake(claim=claim)

    async def start(self) -> None:
        settings = self.settings
        # Blocking reads (BLPOP) wait up to LISTEN_SECONDS; the socket must wait longer.
        self._pool = ConnectionPool.from_url(
            self.redis_url, socket_timeout=LISTEN_SECONDS + 5, socket_connect_timeout=2.0, socket_keepalive=True
        )
        redis = self.redis
        if self._connectors is None:
            self._connectors = ConnectorRegistry(allow=settings.connectors, block=settings.disabled_connectors)
            self._connectors.load()
        if self._connector_host is None:
            self._own_http = pooled_client()
            self._connector_host = connector_host_for(
                settings, self._own_http, RedisBreakerStorage(redis), refresh_lock=RedisLock(redis)
            )
        self.dispatcher = Dispatcher(
            db=self.db, vault=self.vault, settings=settings, metrics=self.metrics, owner=self.worker_id,
            wake_at=lambda when: self.relay.wake_at(when) if self.relay is not None else None,
            on_room=lambda: self.relay.wake(claim=True) if self.relay is not None else None,
        )  # fmt: skip
        await self.dispatcher.start()
        self.relay = OutboxRelay(
            db=self.db, vault=self.vault, redis=redis, keys=self.keys, settings=settings,
            dispatcher=self.dispatcher, metrics=self.metrics,
        )  # fmt: skip
        self._arq = WorkerSettings.from_hub(settings).build(
            redis=jobs.arq_redis(self._pool, self.keys),
            functions=worker_jobs.functions(settings),
            cron_jobs=schedules.cron_jobs(settings),
            ctx={"runtime": self},
        )
        if self._serve_metrics:
            assert settings.worker_metrics_port is not None
            self._metrics_runner = await serve_metrics(self.metrics, settings.worker_metrics_host, settings.worker_metrics_port)
        self._tasks = [
            asyncio.create_task(self.relay.run(), name="outbox-relay"),
            asyncio.create_task(self.relay.listen(), name="outbox-nudges"),
            asyncio.create_task(self._heartbeat(), name="worker-heartbeat"),
            asyncio.create_task(self._run_arq(self._arq), name="arq-worker"),
        ]
        log.info("worker started", extra={"worker_id": self.worker_id, "queue": self.keys.queue})

    async def _run_arq(self, worker: Worker) -> None:
        """arq's loop stops on a Redis error; start it again until Redis is back."""
        pause = 0.5
        while True:
            try:
                await worker.main()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the relay and delivery carry on meanwhile
                if self._stopping:
                    return
                log.warning("job queue unavailable, retrying: %s", type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    async def _heartbeat(self) -> None:
        period = self.settings.worker_heartbeat_seconds
        while True:
            try:
                info = {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started_at": self._started_at,
                    "queue": self.keys.queue,
                    "metrics_port": self.settings.worker_metrics_port if self._serve_metrics else None,
                    "jobs_complete": self._arq.jobs_complete if self._arq else 0,
                    "jobs_failed": self._arq.jobs_failed if self._arq else 0,
                    "webhook_backlog": self.dispatcher.backlog if self.dispatcher else 0,
                }
                await jobs.beat(self.redis, self.keys, self.worker_id, info, ttl_seconds=3 * period)
                self.metrics.heartbeat.set(time.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - readiness shows the missing heartbeat
                log.debug("heartbeat failed: %s", type(exc).__name__)
            await asyncio.sleep(period)

    async def stop(self) -> None:
        self._stopping = True
        arq = self._arq
        if arq is not None:
            arq.allow_pick_jobs = False
            running = [t for t in arq.tasks.values() if not t.done()]
            if running:
                # Jobs cancelled here are run again by arq and resume from their checkpoint.
                _, pending = await asyncio.wait(running, timeout=STOP_GRACE_SECONDS)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await cancel_all(self._tasks)
        self._tasks = []
        if self.dispatcher is not None:
            await self.dispatcher.stop(STOP_GRACE_SECONDS)
        if self._pool is not None:
            try:
                await asyncio.wait_for(jobs.forget(self.redis, self.keys, self.worker_id), 2.0)
            except Exception as exc:  # noqa: BLE001 - the heartbeat expires on its own
                log.debug("heartbeat not removed: %s", type(exc).__name__)
            await self._pool.disconnect()
            self._pool = None
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self._own_http is not None:
            await self._own_http.aclose()
        if self._own_db:
            await self.db.dispose()
        log.info("worker stopped", extra={"worker_id": self.worker_id})


async def _serve_forever(settings: Settings, redis_url: str) -> None:
    await upgrade_to_head(settings.effective_database_url)
    runtime = WorkerRuntime(settings, redis_url=redis_url, serve_metrics_port=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    tune_gc()
    try:
        await stop.wait()
    finally:
        await runtime.stop()


def run_process(settings: Settings) -> int:
    """`hub worker`: run until SIGTERM or SIGINT (the caller has configured logging)."""
    if settings.redis_url is None:
        log.error("`hub worker` needs REDIS_URL; on the embedded default `hub serve` runs the worker itself")
        return 2
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    # The event loop `hub serve` gets from uvicorn too (uvicorn[standard] installs uvloop):
    # it cut the worker's CPU per webhook delivery by about a tenth.
    try:
        import uvloop
    except ImportError:  # a platform without it
        asyncio.run(_serve_forever(settings, settings.redis_url))
    else:
        uvloop.run(_serve_forever(settings, settings.redis_url))
    return 0
