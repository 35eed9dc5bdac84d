"""The worker itself: arq jobs (JSON arguments, deterministic ids, retries, timeouts,
metrics), heartbeats and readiness, metrics exposure, runs, and surviving Redis."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from arq.jobs import SerializationError
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from core import jobs, runs
from core.deliveries import RetryPolicy
from core.embedded_redis import EmbeddedRedis
from core.jobs import Keys
from core.models import Run
from hub.app import create_app
from hub.outbox_nudge import OutboxNudge, notify_outbox
from tests.conftest import deal_body
from tests.worker.conftest import FAST, Receiver, wait_for
from tests.worker.test_delivery import answer, deliveries_of, make_deal, make_endpoint, settled
from worker import jobs as worker_jobs
from worker.delivery import classify
from worker.metrics import WorkerMetrics
from worker.runtime import WorkerRuntime
from worker.settings import WorkerSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the tables


def test_how_responses_are_classified():
    assert classify(200).outcome == "success" and classify(204).outcome == "success"
    assert classify(410).gone and classify(410).outcome == "http_error"
    for status in (429, 502, 503, 504):
        assert classify(status).honour_retry_after, status
    for status in (301, 302, 400, 401, 404, 500):
        verdict = classify(status)
        assert verdict.outcome == "http_error" and not verdict.gone and not verdict.honour_retry_after


def test_the_default_schedule_is_ten_attempts_over_about_a_day(settings):
    policy = RetryPolicy(tuple(type(settings)().webhook_retry_schedule), jitter=0.2)
    assert policy.max_attempts == 10
    total = sum(policy.schedule)
    assert 20 * 3600 <= total <= 28 * 3600
    # Jitter moves each delay by at most 20%; the last attempt has no successor.
    delays = [policy.delay(n) for n in range(1, 10)]
    assert all(0.8 * base <= d <= 1.2 * base for d, base in zip(delays, policy.schedule, strict=True))  # type: ignore[operator]
    assert policy.delay(10) is None
    assert policy.delay(1, retry_after=3600) == 3600  # Retry-After wins when later
    assert RetryPolicy((5.0,), jitter=0, retry_after_max=60).delay(1, retry_after=10**6) == 60


async def test_the_relay_hands_out_a_transactions_events_in_the_order_they_were_written(app, client, tenant):
    """A batch's events share their transaction's `created_at`; their ids still order them."""
    from core.relay import relay_batch

    endpoint_id, _ = await make_endpoint(client, tenant, "http://127.0.0.1:9/hook", ["deal.created"])
    items = [{"system": "crm", "external_id": f"ORDER-{i:03d}", "deal": deal_body(f"Deal {i}")} for i in range(60)]
    # Not in key order: the events follow the items.
    items.reverse()
    r = await client.post("/api/v1/deals/batch-upsert", json={"items": items}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    written = [result["deal_id"] for result in r.json()["results"]]

    hub = app.state.hub
    leased = []
    while (batch := await relay_batch(hub.db, hub.vault, owner="test", lease_seconds=60, limit=25)).events:
        leased += [due for due in batch.leased if due.endpoint_id == endpoint_id]
    bodies = [orjson.loads(due.body) for due in leased]
    assert [b["resource_id"] for b in bodies] == written
    assert len({b["event_id"] for b in bodies}) == len(written)


# --------------------------------------------------------------------------- jobs


async def test_jobs_are_json_and_deterministic(app, settings):
    redis = app.state.hub.redis
    keys = Keys(settings.worker_namespace + ":json")
    run_id = f"json-{datetime.now().timestamp()}"
    assert await jobs.enqueue(redis, keys, "replay_deliveries", "tenant-1", run_id, job_id=runs.job_id(run_id))
    # The same work enqueued again is a no-op while it is queued.
    assert not await jobs.enqueue(redis, keys, "replay_deliveries", "tenant-1", run_id, job_id=runs.job_id(run_id))
    raw = await redis.get(f"arq:job:{runs.job_id(run_id)}")
    assert orjson.loads(raw)["a"] == ["tenant-1", run_id]  # JSON, not pickle
    with pytest.raises(SerializationError):  # only JSON values travel as arguments
        await jobs.enqueue(redis, keys, "replay_deliveries", object(), job_id="never")
    assert orjson.loads(jobs.serialize({"r": ValueError("boom")}))["r"] == "ValueError: boom"
    await redis.delete(keys.queue, f"arq:job:{runs.job_id(run_id)}")


async def test_a_job_retries_with_backoff_times_out_and_is_counted(app, settings):
    """A burst worker (arq's test mode) running instrumented jobs."""
    fast = settings.model_copy(
        update={"worker_job_retry_seconds": 0.05, "worker_job_timeout_seconds": 0.3, "worker_poll_seconds": 0.02}
    )
    keys = Keys(settings.worker_namespace + ":burst")
    tries: list[int] = []

    async def flaky(runtime: Any, x: int) -> int:
        tries.append(x)
        if len(tries) == 1:
            raise OperationalError("SELECT 1", {}, Exception("database away"))
        return x * 2

    async def stuck(runtime: Any) -> None:
        await asyncio.sleep(5)

    metrics = WorkerMetrics()
    runtime = SimpleNamespace(metrics=metrics)
    functions = [worker_jobs.instrumented("flaky", flaky, fast), worker_jobs.instrumented("stuck", stuck, fast)]
    redis = app.state.hub.redis
    assert await jobs.enqueue(redis, keys, "flaky", 21, job_id="flaky-" + keys.namespace)
    assert await jobs.enqueue(redis, keys, "stuck", job_id="stuck-" + keys.namespace)
    worker = WorkerSettings.from_hub(fast.model_copy(update={"worker_namespace": keys.namespace}), burst=True).build(
        redis=jobs.arq_redis(redis.connection_pool, keys), functions=functions, cron_jobs=[], ctx={"runtime": runtime}
    )
    await asyncio.wait_for(worker.async_run(), 10)
    assert tries == [21, 21]
    text = metrics.render().decode()
    assert 'hub_worker_jobs_total{job="flaky",outcome="retried"} 1.0' in text
    assert 'hub_worker_jobs_total{job="flaky",outcome="succeeded"} 1.0' in text
    assert 'hub_worker_jobs_total{job="stuck",outcome="timed_out"} 1.0' in text
    assert 'hub_worker_job_duration_seconds_count{job="flaky"} 2.0' in text


async def test_a_running_replay_stops_at_its_next_page_when_cancelled(
    client, app, tenant, receiver, start_worker, monkeypatch
):
    receiver.behaviour = answer(500)
    runtime = await start_worker(webhook_retry_schedule=[])
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    for i in range(5):
        await make_deal(client, app, tenant, f"d{i}")
    await settled(client, tenant, endpoint_id, 5)
    await runtime.stop()  # the jobs are run by hand below

    async def replay() -> str:
        r = await client.post(
            f"/api/v1/webhook-endpoints/{endpoint_id}/replay", json={"since": "2026-01-01T00:00:00Z"}, headers=tenant.headers()
        )
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    fake = SimpleNamespace(db=app.state.hub.db, wake=lambda claim=False: None, worker_id="test-worker")
    monkeypatch.setattr(worker_jobs, "REPLAY_PAGE", 2)
    original = worker_jobs.deliveries.replay_failed_page

    async def page_then_cancel(session: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(session, *args, **kwargs)
        # An admin's cancel, committed while this page was worked.
        await session.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
        return result

    run_id = await replay()
    monkeypatch.setattr(worker_jobs.deliveries, "replay_failed_page", page_then_cancel)
    outcome = await worker_jobs.replay_deliveries(fake, tenant.id, run_id)  # type: ignore[arg-type]
    assert outcome == {"cancelled": True, "requeued": 2}
    run = (await client.get(f"/api/v1/runs/{run_id}", headers=tenant.headers())).json()
    assert run["status"] == "cancelled" and run["progress"]["records_written"] == 2 and run["progress"]["pages"] == 1
    # Worked again (arq re-runs a job after a crash), a finished run is left alone.
    assert await worker_jobs.replay_deliveries(fake, tenant.id, run_id) == {"skipped": True}  # type: ignore[arg-type]
    monkeypatch.setattr(worker_jobs.deliveries, "replay_failed_page", original)

    # Cancelling a running run through the API asks it to stop; the job then does.
    run_id = await replay()
    assert await runs.start(app.state.hub.db, tenant.id, run_id) is not None
    r = await client.post(f"/api/v1/runs/{run_id}/cancel", headers=tenant.headers())
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    assert await worker_jobs.replay_deliveries(fake, tenant.id, run_id) == {"skipped": True}  # type: ignore[arg-type]
    assert (await client.get(f"/api/v1/runs/{run_id}", headers=tenant.headers())).json()["status"] == "cancelled"


# --------------------------------------------------------------------------- heartbeat, readiness, metrics


async def test_the_heartbeat_shows_in_readiness(client, app, settings, start_worker):
    ready = (await client.get("/health/ready")).json()
    assert ready["components"]["worker"]["status"] == "down" and ready["components"]["worker"]["required"] is False
    assert ready["status"] == "degraded"
    runtime = await start_worker()
    await wait_for(lambda: jobs.live_workers(app.state.hub.redis, Keys(settings.worker_namespace)))
    ready = (await client.get("/health/ready")).json()
    assert ready["components"]["worker"]["status"] == "up" and ready["status"] == "ok"
    info = orjson.loads(await app.state.hub.redis.get(Keys(settings.worker_namespace).worker(runtime.worker_id)))
    assert info["queue"] == Keys(settings.worker_namespace).queue and "webhook_backlog" in info
    await runtime.stop()
    assert (await client.get("/health/ready")).json()["components"]["worker"]["status"] == "down"


async def test_a_separate_worker_serves_its_metrics(app, settings):
    port = free_port()
    worker_settings = settings.model_copy(update={**FAST, "worker_metrics_port": port})
    runtime = WorkerRuntime(worker_settings, redis_url=settings.redis_url or "", db=app.state.hub.db, vault=app.state.hub.vault, serve_metrics_port=True)
    await runtime.start()
    try:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        assert "hub_worker_heartbeat_timestamp_seconds" in r.text and "hub_webhook_attempts_total" in r.text
    finally:
        await runtime.stop()


async def test_serve_runs_the_worker_in_process_on_the_embedded_default(settings, make_tenant, receiver):
    """`hub serve` without REDIS_URL: the worker runs in the app, is nudged directly,
    and its metrics and heartbeat show in the app's /metrics and /health/ready."""
    ns = settings.worker_namespace + ":inproc"
    app = create_app(settings.model_copy(update={**FAST, "worker_in_process": True, "worker_namespace": ns}))
    tenant = await make_tenant()
    async with app.router.lifespan_context(app):
        assert app.state.hub.worker is not None
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub.test") as c:
            endpoint_id, _ = await make_endpoint(c, tenant, receiver.url, ["deal.*"])
            r = await c.post("/api/v1/deals", json={"name": "In process"}, headers=tenant.headers())
            assert r.status_code == 201
            await wait_for(lambda: receiver.requests)
            await wait_for(lambda: jobs.live_workers(app.state.hub.redis, Keys(ns)))
            metrics = (await c.get("/metrics")).text
            assert 'hub_webhook_attempts_total{outcome="success"}' in metrics
            assert "hub_webhook_first_attempt_lag_seconds_bucket" in metrics
            assert "hub_outbox_events_relayed_total" in metrics
            assert (await c.get("/health/ready")).json()["components"]["worker"]["status"] == "up"
            assert endpoint_id


async def test_nudges_coalesce_and_wake_a_local_worker(app, settings):
    redis: Redis = app.state.hub.redis
    keys = Keys(settings.worker_namespace + ":nudge")
    woken: list[int] = []
    nudge = OutboxNudge(redis, keys, local=lambda: woken.append(1))
    for _ in range(50):
        nudge()
    await nudge.close()
    assert len(woken) == 50
    assert 1 <= await redis.llen(keys.outbox_nudge) <= 2  # one in flight, one after it
    await redis.delete(keys.outbox_nudge)
    # Redis away: a nudge is dropped quietly (the sweep finds the rows).
    broken = OutboxNudge(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.05), keys)
    broken()
    await broken.close()
    assert broken.failures == 1


# --------------------------------------------------------------------------- Redis goes away


async def test_the_embedded_redis_stopped_and_restarted_loses_no_event(
    client, app, settings, tenant, receiver, tmp_path, monkeypatch
):
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    worker_settings = settings.model_copy(update={**FAST, "worker_namespace": settings.worker_namespace + ":restart"})
    runtime = WorkerRuntime(worker_settings, redis_url=url, db=app.state.hub.db, vault=app.state.hub.vault)
    await runtime.start()
    try:
        endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
        before = [await make_deal(client, app, tenant, f"before {i}") for i in range(5)]
        await settled(client, tenant, endpoint_id, 5)

        server.stop()
        during = [await make_deal(client, app, tenant, f"during {i}") for i in range(5)]
        await settled(client, tenant, endpoint_id, 10)  # delivery needs the database, not Redis

        server = EmbeddedRedis(tmp_path / "redis", port=server.port)
        server.start()
        after = [await make_deal(client, app, tenant, f"after {i}") for i in range(5)]
        await settled(client, tenant, endpoint_id, 15)
        await wait_for(lambda: jobs.live_workers(Redis.from_url(url), runtime.keys), timeout=15)

        ids = {orjson.loads(r.body)["resource_id"] for r in receiver.requests}
        assert set(before + during + after) <= ids
        # Jobs come back too: a run queued while Redis was away is picked up by the sweep.
        monkeypatch.setattr(worker_jobs, "UNATTENDED_QUEUED_SECONDS", 0.0)
        r = await client.post(
            f"/api/v1/webhook-endpoints/{endpoint_id}/replay", json={"since": "2026-01-01T00:00:00Z"}, headers=tenant.headers()
        )
        run_id = r.json()["id"]  # enqueued on the API's Redis, which this worker does not read
        await worker_jobs.requeue_unattended_runs(runtime)

        async def finished() -> bool:
            got = await client.get(f"/api/v1/runs/{run_id}", headers=tenant.headers())
            return got.json()["status"] == "succeeded"

        await wait_for(finished)
    finally:
        await runtime.stop()
        server.stop()


async def test_a_webhook_timestamp_is_the_attempts_own(client, app, tenant, receiver, start_worker):
    """Retries carry the time of their own attempt, so a strict verifier accepts late retries."""
    receiver.behaviour = answer(503, 200)
    await start_worker(webhook_retry_schedule=[1.1])
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    await make_deal(client, app, tenant)
    await settled(client, tenant, endpoint_id)
    first, second = receiver.requests
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert datetime.fromtimestamp(int(second.headers["webhook-timestamp"]), UTC) > datetime.now(UTC) - timedelta(seconds=5)


__all__ = ["Receiver", "web"]


async def leased_to(app: Any, owner: str, lease_seconds: float) -> dict[str, Any]:
    """Relay every event waiting, leasing the new deliveries to `owner`: each endpoint's
    claim (a `Due`), by endpoint id."""
    from core.relay import relay_batch

    hub, leased = app.state.hub, {}
    while (batch := await relay_batch(hub.db, hub.vault, owner=owner, lease_seconds=lease_seconds, limit=100)).events:
        leased.update((due.endpoint_id, due) for due in batch.leased)
    return leased


async def a_lapsed_claim(app: Any, client: Any, tenant: Any) -> tuple[str, Any]:
    """A new endpoint's one delivery, leased to worker-a for 0.2 s and lapsed since:
    (endpoint id, that claim)."""
    endpoint_id, _ = await make_endpoint(client, tenant, "http://127.0.0.1:9/hook", ["deal.created"])
    await make_deal(client, app, tenant)
    claim = (await leased_to(app, "worker-a", lease_seconds=0.2))[endpoint_id]
    await asyncio.sleep(0.3)
    return endpoint_id, claim


async def claim_again(app: Any, owner: str, delivery_id: str) -> Any:
    from core.deliveries import claim_due

    claimed = await claim_due(app.state.hub.db, owner=owner, lease_seconds=60, limit=1000)
    (due,) = [due for due in claimed if due.id == delivery_id]
    return due


async def test_a_result_counts_only_under_the_lease_it_was_claimed_with(app, client, tenant):
    """Worker A's lease lapses mid-request and worker B claims the delivery again and
    delivers it: A's late failure is dropped, so the delivery stays delivered (not sent
    again), its attempts are numbered once, and the endpoint is not marked failing."""
    from core.deliveries import AttemptResult, RetryPolicy, record
    from core.models import utcnow

    db, policy = app.state.hub.db, RetryPolicy((1.0,))
    endpoint_id, late = await a_lapsed_claim(app, client, tenant)
    fresh = await claim_again(app, "worker-b", late.id)
    assert fresh.lease != late.lease

    won = await record(db, [AttemptResult(fresh, utcnow(), 5.0, "success", 200)], owner="worker-b", policy=policy, disable_after_seconds=60)
    lost = await record(
        db, [AttemptResult(late, utcnow(), 5.0, "http_error", 503, error="HTTP 503")], owner="worker-a",
        policy=policy, disable_after_seconds=60,
    )  # fmt: skip
    assert (won.succeeded, won.stale) == (1, 0)
    assert (lost.retrying, lost.failed, lost.stale) == (0, 0, 1)

    delivery = (await client.get(f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{late.id}", headers=tenant.headers())).json()
    assert delivery["status"] == "succeeded" and delivery["last_status_code"] == 200
    attempts = (await client.get(
        f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{late.id}/attempts", headers=tenant.headers()
    )).json()["items"]  # fmt: skip
    assert [(a["number"], a["status_code"]) for a in attempts] == [(1, 200)]
    endpoint = (await client.get(f"/api/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers())).json()
    assert endpoint["failing_since"] is None


async def test_a_worker_that_claims_its_own_lapsed_delivery_again_counts_the_newer_claim_only(app, client, tenant):
    from core.deliveries import AttemptResult, RetryPolicy, record
    from core.models import utcnow

    db, policy = app.state.hub.db, RetryPolicy((1.0,))
    endpoint_id, first = await a_lapsed_claim(app, client, tenant)
    second = await claim_again(app, "worker-a", first.id)

    both = [AttemptResult(first, utcnow(), 5.0, "success", 200), AttemptResult(second, utcnow(), 5.0, "http_error", 500, error="HTTP 500")]
    recorded = await record(db, both, owner="worker-a", policy=policy, disable_after_seconds=60)
    assert (recorded.succeeded, recorded.retrying, recorded.stale) == (0, 1, 1)
    delivery = (await client.get(f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{first.id}", headers=tenant.headers())).json()
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("pending", 1, 500)


async def test_results_for_deliveries_deleted_meanwhile_are_dropped(app, client, tenant):
    """An endpoint deleted while its requests are in flight: the other results are kept."""
    from core.deliveries import AttemptResult, RetryPolicy, record
    from core.models import utcnow

    kept_id, _ = await make_endpoint(client, tenant, "http://127.0.0.1:9/kept", ["deal.created"])
    gone_id, _ = await make_endpoint(client, tenant, "http://127.0.0.1:9/gone", ["deal.created"])
    await make_deal(client, app, tenant)
    leased = await leased_to(app, "worker-a", lease_seconds=60)
    kept, gone = leased[kept_id], leased[gone_id]
    r = await client.delete(f"/api/v1/webhook-endpoints/{gone_id}", headers=tenant.headers())
    assert r.status_code == 204, r.text

    now = utcnow()
    results = [AttemptResult(gone, now, 1.0, "success", 200), AttemptResult(kept, now, 1.0, "success", 200)]
    recorded = await record(app.state.hub.db, results, owner="worker-a", policy=RetryPolicy((1.0,)), disable_after_seconds=60)
    assert (recorded.succeeded, recorded.stale) == (1, 1)
    attempts = (await client.get(
        f"/api/v1/webhook-endpoints/{kept_id}/deliveries/{kept.id}/attempts", headers=tenant.headers()
    )).json()["items"]  # fmt: skip
    assert [a["number"] for a in attempts] == [1]


async def test_a_request_that_waited_past_its_lease_for_a_slot_is_not_sent(app, client, tenant, receiver, start_worker):
    """One request in flight per worker: the slow endpoint holds it past the other
    delivery's lease (less the timeout it must leave room for), so that delivery is left
    to be claimed again rather than sent outside its lease."""

    async def slow_first(request: web.Request, n: int) -> web.Response:
        if request.query.get("e") == "slow":
            await asyncio.sleep(0.9)
        return web.Response(text="ok")

    receiver.behaviour = slow_first
    await start_worker(webhook_max_in_flight=1, webhook_lease_seconds=1.5, webhook_timeout_seconds=1.0)
    await make_endpoint(client, tenant, receiver.url + "?e=slow", ["deal.created"])
    waiting_id, _ = await make_endpoint(client, tenant, receiver.url + "?e=waiting", ["deal.updated"])
    deal_id = await make_deal(client, app, tenant)
    await wait_for(lambda: receiver.at("e=slow"))  # the one slot is taken
    r = await client.patch(f"/api/v1/deals/{deal_id}", json={"stage": "ic_review"}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    updated = time.time()
    notify_outbox(app.state.hub)
    (delivery,) = await settled(client, tenant, waiting_id)
    # Sent once, when claimed again after its first lease (1.5 s) had run out.
    (sent,) = receiver.at("e=waiting")
    assert sent.at - updated >= 1.4
    assert delivery["attempts"] == 1 and delivery["status"] == "succeeded"


async def test_a_clean_stop_waits_for_the_results_being_written(app, client, tenant, receiver, start_worker, monkeypatch):
    """Stopping while a batch of results is being written finishes that write: the event
    was delivered, so it is recorded as delivered, not handed back to be sent again."""
    from core import deliveries

    real, writing = deliveries.record, asyncio.Event()

    async def slow_record(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        await asyncio.sleep(0.5)
        return await real(*args, **kwargs)

    monkeypatch.setattr(deliveries, "record", slow_record)
    worker = await start_worker()
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.created"])
    await make_deal(client, app, tenant)
    await asyncio.wait_for(writing.wait(), 10)
    await worker.stop()
    (delivery,) = await deliveries_of(client, tenant, endpoint_id)
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 1)
    assert len(receiver.requests) == 1


async def test_a_clean_stop_writes_the_results_of_every_request_that_finishes_within_its_grace(
    app, client, tenant, receiver, start_worker
):
    """Two requests in flight when the worker is told to stop, answered 0.1 s and 0.6 s
    later: both results are written (not only those that came before the first write)."""

    async def one_quick_one_slow(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(0.6 if request.query.get("e") == "slow" else 0.1)
        return web.Response(text="ok")

    receiver.behaviour = one_quick_one_slow
    worker = await start_worker()
    quick_id, _ = await make_endpoint(client, tenant, receiver.url + "?e=quick", ["deal.created"])
    slow_id, _ = await make_endpoint(client, tenant, receiver.url + "?e=slow", ["deal.created"])
    await make_deal(client, app, tenant)
    await wait_for(lambda: len(receiver.requests) == 2)  # both in flight
    await worker.stop()
    for endpoint_id in (quick_id, slow_id):
        (delivery,) = await deliveries_of(client, tenant, endpoint_id)
        assert (delivery["status"], delivery["attempts"]) == ("succeeded", 1), endpoint_id
    assert len(receiver.requests) == 2


async def test_a_worker_stopping_hands_back_what_it_has_not_sent(app, client, tenant, receiver, start_worker):
    """A clean stop releases the leases of queued deliveries: the next worker sends them at
    once instead of after the lease (30 s here)."""
    from sqlalchemy import func, select

    from core.models import WebhookDelivery

    async def slow(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(0.1)
        return web.Response(text="ok")

    receiver.behaviour = slow
    first = await start_worker(webhook_endpoint_concurrency=1, webhook_lease_seconds=30.0)
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    for i in range(8):
        await make_deal(client, app, tenant, f"d{i}")
    await wait_for(lambda: len(receiver.requests) >= 1)
    await first.stop()
    async with app.state.hub.db.read(tenant.id) as session:
        held = (
            await session.execute(
                select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.lease_owner.is_not(None))
            )
        ).scalar_one()
    assert held == 0
    began = time.monotonic()
    await start_worker(webhook_endpoint_concurrency=4)
    await settled(client, tenant, endpoint_id, 8)
    assert time.monotonic() - began < 5
    assert len(set(receiver.ids())) == 8


async def test_a_write_through_the_api_wakes_the_relay_without_waiting_for_its_sweep(
    client, tenant, receiver, start_worker
):
    await start_worker(outbox_sweep_seconds=60.0)  # a sweep would come far too late
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    await asyncio.sleep(0.5)  # the relay is listening for nudges
    started = time.monotonic()
    r = await client.put("/api/v1/deals/by-ref/crm/NUDGE-1", json=deal_body("Nudged"), headers=tenant.headers())
    assert r.status_code == 201, r.text
    await wait_for(lambda: receiver.requests, timeout=10)
    assert time.monotonic() - started < 5
    assert orjson.loads(receiver.requests[0].body)["resource_id"] == r.json()["id"]
