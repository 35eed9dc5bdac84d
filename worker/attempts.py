"""Working a run as one attempt of it (`core.runs`: each start of a run is numbered, and
only the attempt holding the run may write to it)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from core import runs

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger("worker.runs")

Work = Callable[["WorkerRuntime", str, runs.Started], Awaitable[dict[str, Any]]]


async def attempt(runtime: WorkerRuntime, tenant_id: str, run_id: str, work: Work) -> dict[str, Any]:
    """Start the run as this worker's attempt and `work(runtime, tenant_id, started)` it;
    skip a run that needs no work, and stop at once when the run was handed to another
    worker meanwhile (that attempt wrote nothing more of it)."""
    started = await runs.start(runtime.db, tenant_id, run_id, worker_id=runtime.worker_id)
    if started is None:
        return {"skipped": True}
    try:
        return await work(runtime, tenant_id, started)
    except runs.RunLost:
        log.warning("run taken over by another worker, this one stops", extra={"run_id": run_id, "kind": started.run.kind})
        return {"lost": True}
