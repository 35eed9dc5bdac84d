"""Liveness, readiness and metrics; no authentication (serve them on an internal port
or network in production)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import text

from core import jobs
from core.jsonable import dumps
from hub.problems import MEDIA_TYPE, problem_document, request_id_of
from hub.state import HubState

router = APIRouter(tags=["operations"])


class NoLiveWorker(Exception):
    """No worker heartbeat in Redis (none running, or none reaching Redis)."""

CHECK_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    status: str


class Component(BaseModel):
    status: str
    required: bool
    latency_ms: float | None = None
    error: str | None = None


class Readiness(BaseModel):
    status: str
    components: dict[str, Component]


@router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    return Health(status="ok")


async def _probe(check: Callable[[], Awaitable[Any]], *, required: bool) -> Component:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure means "down"; the type is enough to report
        return Component(status="down", required=required, error=type(exc).__name__)
    return Component(status="up", required=required, latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def readiness(state: HubState) -> Readiness:
    async def database() -> None:
        async with state.db.read(None) as session:
            await session.execute(text("SELECT 1"))

    async def redis() -> None:
        await state.redis.ping()

    async def worker() -> None:
        if not await jobs.live_workers(state.redis, jobs.Keys(state.settings.worker_namespace)):
            raise NoLiveWorker

    # Redis is not required to serve the API (rate limits fail open), nor is a worker
    # (events wait in the outbox until one runs); both are reported.
    db_status, redis_status, worker_status = await asyncio.gather(
        _probe(database, required=True), _probe(redis, required=False), _probe(worker, required=False)
    )
    components = {"database": db_status, "redis": redis_status, "worker": worker_status}
    if any(c.required and c.status != "up" for c in components.values()):
        overall = "unavailable"
    elif any(c.status != "up" for c in components.values()):
        overall = "degraded"
    else:
        overall = "ok"
    return Readiness(status=overall, components=components)


@router.get(
    "/health/ready",
    response_model=Readiness,
    summary="Readiness: database, Redis and worker heartbeat, with latency",
    responses={503: {"description": "A required component is down (problem+json with `components`)"}},
)
async def ready(request: Request) -> Response:
    report = await readiness(request.app.state.hub)
    if report.status == "unavailable":
        payload = problem_document(
            503, "UPSTREAM_UNAVAILABLE", "Not ready", "A required component is down", request_id=request_id_of(request)
        )
        payload["components"] = report.model_dump()["components"]
        return Response(dumps(payload), status_code=503, media_type=MEDIA_TYPE)
    return Response(report.model_dump_json(), media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state: HubState = request.app.state.hub
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
