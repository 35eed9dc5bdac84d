"""`hub serve`: the API under uvicorn."""

from __future__ import annotations

import gc

import uvicorn

from core.settings import Settings
from hub.app import create_app
from hub.logs import configure_logging

# Collect the youngest objects every 20,000 allocations, not every 700: a request or a
# batch allocates thousands of short-lived objects; with these settings (and the freeze
# below) a batch upsert took about a fifth less CPU per record (bench/upsert.py).
_GC_THRESHOLDS = (20_000, 20, 20)


def serve(settings: Settings, *, host: str, port: int) -> int:
    configure_logging(settings.log_level, json_lines=settings.log_json)
    app = create_app(settings)
    # What was built so far (modules, schemas, routes) lives as long as the process:
    # keep it out of every later full collection.
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, log_level=settings.log_level.lower(), access_log=False
    )
    uvicorn.Server(config).run()
    return 0
