"""A local stand-in for Salesforce's REST query API, for the sync benchmark and the
sync-killed-and-resumed test (a separate process, so a worker under test can be killed).

    python bench/salesforce_server.py --records 100000 [--page-size 2000] [--deleted 0]
                                      [--page-delay 0] [--token T] [--port 0]

Prints its base URL (the `instance_url` of a token) on the first line of stdout.

Shaped like ../shared/api-notes (Salesforce): `GET /services/data/vXX.X/query?q=<SOQL>`
answers `{totalSize, done, nextRecordsUrl?, records}` with at most `--page-size` records
ordered by SystemModstamp; `nextRecordsUrl` is a relative locator path; a `WHERE
SystemModstamp >= <ts>` clause is honoured; `GET /services/data/vXX.X/sobjects/Opportunity/
deleted/?start=&end=` lists the first `--deleted` opportunities as deleted (they are not in
query results, as in Salesforce). A request without `Authorization: Bearer <token>` gets
401 INVALID_SESSION_ID. Records are computed from their number, never held in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

START = datetime(2025, 1, 1, tzinfo=UTC)
STAGES = ("Prospecting", "Qualification", "Needs Analysis", "Proposal/Price Quote", "Negotiation/Review", "Closed Won")
_SINCE = re.compile(r"SystemModstamp\s*>=\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")


def opportunity_id(number: int) -> str:
    return f"006{number:015d}"


def modstamp(number: int) -> datetime:
    return START + timedelta(seconds=number)


def _sf_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def opportunity(number: int, version: str) -> dict[str, Any]:
    """Opportunity `number` (0-based) as a SOQL query returns it."""
    stamp = _sf_time(modstamp(number))
    oid = opportunity_id(number)
    return {
        "attributes": {"type": "Opportunity", "url": f"/services/data/v{version}/sobjects/Opportunity/{oid}"},
        "Id": oid,
        "Name": f"Company {number} - Series {'ABCD'[number % 4]}",
        "StageName": STAGES[number % len(STAGES)],
        "Amount": float(250_000 * (1 + number % 40)),
        "CloseDate": (START + timedelta(days=number % 365)).date().isoformat(),
        "Probability": (number * 10) % 100,
        "Type": "New Business",
        "IsClosed": False,
        "IsWon": False,
        "AccountId": f"001{number % 5000:015d}",
        "Account": {"attributes": {"type": "Account", "url": f"/services/data/v{version}/sobjects/Account/x"}, "Name": f"Company {number}"},
        "OwnerId": f"005{number % 50:015d}",
        "Owner": {"attributes": {"type": "User", "url": f"/services/data/v{version}/sobjects/User/x"}, "Name": f"Partner {number % 50}"},
        "LastModifiedDate": stamp,
        "SystemModstamp": stamp,
    }


class Org:
    def __init__(self, *, records: int, page_size: int, deleted: int, page_delay: float, token: str) -> None:
        self.records = records
        self.page_size = page_size
        self.deleted = deleted
        self.page_delay = page_delay
        self.token = token
        self.pages_served = 0

    def _authorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            body = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
            return web.json_response(body, status=401)
        return None

    async def _page(self, version: str, first: int) -> web.Response:
        if self.page_delay:
            await asyncio.sleep(self.page_delay)
        last = min(first + self.page_size, self.records)
        body: dict[str, Any] = {
            "totalSize": self.records - max(first, self.deleted),
            "done": last >= self.records,
            "records": [opportunity(n, version) for n in range(first, last)],
        }
        if last < self.records:
            body["nextRecordsUrl"] = f"/services/data/v{version}/query/01gBENCH-{last}"
        self.pages_served += 1
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers={
            "Sforce-Limit-Info": f"api-usage={self.pages_served}/1000000",
        })  # fmt: skip

    async def query(self, request: web.Request) -> web.Response:
        if (refused := self._authorized(request)) is not None:
            return refused
        soql = request.query.get("q", "")
        first = self.deleted
        since = _SINCE.search(soql)
        if since:
            moment = datetime.strptime(since.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            first = max(first, int((moment - START).total_seconds()))
        return await self._page(request.match_info["version"], first)

    async def query_more(self, request: web.Request) -> web.Response:
        if (refused := self._authorized(request)) is not None:
            return refused
        return await self._page(request.match_info["version"], int(request.match_info["offset"]))

    async def deleted_records(self, request: web.Request) -> web.Response:
        if (refused := self._authorized(request)) is not None:
            return refused
        end = request.query.get("end") or datetime.now(UTC).isoformat()
        body = {
            "deletedRecords": [
                {"id": opportunity_id(n), "deletedDate": _sf_time(modstamp(self.records + n))} for n in range(self.deleted)
            ],
            "earliestDateAvailable": _sf_time(START),
            "latestDateCovered": end,
        }
        return web.json_response(body)


def app(org: Org) -> web.Application:
    application = web.Application()
    application.router.add_get("/services/data/v{version}/query", org.query)
    application.router.add_get("/services/data/v{version}/query/", org.query)
    application.router.add_get("/services/data/v{version}/query/01gBENCH-{offset:\\d+}", org.query_more)
    application.router.add_get("/services/data/v{version}/sobjects/Opportunity/deleted/", org.deleted_records)
    return application


async def serve(org: Org, port: int) -> None:
    runner = web.AppRunner(app(org), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http://127.0.0.1:{bound}", flush=True)
    await asyncio.Event().wait()


@contextmanager
def running(**options: Any) -> Iterator[str]:
    """This server in a process of its own, with `options` (`records=`, `page_size=`...);
    yields its base URL, the `instance_url` to put in a connection's token."""
    args = [sys.executable, __file__, *(f"--{k.replace('_', '-')}={v}" for k, v in options.items())]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=2000)
    parser.add_argument("--deleted", type=int, default=0, help="the first N opportunities are deleted")
    parser.add_argument("--page-delay", type=float, default=0.0, help="seconds before each page is answered")
    parser.add_argument("--token", default="00Dbench!local.access.token")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    org = Org(records=args.records, page_size=args.page_size, deleted=args.deleted, page_delay=args.page_delay, token=args.token)
    try:
        asyncio.run(serve(org, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
