"""The worker's Prometheus metrics.

In `hub serve` with the in-process worker they join the app's registry, so the API's
`/metrics` shows them. A separate `hub worker` serves its own on `HUB_WORKER_METRICS_PORT`
(`GET /metrics`, `GET /health`); its heartbeat in Redis also carries its job counts.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger("worker.metrics")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("hub_worker_jobs", "Jobs finished, by job and outcome", ["job", "outcome"], registry=r)
        self.job_duration = Histogram(
            "hub_worker_job_duration_seconds", "Job run time", ["job"], buckets=DURATION_BUCKETS, registry=r
        )
        self.heartbeat = Gauge("hub_worker_heartbeat_timestamp_seconds", "Last heartbeat written to Redis", registry=r)
        self.outbox_relayed = Counter("hub_outbox_events_relayed", "Outbox events published by the relay", registry=r)
        self.relay_errors = Counter("hub_outbox_relay_errors", "Relay or claim passes that failed", registry=r)
        self.attempts = Counter("hub_webhook_attempts", "Webhook delivery attempts, by outcome", ["outcome"], registry=r)
        self.attempt_duration = Histogram(
            "hub_webhook_attempt_duration_seconds", "Webhook request time", buckets=DURATION_BUCKETS, registry=r
        )
        self.deliveries = Counter(
            "hub_webhook_deliveries_finished", "Deliveries that reached a final state, by status", ["status"], registry=r
        )
        self.retries = Counter("hub_webhook_retries_scheduled", "Failed attempts scheduled for another try", registry=r)
        self.secrets_unreadable = Counter(
            "hub_webhook_secrets_unreadable",
            "Deliveries not sent: this worker cannot open their endpoint's signing secret (a vault key it lacks)",
            registry=r,
        )
        self.results_stale = Counter(
            "hub_webhook_results_stale", "Attempt results dropped: the delivery's lease had passed to a newer claim", registry=r
        )
        self.idempotency_keys_purged = Counter(
            "hub_idempotency_keys_purged", "Idempotency keys deleted after their lifetime", registry=r
        )
        self.pruned = Counter("hub_rows_pruned", "Rows deleted after their retention, by table", ["table"], registry=r)
        self.lag = Histogram(
            "hub_webhook_first_attempt_lag_seconds", "From the event's commit to its first attempt",
            buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("hub_webhook_requests_in_flight", "Webhook requests in flight", registry=r)
        self.backlog = Gauge("hub_webhook_backlog", "Deliveries held by this worker, waiting or in flight", registry=r)
        self.endpoints_disabled = Counter(
            "hub_webhook_endpoints_disabled", "Endpoints disabled by the hub, by reason", ["reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: WorkerMetrics, host: str, port: int) -> web.AppRunner:
    """Serve `/metrics` and `/health` for a separate worker process."""

    async def render(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", render)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("worker metrics served", extra={"host": host, "port": port})
    return runner
