"""Webhook delivery end to end: outbox -> relay -> signed POST -> attempt log, with a
real worker (in-process), a real receiver on 127.0.0.1, and the SDK's strict verifier."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import orjson
import pytest
from aiohttp import web
from sqlalchemy import select

from connectors.sdk import WebhookVerificationError, verify_webhook
from core.models import OutboxEvent
from core.roles import Role
from hub.outbox_nudge import notify_outbox
from tests.conftest import TenantHandle, deal_body
from tests.worker.conftest import wait_for


async def make_endpoint(client: Any, tenant: TenantHandle, url: str, event_types: list[str] | None = None) -> tuple[str, str]:
    r = await client.post(
        "/api/v1/webhook-endpoints", json={"url": url, "event_types": event_types or ["*"]}, headers=tenant.headers()
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["secret"]


async def make_deal(client: Any, app: Any, tenant: TenantHandle, name: str = "Acme") -> str:
    r = await client.post("/api/v1/deals", json=deal_body(name), headers=tenant.headers())
    assert r.status_code == 201, r.text
    notify_outbox(app.state.hub)
    return r.json()["id"]


async def deliveries_of(client: Any, tenant: TenantHandle, endpoint_id: str, **params: Any) -> list[dict[str, Any]]:
    r = await client.get(
        f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries", params={"limit": 200, **params}, headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def attempts_of(client: Any, tenant: TenantHandle, endpoint_id: str, delivery_id: str) -> list[dict[str, Any]]:
    r = await client.get(
        f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/attempts", headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def settled(client: Any, tenant: TenantHandle, endpoint_id: str, count: int = 1) -> list[dict[str, Any]]:
    """Wait until `count` deliveries of the endpoint are no longer pending."""

    async def done() -> list[dict[str, Any]] | None:
        items = await deliveries_of(client, tenant, endpoint_id)
        finished = [d for d in items if d["status"] != "pending"]
        return finished if len(finished) >= count else None

    result: list[dict[str, Any]] = await wait_for(done)
    return result


def answer(*statuses: int, headers: dict[str, str] | None = None) -> Any:
    """A behaviour answering the n-th request for an event with statuses[n-1] (then the last)."""

    async def behave(request: web.Request, n: int) -> web.Response:
        status = statuses[min(n, len(statuses)) - 1]
        return web.Response(status=status, text=f"answer {status}", headers=headers if status >= 300 else None)

    return behave


# --------------------------------------------------------------------------- the happy path


async def test_an_event_is_delivered_signed_per_standard_webhooks(client, app, tenant, receiver, start_worker):
    await start_worker()
    endpoint_id, secret = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    deal_id = await make_deal(client, app, tenant)

    await wait_for(lambda: receiver.requests)
    (got,) = receiver.requests
    # Any Standard Webhooks verifier accepts it: the SDK's strict one does.
    verify_webhook(secret, got.headers, got.body)
    with pytest.raises(WebhookVerificationError):
        verify_webhook("whsec_" + base64.b64encode(b"x" * 32).decode(), got.headers, got.body)
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 10
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-signature"].startswith("v1,") and " " not in got.headers["webhook-signature"]
    envelope = orjson.loads(got.body)
    assert set(envelope) == {"event_id", "event_type", "occurred_at", "tenant_id", "resource_type", "resource_id", "payload"}
    assert envelope["event_type"] == "deal.created"
    assert envelope["resource_id"] == deal_id and envelope["tenant_id"] == tenant.id
    assert got.headers["webhook-id"] == envelope["event_id"]

    (delivery,) = await settled(client, tenant, endpoint_id)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1
    assert delivery["event_id"] == envelope["event_id"]
    (attempt,) = await attempts_of(client, tenant, endpoint_id, delivery["id"])
    assert attempt["status_code"] == 200 and attempt["outcome"] == "success"
    assert attempt["response_excerpt"] == "ok" and attempt["duration_ms"] >= 0
    async with app.state.hub.db.read(tenant.id) as session:
        event = (await session.execute(select(OutboxEvent).where(OutboxEvent.id == envelope["event_id"]))).scalar_one()
    assert event.published_at is not None


async def test_an_endpoint_answering_500_then_200_gets_the_event_on_a_retry(client, app, tenant, receiver, start_worker):
    receiver.behaviour = answer(500, 200)
    await start_worker()
    endpoint_id, secret = await make_endpoint(client, tenant, receiver.url)
    await make_deal(client, app, tenant)

    (delivery,) = await settled(client, tenant, endpoint_id)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 2
    attempts = await attempts_of(client, tenant, endpoint_id, delivery["id"])
    assert [(a["number"], a["status_code"], a["outcome"]) for a in attempts] == [(1, 500, "http_error"), (2, 200, "success")]
    assert attempts[0]["next_attempt_at"] is not None and attempts[0]["response_excerpt"] == "answer 500"
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # stable across retries
    for got in receiver.requests:
        verify_webhook(secret, got.headers, got.body)


# --------------------------------------------------------------------------- how answers are read


async def test_410_gone_stops_the_delivery_and_disables_the_endpoint_with_an_event(
    client, app, tenant, receiver, start_worker
):
    async def behave(request: web.Request, n: int) -> web.Response:
        return web.Response(status=200 if "watcher" in request.query_string else 410)

    receiver.behaviour = behave
    await start_worker()
    endpoint_id, _ = await make_endpoint(client, tenant, f"{receiver.url}?gone", ["deal.*"])
    # The admin's own endpoint, told when the hub disables one.
    await make_endpoint(client, tenant, f"{receiver.url}?watcher", ["webhook_endpoint.*"])
    await make_deal(client, app, tenant)

    (delivery,) = await settled(client, tenant, endpoint_id)
    assert delivery["status"] == "failed" and delivery["attempts"] == 1 and delivery["last_status_code"] == 410

    async def disabled() -> dict[str, Any] | None:
        got = (await client.get(f"/api/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers())).json()
        return got if not got["enabled"] else None

    endpoint = await wait_for(disabled)
    assert endpoint["disabled_reason"] == "gone" and endpoint["disabled_at"]
    await wait_for(lambda: receiver.at("watcher"))
    (told,) = receiver.at("watcher")
    event = orjson.loads(told.body)
    assert event["event_type"] == "webhook_endpoint.disabled" and event["resource_id"] == endpoint_id
    assert event["payload"]["reason"] == "gone"
    # New events are no longer fanned out to it.
    await make_deal(client, app, tenant, "Beta")
    await asyncio.sleep(0.5)
    assert len(await deliveries_of(client, tenant, endpoint_id)) == 1
    assert len(receiver.at("gone")) == 1


async def test_429_is_retried_no_sooner_than_retry_after(client, app, tenant, receiver, start_worker):
    receiver.behaviour = answer(429, 200, headers={"Retry-After": "1"})
    await start_worker()
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    await make_deal(client, app, tenant)

    (delivery,) = await settled(client, tenant, endpoint_id)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 2
    first, second = (r.at for r in receiver.requests)
    assert second - first >= 0.95  # the schedule alone says 0.05 s
    attempts = await attempts_of(client, tenant, endpoint_id, delivery["id"])
    assert attempts[0]["status_code"] == 429


async def test_redirects_are_failures_and_never_followed(client, app, tenant, receiver, start_worker):
    elsewhere = f"/{receiver.token}/elsewhere"

    async def redirect(request: web.Request, n: int) -> web.Response:
        return web.Response(status=302 if n == 1 else 200, headers={"Location": elsewhere})

    receiver.behaviour = redirect
    await start_worker()
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    await make_deal(client, app, tenant)

    (delivery,) = await settled(client, tenant, endpoint_id)
    attempts = await attempts_of(client, tenant, endpoint_id, delivery["id"])
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [(302, "http_error"), (200, "success")]
    assert [r.path for r in receiver.requests] == [receiver.url.split(receiver.base)[1]] * 2


async def test_a_timeout_is_retried(client, app, tenant, receiver, start_worker):
    async def slow_first(request: web.Request, n: int) -> web.Response:
        if n == 1:
            await asyncio.sleep(1.0)
        return web.Response(text="ok")

    receiver.behaviour = slow_first
    await start_worker(webhook_timeout_seconds=0.3)
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    await make_deal(client, app, tenant)

    (delivery,) = await settled(client, tenant, endpoint_id)
    attempts = await attempts_of(client, tenant, endpoint_id, delivery["id"])
    assert [(a["outcome"], a["status_code"]) for a in attempts] == [("timeout", None), ("success", 200)]
    assert delivery["status"] == "succeeded"


async def test_a_delivery_failing_every_attempt_ends_failed_and_can_be_replayed(
    client, app, tenant, receiver, start_worker
):
    receiver.behaviour = answer(500, 500, 500, 500, 200)
    await start_worker()
    endpoint_id, secret = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    await make_deal(client, app, tenant)

    (delivery,) = await settled(client, tenant, endpoint_id)
    assert delivery["status"] == "failed" and delivery["attempts"] == 4  # 1 + len(schedule)
    assert delivery["next_attempt_at"] is None and delivery["last_error"] == "HTTP 500"

    url = f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery['id']}/replay"
    r = await client.post(url, headers=tenant.headers())
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.json()["attempts"] == 0

    async def succeeded() -> bool:
        got = await client.get(f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery['id']}", headers=tenant.headers())
        return got.json()["status"] == "succeeded"

    await wait_for(succeeded)
    attempts = await attempts_of(client, tenant, endpoint_id, delivery["id"])
    assert [a["number"] for a in attempts] == [1, 2, 3, 4, 5]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    for got in receiver.requests:
        verify_webhook(secret, got.headers, got.body)
    # Replaying a delivery still pending is refused; so is one of a disabled endpoint.
    r = await client.patch(f"/api/v1/webhook-endpoints/{endpoint_id}", json={"enabled": False}, headers=tenant.headers())
    assert r.status_code == 200
    r = await client.post(url, headers=tenant.headers())
    assert r.status_code == 409 and r.json()["code"] == "CONFLICT"


async def test_failed_deliveries_in_a_window_are_replayed_by_a_run(client, app, tenant, receiver, start_worker):
    healthy = False

    async def behave(request: web.Request, n: int) -> web.Response:
        return web.Response(status=200 if healthy else 503)

    receiver.behaviour = behave
    await start_worker()
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    since = time.time()
    for i in range(5):
        await make_deal(client, app, tenant, f"deal {i}")
    failed = await settled(client, tenant, endpoint_id, 5)
    assert {d["status"] for d in failed} == {"failed"}

    healthy = True
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since - 5)) + "Z"
    r = await client.post(f"/api/v1/webhook-endpoints/{endpoint_id}/replay", json={"since": start}, headers=tenant.headers())
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["status"] == "queued" and run["kind"] == "webhook_replay" and run["subject_id"] == endpoint_id
    assert r.headers["location"] == f"/api/v1/runs/{run['id']}"

    async def finished() -> dict[str, Any] | None:
        got = (await client.get(r.headers["location"], headers=tenant.headers())).json()
        return got if got["status"] == "succeeded" else None

    done = await wait_for(finished)
    assert done["progress"] == {"records_read": 5, "records_written": 5, "records_skipped": 0, "pages": 1}
    assert done["started_at"] and done["finished_at"] and done["error"] is None

    async def all_delivered() -> bool:
        items = await deliveries_of(client, tenant, endpoint_id)
        return all(d["status"] == "succeeded" for d in items)

    await wait_for(all_delivered)
    # A run is safe to poll: its ETag holds while it does not change.
    first = await client.get(r.headers["location"], headers=tenant.headers())
    again = await client.get(r.headers["location"], headers=tenant.headers(**{"If-None-Match": first.headers["etag"]}))
    assert again.status_code == 304
    listed = await client.get("/api/v1/runs", params={"status": "succeeded"}, headers=tenant.headers(Role.INTEGRATION_SERVICE))
    assert run["id"] in [x["id"] for x in listed.json()["items"]]


# --------------------------------------------------------------------------- who gets what


async def test_event_type_filters_and_test_events(client, app, tenant, receiver, start_worker):
    await start_worker()
    only_updates, _ = await make_endpoint(client, tenant, f"{receiver.url}?updates", ["deal.updated"])
    all_id, _ = await make_endpoint(client, tenant, f"{receiver.url}?all", ["*"])

    deal_id = await make_deal(client, app, tenant)
    r = await client.patch(f"/api/v1/deals/{deal_id}", json={"stage": "ic_review"}, headers=tenant.headers())
    assert r.status_code == 200
    notify_outbox(app.state.hub)
    r = await client.post(f"/api/v1/webhook-endpoints/{only_updates}/test", headers=tenant.headers())
    assert r.status_code == 202, r.text
    test_event = r.json()["event_id"]

    await settled(client, tenant, only_updates, 2)
    await settled(client, tenant, all_id, 2)
    by_endpoint = {
        eid: sorted(d["event_type"] for d in await deliveries_of(client, tenant, eid)) for eid in (only_updates, all_id)
    }
    # The test event goes to its endpoint alone, whatever the filters.
    assert by_endpoint[only_updates] == ["deal.updated", "webhook_endpoint.test"]
    assert by_endpoint[all_id] == ["deal.created", "deal.updated"]
    (test_request,) = receiver.for_event(test_event)
    assert orjson.loads(test_request.body)["payload"]["endpoint_id"] == only_updates


async def test_rotation_signs_with_both_secrets_during_the_overlap(client, app, tenant, receiver, start_worker, monkeypatch):
    monkeypatch.setattr("worker.delivery.TARGET_TTL_SECONDS", 0.1)
    await start_worker()
    endpoint_id, old = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    r = await client.post(
        f"/api/v1/webhook-endpoints/{endpoint_id}/rotate-secret", json={"overlap_seconds": 1}, headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new.startswith("whsec_") and new != old and r.json()["previous_secret_expires_at"]
    await asyncio.sleep(0.1)
    await make_deal(client, app, tenant, "during")
    await wait_for(lambda: len(receiver.requests) == 1)
    during = receiver.requests[0]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    verify_webhook(old, during.headers, during.body)
    verify_webhook(new, during.headers, during.body)

    await asyncio.sleep(1.2)  # past the overlap (and the worker's endpoint cache)
    await make_deal(client, app, tenant, "after")
    await wait_for(lambda: len(receiver.requests) == 2)
    after = receiver.requests[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    verify_webhook(new, after.headers, after.body)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(old, after.headers, after.body)


async def test_an_endpoint_failing_for_longer_than_allowed_is_disabled(client, app, tenant, receiver, start_worker):
    receiver.behaviour = answer(500)
    # Retries to spare: on a loaded machine the disabling may come a few attempts late;
    # what matters is that it comes before the schedule runs out.
    await start_worker(webhook_retry_schedule=[0.3] * 20, webhook_disable_after_seconds=0.5)
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    await make_deal(client, app, tenant)

    async def disabled() -> dict[str, Any] | None:
        got = (await client.get(f"/api/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers())).json()
        return got if not got["enabled"] else None

    endpoint = await wait_for(disabled)
    assert endpoint["disabled_reason"] == "failing" and endpoint["failing_since"]
    (delivery,) = await settled(client, tenant, endpoint_id)
    assert delivery["status"] == "failed"
    attempts = await attempts_of(client, tenant, endpoint_id, delivery["id"])
    assert attempts[-1]["outcome"] == "endpoint_disabled" and len(attempts) < 21
    async with app.state.hub.db.read(tenant.id) as session:
        event = (
            await session.execute(select(OutboxEvent).where(OutboxEvent.event_type == "webhook_endpoint.disabled"))
        ).scalar_one()
    assert event.payload["reason"] == "failing" and event.payload["endpoint"]["id"] == endpoint_id

    # Enabling it again forgets the failing period.
    r = await client.patch(f"/api/v1/webhook-endpoints/{endpoint_id}", json={"enabled": True}, headers=tenant.headers())
    assert r.json()["enabled"] is True and r.json()["failing_since"] is None and r.json()["disabled_reason"] is None


async def test_a_slow_endpoint_does_not_delay_another(client, app, tenant, receiver, start_worker):
    slow_started: list[float] = []

    async def slow(request: web.Request, n: int) -> web.Response:
        if "slow" in request.query_string:
            slow_started.append(time.monotonic())
            await asyncio.sleep(0.5)
        return web.Response(text="ok")

    receiver.behaviour = slow
    await start_worker(webhook_endpoint_concurrency=2, webhook_timeout_seconds=2.0, webhook_lease_seconds=30.0)
    slow_id, _ = await make_endpoint(client, tenant, f"{receiver.url}?slow", ["deal.*"])
    fast_id, _ = await make_endpoint(client, tenant, f"{receiver.url}?fast", ["deal.*"])
    began = time.monotonic()
    r = await client.post(
        "/api/v1/deals/batch-upsert",
        json={"items": [{"system": "crm", "external_id": f"s{i}", "deal": deal_body(f"d{i}")} for i in range(6)]},
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text
    notify_outbox(app.state.hub)

    await settled(client, tenant, fast_id, 6)
    fast_done = time.monotonic() - began
    assert fast_done < 1.0, fast_done  # the slow endpoint needs 6 x 0.5 s / 2 lanes = 1.5 s
    slow_items = await deliveries_of(client, tenant, slow_id)
    assert sum(d["status"] == "succeeded" for d in slow_items) <= 4
    # ...and at most 2 of its requests were ever in flight at once.
    await settled(client, tenant, slow_id, 6)
    starts = sorted(slow_started)
    assert all(b - a > 0.4 for a, b in zip(starts, starts[2:], strict=False))


# --------------------------------------------------------------------------- where it may go


async def test_the_worker_refuses_private_addresses_unless_allowed(client, app, tenant, receiver, start_worker):
    # The API allows the receiver's loopback URL (the test settings allow private
    # addresses); this worker does not, and must not send there.
    await start_worker(webhooks_allow_private=False)
    literal_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    named_id, _ = await make_endpoint(client, tenant, receiver.url.replace("127.0.0.1", "localhost"), ["deal.*"])
    await make_deal(client, app, tenant)

    for endpoint_id in (literal_id, named_id):
        (delivery,) = await settled(client, tenant, endpoint_id)
        attempts = await attempts_of(client, tenant, endpoint_id, delivery["id"])
        assert {a["outcome"] for a in attempts} == {"address_refused"}, attempts
        assert "loopback" in attempts[0]["error"]
    assert receiver.requests == []


async def test_two_workers_relay_and_deliver_each_event_once(client, app, tenant, receiver, start_worker):
    await start_worker()
    await start_worker()
    endpoint_id, secret = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    r = await client.post(
        "/api/v1/deals/batch-upsert",
        json={"items": [{"system": "crm", "external_id": f"x{i}", "deal": deal_body(f"d{i}")} for i in range(100)]},
        headers=tenant.headers(),
    )
    assert r.status_code == 200
    notify_outbox(app.state.hub)
    await settled(client, tenant, endpoint_id, 100)
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == 100
    for got in receiver.requests:
        verify_webhook(secret, got.headers, got.body)


async def test_deleting_an_endpoint_deletes_its_deliveries(client, app, tenant, receiver, start_worker):
    await start_worker()
    endpoint_id, _ = await make_endpoint(client, tenant, receiver.url, ["deal.*"])
    await make_deal(client, app, tenant)
    (delivery,) = await settled(client, tenant, endpoint_id)
    r = await client.delete(f"/api/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers())
    assert r.status_code == 204
    r = await client.get(f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery['id']}", headers=tenant.headers())
    assert r.status_code == 404
    assert uuid.UUID(delivery["id"])


async def test_a_worker_that_cannot_open_the_signing_secret_sends_nothing_and_leaves_the_delivery_pending(
    client, app, tenant, receiver, settings, start_worker
):
    """During a vault key roll-out a worker may lack the key an endpoint's secret is sealed
    under: it cannot sign, so it must neither send nor fail the delivery (the endpoint is
    fine), and it leaves the endpoint's later deliveries to other workers; a worker holding
    the key delivers them."""
    from core.vault import Vault, generate_key_line, parse_keyring
    from tests.worker.conftest import FAST
    from worker.runtime import WorkerRuntime

    hub = app.state.hub
    keyless = WorkerRuntime(
        settings.model_copy(update=FAST), redis_url=settings.redis_url or "", db=hub.db,
        vault=Vault(parse_keyring(generate_key_line("elsewhere"))), connectors=hub.connectors,
        connector_host=hub.connector_host,
    )  # fmt: skip
    await keyless.start()
    try:
        endpoint_id, secret = await make_endpoint(client, tenant, receiver.url, ["deal.created"])
        await make_deal(client, app, tenant)
        assert await wait_for(lambda: keyless.metrics.secrets_unreadable._value.get() >= 1)
        assert receiver.requests == []
        (delivery,) = await deliveries_of(client, tenant, endpoint_id)
        assert (delivery["status"], delivery["attempts"]) == ("pending", 0)
        await make_deal(client, app, tenant, "Later")
        later = await wait_for(lambda: leases_of(hub.db, endpoint_id, expected=2))
        assert sorted(later, key=str) == sorted([keyless.worker_id, None], key=str), "the later one is not taken"
    finally:
        await keyless.stop()
    await start_worker()
    await settled(client, tenant, endpoint_id, 2)
    assert len(receiver.requests) == 2
    for sent in receiver.requests:
        verify_webhook(secret, sent.headers, sent.body)


async def leases_of(db: Any, endpoint_id: str, *, expected: int) -> list[str | None] | None:
    """The lease owners of the endpoint's deliveries, once there are `expected` of them."""
    from core.models import WebhookDelivery

    async with db.read(None) as session:
        stmt = select(WebhookDelivery.lease_owner).where(WebhookDelivery.endpoint_id == endpoint_id)
        owners = list((await session.execute(stmt.execution_options(cross_tenant=True))).scalars())
    return owners if len(owners) == expected else None
