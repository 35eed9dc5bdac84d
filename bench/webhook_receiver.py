"""The benchmark's webhook receiver: a bare aiohttp server that answers 200 to every POST
and notes when each `webhook-id` first arrived (`GET /stats`, `DELETE /stats` resets).

    python bench/webhook_receiver.py PORT
"""

from __future__ import annotations

import sys
import time

from aiohttp import web

first_seen: dict[str, float] = {}
counts = {"requests": 0}


async def receive(request: web.Request) -> web.Response:
    await request.read()
    counts["requests"] += 1
    webhook_id = request.headers.get("webhook-id", "")
    if webhook_id not in first_seen:
        first_seen[webhook_id] = time.time()
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    body: dict[str, object] = {"requests": counts["requests"], "unique": len(first_seen)}
    if request.query.get("times"):
        body["first_seen"] = first_seen
    return web.json_response(body)


async def reset(request: web.Request) -> web.Response:
    first_seen.clear()
    counts["requests"] = 0
    return web.json_response({})


def main() -> None:
    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_delete("/stats", reset)
    app.router.add_post("/{tail:.*}", receive)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
