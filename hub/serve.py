"""`hub serve`: the API under uvicorn."""

from __future__ import annotations

import uvicorn

from core.process import tune_gc
from core.settings import Settings
from hub.app import create_app
from hub.logs import configure_logging


def serve(settings: Settings, *, host: str, port: int) -> int:
    configure_logging(settings.log_level, json_lines=settings.log_json)
    app = create_app(settings)
    tune_gc()
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, log_level=settings.log_level.lower(), access_log=False
    )
    uvicorn.Server(config).run()
    return 0
