"""Fixtures for the worker: a webhook receiver (a real aiohttp server on 127.0.0.1), a
factory of in-process workers with fast retry schedules, and helpers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from core.settings import Settings
from worker.runtime import WorkerRuntime

# Retries come within tens of milliseconds; a handful of attempts per delivery.
FAST = {
    "webhook_retry_schedule": [0.05, 0.05, 0.05],
    "webhook_retry_jitter": 0.0,
    "outbox_sweep_seconds": 0.2,
    "webhook_timeout_seconds": 1.0,
    "webhook_lease_seconds": 3.0,
    "worker_poll_seconds": 0.05,
    "worker_heartbeat_seconds": 0.5,
}

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers POSTs on its own path (`url`); anything else gets 404. `behaviour(request, n)`
    decides each answer, n counting the requests for that webhook-id from 1."""

    base: str = ""
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    requests: list[Received] = field(default_factory=list)
    behaviour: Behaviour | None = None
    _counts: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.base}/{self.token}/hook"

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]

    def for_event(self, event_id: str) -> list[Received]:
        return [r for r in self.requests if r.headers.get("webhook-id") == event_id]

    def at(self, query: str) -> list[Received]:
        """The requests sent to `url?<query>`."""
        return [r for r in self.requests if r.path.endswith("?" + query)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not request.path.startswith(f"/{self.token}/"):
            return web.Response(status=404)
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(Received(request.path_qs, headers, body, time.time()))
        if request.path != f"/{self.token}/hook":
            return web.Response(text="elsewhere")
        webhook_id = request.headers.get("webhook-id", "")
        self._counts[webhook_id] = n = self._counts.get(webhook_id, 0) + 1
        if self.behaviour is not None:
            return await self.behaviour(request, n)
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.base = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()


WorkerFactory = Callable[..., Awaitable[WorkerRuntime]]


@pytest.fixture
async def start_worker(app: Any, settings: Settings) -> AsyncIterator[WorkerFactory]:
    """Start in-process workers (sharing the app's database and vault) with the FAST
    settings and any overrides; all are stopped after the test."""
    started: list[WorkerRuntime] = []

    async def start(**overrides: Any) -> WorkerRuntime:
        hub = app.state.hub
        worker_settings = settings.model_copy(update={**FAST, **overrides})
        runtime = WorkerRuntime(
            worker_settings, redis_url=settings.redis_url or "", db=hub.db, vault=hub.vault,
            connectors=hub.connectors, connector_host=hub.connector_host,
        )  # fmt: skip
        await runtime.start()
        started.append(runtime)
        return runtime

    try:
        yield start
    finally:
        for runtime in started:
            await runtime.stop()


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
