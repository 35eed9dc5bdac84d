"""A Salesforce sync worked by a real `hub worker` process, SIGKILLed mid-way: a second
worker takes the orphaned run over (the first one's heartbeat has expired) and the sync
ends with exactly the provider's records, none written twice. The provider is the local
stand-in of bench/salesforce_server.py, in a process of its own."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from sqlalchemy import func, select

from bench import salesforce_server
from core.changes import ChangeContext, mutation
from core.connections import store_token
from core.identity import Principal
from core.models import AuditEvent, Deal, DealRef
from core.roles import Role
from tests.hub.integration_fixtures import create_connection
from tests.worker.conftest import wait_for
from tests.worker.test_worker_process import hub_worker, worker_env

RECORDS, PAGE, DELETED = 6000, 250, 40
TOKEN = "00Dtest!sync.process.access.token"


@pytest.mark.slow
async def test_a_sync_killed_with_its_worker_resumes_and_ends_with_exactly_the_providers_records(
    client, app, settings, db, tenant
):
    connection = await create_connection(client, tenant, "salesforce", name="process sync", config={})
    with salesforce_server.running(records=RECORDS, page_size=PAGE, deleted=DELETED, page_delay=0.08, token=TOKEN) as instance_url:
        context = ChangeContext(Principal(tenant.id, "user", "test", frozenset({Role.ADMIN})))
        async with mutation(db, context) as m:
            await store_token(
                m, app.state.hub.vault, connection["id"],
                {"access_token": TOKEN, "instance_url": instance_url, "token_type": "Bearer"}, refreshed=False,
            )  # fmt: skip
        env = {**worker_env(settings), "HUB_WORKER_HEARTBEAT_SECONDS": "0.3", "HUB_CONNECTORS": "salesforce"}

        r = await client.post(f"/api/v1/connections/{connection['id']}/syncs", headers=tenant.headers(Role.ADMIN))
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]

        async def run() -> dict[str, Any]:
            return (await client.get(f"/api/v1/runs/{run_id}", headers=tenant.headers(Role.ADMIN))).json()

        with hub_worker(env) as first:
            await wait_for(lambda: _pages_at_least(run, 6), timeout=60)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        at_kill = await run()
        assert at_kill["status"] == "running" and at_kill["progress"]["pages"] < (RECORDS - DELETED) // PAGE

        with hub_worker(env):
            done = await wait_for(lambda: _finished(run), timeout=90)
    assert done["status"] == "succeeded", done
    assert done["tries"] == 2

    live = RECORDS - DELETED
    async with db.read(tenant.id) as session:
        ids = [
            e for (e,) in await session.execute(
                select(DealRef.external_id).join(Deal, Deal.id == DealRef.deal_id)
                .where(DealRef.system == "salesforce", Deal.deleted_at.is_(None))
            )
        ]  # fmt: skip
        versions = {v for (v,) in await session.execute(select(Deal.version))}
        created = (
            await session.execute(select(func.count()).select_from(AuditEvent).where(AuditEvent.event_type == "deal.created"))
        ).scalar_one()
    assert len(ids) == len(set(ids)) == live
    assert set(ids) == {f"006{n:015d}" for n in range(DELETED, RECORDS)}
    assert versions == {1} and created == live, "no record was written twice"


async def _pages_at_least(run: Any, pages: int) -> bool:
    current = await run()
    return current["progress"]["pages"] >= pages


async def _finished(run: Any) -> dict[str, Any] | None:
    current = await run()
    return current if current["status"] in ("succeeded", "failed", "cancelled") else None
