"""Syncs end to end with FakeCRM: started through the API, worked by an in-process
worker, stored through the audited upsert path page by page, paused and resumed, one at a
time per connection, with `sync.*` events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from connectors.fake_crm import FakeCRMConfig, FakeDealStream, fake_deal
from connectors.sdk import RateLimited
from core import runs
from core import syncs as core_syncs
from core.db import Database
from core.models import Connection, Deal, DealRef, Run, SyncCursor
from core.roles import Role
from tests.conftest import TenantHandle
from tests.hub.integration_fixtures import audit_trail, create_connection, outbox
from tests.worker.conftest import wait_for
from worker import jobs as worker_jobs
from worker import syncs as worker_syncs
from worker.runtime import WorkerRuntime


async def fake_crm(client: httpx.AsyncClient, tenant: TenantHandle, **config: Any) -> dict[str, Any]:
    return await create_connection(
        client, tenant, "fake_crm", name=f"fake {uuid4().hex[:8]}", config={"records": 25, "page_size": 10, **config}
    )


async def start_sync(client: httpx.AsyncClient, tenant: TenantHandle, connection_id: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/api/v1/connections/{connection_id}/syncs", json=body or None, headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/api/v1/runs/{r.json()['id']}"
    return r.json()


async def get_run(client: httpx.AsyncClient, tenant: TenantHandle, run_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/runs/{run_id}", headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 200, r.text
    return r.json()


async def settle(client: httpx.AsyncClient, tenant: TenantHandle, run_id: str, *statuses: str) -> dict[str, Any]:
    wanted = statuses or tuple(runs.FINISHED)

    async def done() -> dict[str, Any] | None:
        run = await get_run(client, tenant, run_id)
        return run if run["status"] in wanted else None

    return await wait_for(done, timeout=20)


async def stored_deals(db: Database, tenant_id: str, system: str = "fake_crm") -> dict[str, Deal]:
    """The tenant's deals from `system` by external id, deleted ones included."""
    async with db.read(tenant_id) as session:
        stmt = select(DealRef.external_id, Deal).join(Deal, Deal.id == DealRef.deal_id).where(DealRef.system == system)
        return {external_id: deal for external_id, deal in await session.execute(stmt)}


async def patch_config(client: httpx.AsyncClient, tenant: TenantHandle, connection_id: str, **config: Any) -> None:
    r = await client.patch(f"/api/v1/connections/{connection_id}", json={"config": config}, headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- a whole sync


async def test_a_sync_stores_every_record_page_by_page_as_the_integration(client, app, db, tenant, start_worker):
    connection = await fake_crm(client, tenant)
    await start_worker()
    run = await start_sync(client, tenant, connection["id"])
    assert run["kind"] == "sync" and run["connection_id"] == connection["id"] and run["params"]["mode"] == "incremental"

    done = await settle(client, tenant, run["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"records_read": 25, "records_written": 25, "records_skipped": 0, "pages": 3}

    config = FakeCRMConfig(records=25, page_size=10)
    deals = await stored_deals(db, tenant.id)
    assert sorted(deals) == [fake_deal(config, i).external_id for i in range(25)]
    first, stored = fake_deal(config, 0), deals["FAKE-00001"]
    assert (stored.name, stored.stage, stored.amount, stored.currency, stored.company) == (
        first.name, first.stage, first.amount, first.currency, first.company,
    )  # fmt: skip
    assert stored.attributes == first.attributes

    # Every change is audited as the connection, under the run; one outbox event each.
    created = await audit_trail(db, tenant.id, "deal.created")
    assert len(created) == 25
    assert {(e.actor_kind, e.actor_id, e.request_id) for e in created} == {
        ("integration", connection["id"], f"run:{run['id']}")
    }
    assert len(await outbox(db, tenant.id, "deal.created")) == 25
    completed = await outbox(db, tenant.id, "sync.completed")
    assert len(completed) == 1 and completed[0].payload["run"]["id"] == run["id"]

    # The stream's cursor is where the next sync starts; the connection's health shows the success.
    async with db.read(tenant.id) as session:
        cursor = (await session.execute(select(SyncCursor.cursor).where(SyncCursor.connection_id == connection["id"]))).scalar_one()
    assert datetime.fromisoformat(cursor) == fake_deal(config, 24).updated_at
    r = await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers(Role.ADMIN))
    shown = r.json()
    assert shown["status"] == "CONNECTED" and shown["last_success_at"] is not None
    assert shown["last_synced_at"] == shown["last_success_at"]


async def test_the_next_sync_reads_only_what_changed_since(client, db, tenant, start_worker):
    connection = await fake_crm(client, tenant)
    await start_worker()
    first = await settle(client, tenant, (await start_sync(client, tenant, connection["id"]))["id"])
    assert first["status"] == "succeeded"

    again = await settle(client, tenant, (await start_sync(client, tenant, connection["id"]))["id"])
    assert again["status"] == "succeeded" and again["progress"]["records_read"] == 0

    await patch_config(client, tenant, connection["id"], records=32)
    more = await settle(client, tenant, (await start_sync(client, tenant, connection["id"]))["id"])
    assert more["progress"]["records_read"] == 7 and more["progress"]["records_written"] == 7
    assert len(await stored_deals(db, tenant.id)) == 32
    assert len(await audit_trail(db, tenant.id, "deal.created")) == 32


async def test_a_full_sync_turns_provider_deletions_into_soft_deletes_and_changes_nothing_else(
    client, db, tenant, start_worker
):
    connection = await fake_crm(client, tenant, records=20)
    await start_worker()
    await settle(client, tenant, (await start_sync(client, tenant, connection["id"]))["id"])

    await patch_config(client, tenant, connection["id"], deleted_every=5)
    full = await settle(client, tenant, (await start_sync(client, tenant, connection["id"], mode="full"))["id"])
    assert full["status"] == "succeeded"
    # Re-reading 16 unchanged deals writes nothing; the 4 tombstones delete 4 deals.
    assert full["progress"]["records_read"] == 20 and full["progress"]["records_written"] == 4

    deals = await stored_deals(db, tenant.id)
    assert len(deals) == 20, "a soft delete keeps the row"
    gone = sorted(k for k, d in deals.items() if d.deleted_at is not None)
    assert gone == ["FAKE-00005", "FAKE-00010", "FAKE-00015", "FAKE-00020"]
    assert len(await audit_trail(db, tenant.id, "deal.deleted")) == 4
    assert len(await audit_trail(db, tenant.id, "deal.updated")) == 0
    r = await client.get("/api/v1/deals", params={"system": "fake_crm", "limit": 100}, headers=tenant.headers(Role.ADMIN))
    assert len(r.json()["items"]) == 16


async def test_records_that_do_not_fit_a_deal_are_skipped_and_counted(client, app, db, tenant, start_worker, monkeypatch):
    import connectors.fake_crm as module

    real = module.fake_deal

    def with_bad_currency(config: FakeCRMConfig, index: int) -> Any:
        deal = real(config, index)
        return deal.model_copy(update={"currency": "dollars"}) if index == 3 else deal

    monkeypatch.setattr(module, "fake_deal", with_bad_currency)
    connection = await fake_crm(client, tenant)
    await start_worker()
    done = await settle(client, tenant, (await start_sync(client, tenant, connection["id"]))["id"])
    assert done["status"] == "succeeded"
    assert done["progress"] == {"records_read": 25, "records_written": 24, "records_skipped": 1, "pages": 3}
    assert "FAKE-00004" not in await stored_deals(db, tenant.id)


# --------------------------------------------------------------------------- one at a time


async def test_a_connection_has_one_sync_at_a_time(client, db, tenant):
    connection = await fake_crm(client, tenant)
    queued = await start_sync(client, tenant, connection["id"])  # no worker: it stays queued
    r = await client.post(f"/api/v1/connections/{connection['id']}/syncs", headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert queued["id"] in r.json()["detail"]

    # Past the check, the database itself refuses a second active sync (a partial unique index).
    with pytest.raises(IntegrityError):
        async with db.write(tenant.id) as session:
            twin = await session.get(Run, queued["id"])
            assert twin is not None
            session.add(Run(**{**{c.key: getattr(twin, c.key) for c in Run.__table__.columns}, "id": str(uuid4())}))

    r = await client.post(f"/api/v1/runs/{queued['id']}/cancel", headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    await start_sync(client, tenant, connection["id"])


async def test_two_concurrent_starts_queue_one_sync(client, tenant):
    connection = await fake_crm(client, tenant)
    answers = await asyncio.gather(
        *(client.post(f"/api/v1/connections/{connection['id']}/syncs", headers=tenant.headers(Role.ADMIN)) for _ in range(5))
    )
    assert sorted(r.status_code for r in answers) == [202, 409, 409, 409, 409]


async def test_starting_a_sync_refuses_bad_input_wrong_tenant_and_wrong_role(client, tenant, other_tenant):
    connection = await fake_crm(client, tenant)
    url = f"/api/v1/connections/{connection['id']}/syncs"
    r = await client.post(url, json={"mode": "sometimes"}, headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = await client.post(url, content=b"{not json", headers={**tenant.headers(Role.ADMIN), "content-type": "application/json"})
    assert r.status_code in (400, 422)
    assert (await client.post(url, headers=other_tenant.headers(Role.ADMIN))).status_code == 404
    assert (await client.post(url, headers=tenant.headers(Role.ANALYST))).status_code == 403
    assert (await client.post(url, headers=tenant.headers(Role.INTEGRATION_SERVICE))).status_code == 202

    other = await fake_crm(client, tenant, records=1)
    assert (await client.post(f"/api/v1/connections/{other['id']}/disable", headers=tenant.headers(Role.ADMIN))).status_code == 200
    r = await client.post(f"/api/v1/connections/{other['id']}/syncs", headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 409 and "disabled" in r.json()["detail"]
    r = await client.get("/api/v1/runs", params={"connection_id": other["id"]}, headers=tenant.headers(Role.ADMIN))
    assert r.json()["items"] == [], "a refused start leaves nothing behind"


# --------------------------------------------------------------------------- pauses, cancel, resume


async def test_an_unavailable_provider_pauses_the_sync_which_resumes_from_its_checkpoint(
    client, db, tenant, start_worker
):
    connection = await fake_crm(client, tenant, fail_on_page=2)
    runtime = await start_worker(sync_pause_seconds=1.0)
    run = await start_sync(client, tenant, connection["id"])

    paused = await wait_for(lambda: paused_run(client, tenant, run["id"]), timeout=20)
    assert paused["status"] == "queued" and paused["error"]["code"] == "PROVIDER_UNAVAILABLE"
    assert paused["resume_at"] is not None and paused["progress"]["pages"] == 1
    assert len(await stored_deals(db, tenant.id)) == 10, "the first page stays stored"
    assert await outbox(db, tenant.id, "sync.failed") == []

    await patch_config(client, tenant, connection["id"], fail_on_page=None)  # the provider is back
    await asyncio.sleep(1.1)
    await worker_jobs.requeue_unattended_runs(runtime)  # the sweep queues it once due (or the worker's own tick did)
    done = await settle(client, tenant, run["id"])
    assert done["status"] == "succeeded" and done["error"] is None and done["resume_at"] is None
    assert done["tries"] == 2
    assert done["progress"]["records_read"] == 25 and done["progress"]["records_written"] == 25
    assert len(await stored_deals(db, tenant.id)) == 25
    assert len(await audit_trail(db, tenant.id, "deal.created")) == 25


async def paused_run(client: httpx.AsyncClient, tenant: TenantHandle, run_id: str, tries: int = 1) -> dict[str, Any] | None:
    run = await get_run(client, tenant, run_id)
    return run if run["resume_at"] is not None and run["tries"] == tries else None


async def test_a_sync_that_keeps_pausing_fails_with_an_event(client, db, tenant, start_worker):
    connection = await fake_crm(client, tenant, fail_on_page=1)
    runtime = await start_worker(sync_pause_seconds=0.01, sync_max_pauses=2)
    run = await start_sync(client, tenant, connection["id"])
    for tries in (1, 2):
        paused = await wait_for(lambda tries=tries: paused_run(client, tenant, run["id"], tries), timeout=20)
        assert paused["status"] == "queued"
        await asyncio.sleep(1.05)  # resume_at is rounded up to the second
        await worker_jobs.requeue_unattended_runs(runtime)  # (or the worker's own tick did)
    failed = await settle(client, tenant, run["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "PROVIDER_UNAVAILABLE" and failed["tries"] == 3
    r = await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers(Role.ADMIN))
    assert r.json()["last_synced_at"] is None, "no sync of it ever succeeded"
    events = await outbox(db, tenant.id, "sync.failed")
    assert len(events) == 1 and events[0].payload["run"]["id"] == run["id"]
    r = await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers(Role.ADMIN))
    assert r.json()["status"] == "DEGRADED" and r.json()["last_error"]


async def test_a_sync_that_outlives_its_job_timeout_fails_like_any_sync_with_an_event(
    client, db, tenant, start_worker, monkeypatch
):
    connection = await fake_crm(client, tenant)

    async def never_answers(self: FakeDealStream, connector: Any, cursor: Any = None) -> Any:
        await asyncio.sleep(3600)
        yield  # an async generator, like the real one

    monkeypatch.setattr(FakeDealStream, "read", never_answers)
    await start_worker(worker_job_timeout_seconds=0.5)
    run = await start_sync(client, tenant, connection["id"])

    failed = await settle(client, tenant, run["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "TIMED_OUT", failed
    (event,) = await outbox(db, tenant.id, "sync.failed")
    assert event.payload["run"]["id"] == run["id"] and event.payload["run"]["error"]["code"] == "TIMED_OUT"
    r = await client.get(f"/api/v1/connections/{connection['id']}", headers=tenant.headers(Role.ADMIN))
    shown = r.json()
    assert shown["status"] == "DEGRADED" and shown["error_count"] == 1 and "0.5 s" in shown["last_error"]


async def test_a_running_sync_stops_at_its_next_page_when_cancelled(client, db, tenant, start_worker, monkeypatch):
    connection = await fake_crm(client, tenant, records=50)
    real_store = worker_syncs.syncs.store_page
    stored_pages = 0

    async def store_then_cancel(*args: Any, **kwargs: Any) -> Any:
        nonlocal stored_pages
        result = await real_store(*args, **kwargs)
        stored_pages += 1
        if stored_pages == 2:
            r = await client.post(f"/api/v1/runs/{args[2]}/cancel", headers=tenant.headers(Role.ADMIN))
            assert r.status_code == 200 and r.json()["cancel_requested"] is True
        return result

    monkeypatch.setattr(worker_syncs.syncs, "store_page", store_then_cancel)
    await start_worker()
    run = await start_sync(client, tenant, connection["id"])
    done = await settle(client, tenant, run["id"])
    assert done["status"] == "cancelled" and done["progress"]["pages"] == 3
    assert len(await stored_deals(db, tenant.id)) == 30
    assert await outbox(db, tenant.id, "sync.completed") == []


async def test_a_cancel_asked_for_before_a_pause_ends_the_sync_instead_of_pausing_it(
    client, db, tenant, start_worker, monkeypatch
):
    """The cancel comes after the first page's checkpoint (which did not see it), the
    provider's rate limit right after: the cancel wins over an hour's pause, during which
    the connection could not be synced."""
    connection = await fake_crm(client, tenant)
    real_read, real_store = FakeDealStream.read, worker_syncs.syncs.store_page

    async def rate_limited_after_the_first_page(self: FakeDealStream, connector: Any, cursor: Any = None) -> Any:
        async for page in real_read(self, connector, cursor):
            yield page
            raise RateLimited("fake_crm: over quota", retry_after=3600)

    async def store_then_cancel(*args: Any, **kwargs: Any) -> Any:
        result = await real_store(*args, **kwargs)
        r = await client.post(f"/api/v1/runs/{args[2]}/cancel", headers=tenant.headers(Role.ADMIN))
        assert r.status_code == 200 and r.json()["status"] == "running", r.text
        return result

    monkeypatch.setattr(FakeDealStream, "read", rate_limited_after_the_first_page)
    monkeypatch.setattr(worker_syncs.syncs, "store_page", store_then_cancel)
    await start_worker()
    run = await start_sync(client, tenant, connection["id"])

    async def stopped() -> dict[str, Any] | None:
        current = await get_run(client, tenant, run["id"])
        return current if current["status"] in runs.FINISHED or current["resume_at"] is not None else None

    done = await wait_for(stopped, timeout=20)
    assert done["status"] == "cancelled" and done["resume_at"] is None, done
    assert done["progress"]["pages"] == 1
    assert len(await stored_deals(db, tenant.id)) == 10
    assert await outbox(db, tenant.id, "sync.failed") == []
    await start_sync(client, tenant, connection["id"])  # the connection is free again


async def test_a_sync_killed_mid_way_resumes_and_ends_with_exactly_the_providers_records(
    client, app, settings, db, tenant, monkeypatch
):
    """The worker dies in the middle of storing the fifth page (its task cancelled inside
    the page's transaction, after the deals were written and before the commit); the run
    is worked again and carries on from its checkpoint. (tests/worker/test_sync_process.py
    does the same with a real process and SIGKILL.)"""
    connection = await fake_crm(client, tenant, records=95, page_size=10)
    real_progress = runs.record_progress
    calls = 0
    killed = asyncio.Event()

    async def dies_on_the_fifth_page(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 5:
            killed.set()
            await asyncio.sleep(3600)  # cancelled here, inside the page's transaction
        return await real_progress(*args, **kwargs)

    monkeypatch.setattr(runs, "record_progress", dies_on_the_fifth_page)
    run = await start_sync(client, tenant, connection["id"])
    hub = app.state.hub
    # A worker's parts without its job loop: this test drives the job itself.
    runtime = WorkerRuntime(
        settings, redis_url=settings.redis_url or "", db=hub.db, vault=hub.vault,
        connectors=hub.connectors, connector_host=hub.connector_host,
    )  # fmt: skip
    task = asyncio.create_task(worker_syncs.sync_connection(runtime, tenant.id, run["id"]))
    await asyncio.wait_for(killed.wait(), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    mid = await get_run(client, tenant, run["id"])
    assert mid["status"] == "running" and mid["progress"]["pages"] == 4
    assert len(await stored_deals(db, tenant.id)) == 40

    result = await worker_syncs.sync_connection(runtime, tenant.id, run["id"])
    assert result == {"succeeded": True}
    done = await get_run(client, tenant, run["id"])
    assert done["status"] == "succeeded" and done["tries"] == 2
    assert done["progress"]["records_read"] == 95 and done["progress"]["pages"] == 10

    config = FakeCRMConfig(records=95, page_size=10)
    deals = await stored_deals(db, tenant.id)
    assert sorted(deals) == [fake_deal(config, i).external_id for i in range(95)]
    assert all(d.version == 1 for d in deals.values()), "nothing was written twice"
    assert len(await audit_trail(db, tenant.id, "deal.created")) == 95
    assert len(await outbox(db, tenant.id, "deal.created")) == 95


def before_the_second_page(monkeypatch: pytest.MonkeyPatch, happen: Callable[[], Awaitable[None]]) -> None:
    """Make `happen()` just before the sync stores its second page (once)."""
    real_store, calls = worker_syncs.syncs.store_page, 0

    async def store_page(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            await happen()
        return await real_store(*args, **kwargs)

    monkeypatch.setattr(worker_syncs.syncs, "store_page", store_page)


async def test_a_worker_whose_sync_was_taken_over_writes_nothing_more_of_it(
    client, app, settings, db, tenant, monkeypatch
):
    """Worker A's heartbeat lapsed while it was alive: the sweep handed its run to worker B.
    A's next page is refused whole (its deals, the stream's cursor, the checkpoint) and A
    stops; B carries on from the last page A stored while it still held the run."""
    connection = await fake_crm(client, tenant)
    run = await start_sync(client, tenant, connection["id"])
    hub = app.state.hub

    def worker() -> WorkerRuntime:  # a worker's parts without its job loop
        return WorkerRuntime(
            settings, redis_url=settings.redis_url or "", db=hub.db, vault=hub.vault,
            connectors=hub.connectors, connector_host=hub.connector_host,
        )  # fmt: skip

    a, b = worker(), worker()
    real_store = worker_syncs.syncs.store_page

    async def taken_over() -> None:
        assert await runs.start(db, tenant.id, run["id"], worker_id=b.worker_id) is not None

    before_the_second_page(monkeypatch, taken_over)
    assert await worker_syncs.sync_connection(a, tenant.id, run["id"]) == {"lost": True}
    monkeypatch.setattr(worker_syncs.syncs, "store_page", real_store)

    mid = await get_run(client, tenant, run["id"])
    assert mid["status"] == "running" and mid["tries"] == 2 and mid["progress"]["pages"] == 1
    assert len(await stored_deals(db, tenant.id)) == 10
    async with db.read(tenant.id) as session:
        cursor = (await session.execute(select(SyncCursor.cursor).where(SyncCursor.connection_id == connection["id"]))).scalar_one()
    config = FakeCRMConfig(records=25, page_size=10)
    assert datetime.fromisoformat(cursor) == fake_deal(config, 9).updated_at

    assert await worker_syncs.sync_connection(b, tenant.id, run["id"]) == {"succeeded": True}
    done = await get_run(client, tenant, run["id"])
    assert done["status"] == "succeeded" and done["progress"]["records_read"] == 25
    assert sorted(await stored_deals(db, tenant.id)) == [fake_deal(config, i).external_id for i in range(25)]
    assert len(await outbox(db, tenant.id, "sync.completed")) == 1


async def test_a_stale_attempt_can_neither_pause_nor_end_the_run_nor_can_its_jobs_give_up(client, db, tenant):
    connection = await fake_crm(client, tenant)
    run_id = (await start_sync(client, tenant, connection["id"]))["id"]
    a = await runs.start(db, tenant.id, run_id, worker_id="worker-a")
    b = await runs.start(db, tenant.id, run_id, worker_id="worker-b")  # A's heartbeat lapsed
    assert a is not None and b is not None and (a.attempt, b.attempt) == (1, 2)

    with pytest.raises(runs.RunLost):
        await core_syncs.pause(db, tenant.id, run_id, attempt=a.attempt, resume_at=datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(runs.RunLost):
        await core_syncs.finish(db, tenant.id, run_id, connection["id"], status=runs.SUCCEEDED, attempt=a.attempt)
    error = {"code": "TIMED_OUT", "message": "A's job timed out"}
    await core_syncs.finish(db, tenant.id, run_id, connection["id"], status=runs.FAILED, error=error, worker_id="worker-a")
    current = await get_run(client, tenant, run_id)
    assert current["status"] == "running" and current["resume_at"] is None and current["error"] is None
    assert await outbox(db, tenant.id, "sync.failed") == []

    # B pauses it (a rate limit): A's job giving up now must not fail B's paused run either.
    assert await core_syncs.pause(db, tenant.id, run_id, attempt=b.attempt, resume_at=datetime.now(UTC))
    await core_syncs.finish(db, tenant.id, run_id, connection["id"], status=runs.FAILED, error=error, worker_id="worker-a")
    assert (await get_run(client, tenant, run_id))["status"] == "queued"
    assert await outbox(db, tenant.id, "sync.failed") == []

    c = await runs.start(db, tenant.id, run_id, worker_id="worker-c")
    assert c is not None
    await core_syncs.finish(db, tenant.id, run_id, connection["id"], status=runs.SUCCEEDED, attempt=c.attempt)
    assert (await get_run(client, tenant, run_id))["status"] == "succeeded"


async def test_a_page_that_failed_to_store_is_read_again_whatever_the_database_raised(
    client, db, tenant, start_worker, monkeypatch
):
    """The database times out storing the second page with the built-in TimeoutError (as
    asyncpg's connect timeout surfaces): that is no provider timeout, and the checkpoint
    must not move past the page that was never stored."""
    connection = await fake_crm(client, tenant)

    async def times_out() -> None:
        raise TimeoutError

    before_the_second_page(monkeypatch, times_out)
    runtime = await start_worker(worker_job_retry_seconds=0.05, sync_pause_seconds=0.01)
    run = await start_sync(client, tenant, connection["id"])

    async def finished() -> dict[str, Any] | None:
        await worker_jobs.requeue_unattended_runs(runtime)  # resumes it, were it paused
        current = await get_run(client, tenant, run["id"])
        return current if current["status"] in runs.FINISHED else None

    done = await wait_for(finished, timeout=20, interval=0.2)
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["progress"]["records_read"] == 25 and done["progress"]["pages"] == 3
    config = FakeCRMConfig(records=25, page_size=10)
    assert sorted(await stored_deals(db, tenant.id)) == [fake_deal(config, i).external_id for i in range(25)]
    assert len(await audit_trail(db, tenant.id, "deal.created")) == 25


# --------------------------------------------------------------------------- schedules


async def test_a_schedule_starts_syncs_and_skips_a_tick_while_one_is_active(client, db, tenant, start_worker):
    body = {"connector_key": "fake_crm", "name": "scheduled", "config": {"records": 5}, "sync_schedule": {"interval_seconds": 900}}
    r = await client.post("/api/v1/connections", json=body, headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 201, r.text
    connection = r.json()
    assert connection["sync_schedule"] == {"interval_seconds": 900, "cron": None}
    next_at = datetime.fromisoformat(connection["next_sync_at"])
    assert timedelta(seconds=890) < next_at - datetime.now(UTC) <= timedelta(seconds=900)

    runtime = await start_worker()
    assert await worker_syncs.start_scheduled_syncs(runtime) == 0, "not due yet"
    async with db.write(tenant.id) as session:  # as if 15 minutes had passed
        await session.execute(update(Connection).where(Connection.id == connection["id"]).values(next_sync_at=datetime.now(UTC)))
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert await worker_syncs.start_scheduled_syncs(runtime, now) == 1
    r = await client.get("/api/v1/runs", params={"connection_id": connection["id"]}, headers=tenant.headers(Role.ADMIN))
    (run,) = r.json()["items"]
    assert run["params"]["trigger"] == "schedule" and run["created_by"] == "system:scheduler"
    async with db.read(tenant.id) as session:
        moved = (await session.execute(select(Connection.next_sync_at).where(Connection.id == connection["id"]))).scalar_one()
    assert moved == now + timedelta(seconds=900)

    # Due again while the first is still active: that tick is skipped, the schedule moves on.
    later = moved + timedelta(seconds=1)
    await settle(client, tenant, run["id"])
    async with db.write(tenant.id) as session:  # as if it were still running
        await session.execute(update(Run).where(Run.id == run["id"]).values(status="running"))
    assert await worker_syncs.start_scheduled_syncs(runtime, later) == 0
    async with db.read(tenant.id) as session:
        after = (await session.execute(select(Connection.next_sync_at).where(Connection.id == connection["id"]))).scalar_one()
    assert after == later + timedelta(seconds=900)


async def test_schedules_are_validated_changed_and_removed(client, tenant):
    url = "/api/v1/connections"
    bad = [
        {"interval_seconds": 5},
        {"cron": "61 * * * *"},
        {"cron": "* * *"},
        {"cron": "0 0 30 2 *"},  # never matches
        {"interval_seconds": 900, "cron": "* * * * *"},
        {},
    ]
    for schedule in bad:
        body = {"connector_key": "fake_crm", "name": f"bad {schedule}", "config": {}, "sync_schedule": schedule}
        r = await client.post(url, json=body, headers=tenant.headers(Role.ADMIN))
        assert r.status_code == 422, (schedule, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    r = await client.get(url, headers=tenant.headers(Role.ADMIN))
    assert r.json()["items"] == [], "nothing was created"

    connection = await fake_crm(client, tenant)
    assert connection["sync_schedule"] is None and connection["next_sync_at"] is None
    r = await client.patch(
        f"{url}/{connection['id']}", json={"sync_schedule": {"cron": "0  9 * * 1-5"}}, headers=tenant.headers(Role.ADMIN)
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["sync_schedule"] == {"interval_seconds": None, "cron": "0 9 * * 1-5"}
    next_at = datetime.fromisoformat(patched["next_sync_at"])
    assert (next_at.hour, next_at.minute) == (9, 0) and next_at.weekday() < 5
    r = await client.patch(f"{url}/{connection['id']}", json={"name": "renamed"}, headers=tenant.headers(Role.ADMIN))
    assert r.json()["sync_schedule"] == patched["sync_schedule"], "absent keeps the schedule"
    r = await client.patch(f"{url}/{connection['id']}", json={"sync_schedule": None}, headers=tenant.headers(Role.ADMIN))
    assert r.json()["sync_schedule"] is None and r.json()["next_sync_at"] is None


async def test_a_long_sync_works_in_slices_each_carrying_on_from_the_last(client, db, tenant, start_worker):
    connection = await fake_crm(client, tenant, records=30, page_size=10)
    runtime = await start_worker(sync_slice_seconds=0.001)  # every page ends a slice
    run = await start_sync(client, tenant, connection["id"])
    for tries in (1, 2, 3):
        sliced = await wait_for(lambda tries=tries: paused_run(client, tenant, run["id"], tries), timeout=20)
        assert sliced["status"] == "queued" and sliced["error"] is None, "a slice is no failure"
        assert sliced["progress"]["pages"] == tries
        await worker_jobs.requeue_unattended_runs(runtime)
    done = await settle(client, tenant, run["id"])
    # The fourth slice finds nothing after the last page's cursor.
    assert done["status"] == "succeeded" and done["tries"] == 4
    assert done["progress"] == {"records_read": 30, "records_written": 30, "records_skipped": 0, "pages": 3}
    assert len(await stored_deals(db, tenant.id)) == 30


async def test_a_sync_of_a_connection_deleted_meanwhile_fails_with_an_event(client, app, settings, db, tenant):
    connection = await fake_crm(client, tenant)
    run = await start_sync(client, tenant, connection["id"])
    r = await client.delete(f"/api/v1/connections/{connection['id']}", headers=tenant.headers(Role.ADMIN))
    assert r.status_code == 204
    hub = app.state.hub
    runtime = WorkerRuntime(
        settings, redis_url=settings.redis_url or "", db=hub.db, vault=hub.vault,
        connectors=hub.connectors, connector_host=hub.connector_host,
    )  # fmt: skip
    assert await worker_syncs.sync_connection(runtime, tenant.id, run["id"]) == {"failed": "CONNECTION_GONE"}
    failed = await get_run(client, tenant, run["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "CONNECTION_GONE"
    (event,) = await outbox(db, tenant.id, "sync.failed")
    assert event.resource_type == "run" and event.resource_id == run["id"]


def test_a_pause_lasts_as_long_as_the_providers_retry_after_asks(settings):
    """A daily quota answers 429 with a Retry-After of hours: the sync waits that long (up
    to a day), rather than coming back every hour and giving up after a dozen pauses; a
    provider away without one gets the doubling backoff, capped lower."""
    from types import SimpleNamespace

    from connectors.sdk import ProviderUnavailable, RateLimited
    from worker.syncs import _pause_for

    runtime = SimpleNamespace(settings=settings.model_copy(update={"sync_pause_seconds": 60.0, "sync_max_pause_seconds": 3600.0}))
    assert _pause_for(runtime, RateLimited("daily quota", retry_after=7 * 3600), 1) == 7 * 3600
    assert _pause_for(runtime, RateLimited("daily quota", retry_after=10**9), 1) == 86400
    assert _pause_for(runtime, ProviderUnavailable("down"), 1) == 60
    assert _pause_for(runtime, ProviderUnavailable("down"), 9) == 3600
