"""A Salesforce sync into the hub, beside a bare loop measured in the same run.

    python bench/sync.py [--records 10000 100000] [--page-size 2000] [--no-sqlite] [--no-postgres]
                         [--profile out.html]

A local stand-in of Salesforce (bench/salesforce_server.py, its own process) serves N
opportunities, 2,000 per page. Each measurement runs in a fresh child process (so its peak
memory is its own) against a fresh database:

- baseline: a bare loop that pages the same server with httpx (the connectors' client)
  and inserts each page's rows with one executemany on the bare driver (aiosqlite /
  asyncpg), one commit per page;
- hub: the real sync job (`worker.syncs.sync_connection`): the Salesforce connector
  (HubHttp, retries, breaker in Redis), the mapping, `core.deals.upsert_many` with an audit
  event and an outbox event per deal, the cursor and the run's checkpoint per page.

Both run on uvloop with the garbage collector tuned, as `hub worker` runs (`child`).
Prints records/s of both and their ratio (bar: >= 50%), and each run's peak RSS; the bar
on memory: the hub's peak at the largest N at most 50 MB above its peak at the smallest.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import salesforce_server  # noqa: E402
from bench._harness import pg_database, reachable, redis_server, settle  # noqa: E402
from core.process import tune_gc  # noqa: E402

TOKEN = "00Dbench!local.access.token"
API_VERSION = "62.0"
BARE_TABLE = """CREATE TABLE bare_deals (
    id VARCHAR(36) PRIMARY KEY, external_id VARCHAR(255) UNIQUE, name VARCHAR(300), stage VARCHAR(64),
    amount NUMERIC(20, 4), close_date VARCHAR(10), company VARCHAR(300), owner VARCHAR(200),
    attributes TEXT, updated_at VARCHAR(40))"""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# --------------------------------------------------------------------------- the baseline


def _row(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record["Id"], record["Id"], record["Name"], record["StageName"], record["Amount"], record["CloseDate"],
        (record.get("Account") or {}).get("Name"), (record.get("Owner") or {}).get("Name"),
        json.dumps({k: v for k, v in record.items() if k not in ("attributes", "Account", "Owner")}),
        record["SystemModstamp"],
    )  # fmt: skip


async def bare_loop(instance_url: str, database_url: str) -> tuple[int, float]:
    """(records stored, seconds the paging and storing took)."""
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    url: str | None = f"{instance_url}/services/data/v{API_VERSION}/query"
    params: dict[str, str] | None = {"q": "SELECT Id FROM Opportunity ORDER BY SystemModstamp ASC"}
    total = 0
    async with httpx.AsyncClient(timeout=30) as client:
        if database_url.startswith("sqlite"):
            import aiosqlite

            db = await aiosqlite.connect(database_url.split("///", 1)[1])
            await db.execute(BARE_TABLE)

            async def insert(rows: list[tuple[Any, ...]]) -> None:
                await db.executemany("INSERT INTO bare_deals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                await db.commit()
        else:
            import asyncpg

            db = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
            await db.execute(BARE_TABLE)

            async def insert(rows: list[tuple[Any, ...]]) -> None:
                # asyncpg's executemany runs in one implicit transaction.
                await db.executemany(
                    "INSERT INTO bare_deals VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    [(*r[:4], None if r[4] is None else str(r[4]), *r[5:]) for r in rows],
                )

        tune_gc()  # as the hub's worker process runs (see child())
        started = time.perf_counter()
        while url is not None:
            response = await client.get(url, params=params, headers=headers)
            response.raise_for_status()
            body = response.json()
            await insert([_row(r) for r in body["records"]])
            total += len(body["records"])
            url = instance_url + body["nextRecordsUrl"] if not body["done"] else None
            params = None
        seconds = time.perf_counter() - started
        await db.close()
    return total, seconds


# --------------------------------------------------------------------------- the hub


async def hub_sync(instance_url: str, database_url: str, data_dir: str, redis_url: str) -> dict[str, Any]:
    from redis.asyncio import Redis

    from connectors.host import connector_host_for, pooled_client
    from connectors.registry import ConnectorRegistry
    from connectors.sdk import RedisBreakerStorage
    from core import runs, syncs, tenants
    from core.changes import ChangeContext, mutation
    from core.connections import ConnectionStatus, create, store_token
    from core.db import Database
    from core.identity import Principal
    from core.migrate import upgrade_to_head
    from core.roles import Role
    from core.settings import Settings
    from core.vault import Vault, load_keyring
    from worker.runtime import WorkerRuntime
    from worker.syncs import sync_connection

    settings = Settings(
        database_url=database_url, redis_url=redis_url, data_dir=Path(data_dir), demo_tenant=False,
        worker_in_process=False, connectors=["salesforce"], sync_slice_seconds=3600, log_level="WARNING",
    )  # fmt: skip
    await upgrade_to_head(database_url)
    db = Database(database_url)
    vault = Vault(load_keyring(None, settings.vault_key_file))
    tenant = await tenants.create(db, "bench")
    context = ChangeContext(Principal(tenant.id, "user", "bench", frozenset({Role.ADMIN})))
    async with mutation(db, context) as m:
        connection = await create(
            m, vault, connector_key="salesforce", name="bench", config={}, secrets={}, status=ConnectionStatus.AUTH_ERROR
        )
        await store_token(
            m, vault, connection.id, {"access_token": TOKEN, "instance_url": instance_url, "token_type": "Bearer"},
            refreshed=False,
        )  # fmt: skip
    async with mutation(db, context) as m:
        run = await syncs.start(m, connection.id)
    registry = ConnectorRegistry(allow=["salesforce"], load_entry_points=False)
    registry.load()
    redis = Redis.from_url(redis_url)
    http = pooled_client()
    runtime = WorkerRuntime(
        settings, redis_url=redis_url, db=db, vault=vault, connectors=registry,
        connector_host=connector_host_for(settings, http, RedisBreakerStorage(redis)),
    )  # fmt: skip
    tune_gc()  # as `hub worker` does once started
    started = time.perf_counter()
    outcome = await sync_connection(runtime, tenant.id, run.id)
    seconds = time.perf_counter() - started
    async with db.read(tenant.id) as session:
        finished = await runs.get(session, run.id)
        progress = {"read": finished.records_read, "written": finished.records_written, "status": finished.status}
    await http.aclose()
    await redis.aclose()
    await db.dispose()
    return {"outcome": outcome, "seconds": seconds, **progress}


def child(args: argparse.Namespace) -> None:
    """One measurement; the time counted is the paging and storing only (no start-up).

    Both sides run as `hub worker` runs its jobs: on uvloop, with the garbage collector
    tuned by `core.process.tune_gc` once started; the ratio compares code, not settings."""
    if args.child == "baseline":
        records, seconds = uvloop.run(bare_loop(args.instance_url, args.database_url))
        extra: dict[str, Any] = {"seconds": seconds}
    else:
        profiler = None
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        extra = uvloop.run(hub_sync(args.instance_url, args.database_url, args.data_dir, args.redis_url))
        if profiler is not None:
            profiler.stop()
            text = args.profile.endswith(".txt")
            Path(args.profile).write_text(profiler.output_text(color=False) if text else profiler.output_html())
        records = extra["read"]
    print(json.dumps({"records": records, "peak_rss_mb": peak_rss_mb(), **extra}))


def measure(kind: str, instance_url: str, database_url: str, data_dir: str, redis_url: str, profile: str | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--instance-url", instance_url, "--database-url", database_url,
           "--data-dir", data_dir, "--redis-url", redis_url]  # fmt: skip
    settle()  # both sides start with the disk's writeback done
    if profile and kind == "hub":
        cmd += ["--profile", profile]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_backend(label: str, database: Any, args: argparse.Namespace, redis_url: str) -> list[dict[str, Any]]:
    """`database(data_dir)` gives a fresh database URL per measurement."""
    results = []
    for records in args.records:
        with salesforce_server.running(records=records, page_size=args.page_size, token=TOKEN) as instance_url:
            with TemporaryDirectory() as d1, database(d1, "bare") as bare_url:
                baseline = measure("baseline", instance_url, bare_url, d1, redis_url, None)
            with TemporaryDirectory() as d2, database(d2, "hub") as hub_url:
                hub = measure("hub", instance_url, hub_url, d2, redis_url, args.profile)
        assert baseline["records"] == records and hub["records"] == records, (baseline, hub)
        assert hub["status"] == "succeeded" and hub["written"] == records, hub
        base_rate, hub_rate = records / baseline["seconds"], records / hub["seconds"]
        print(
            f"{label:<12} {records:>7,}  bare loop {base_rate:>8,.0f} records/s ({baseline['peak_rss_mb']:5.0f} MB)"
            f"   hub sync {hub_rate:>8,.0f} records/s ({hub['peak_rss_mb']:5.0f} MB)   ratio {hub_rate / base_rate:4.0%}",
            flush=True,
        )
        results.append({"records": records, "hub": hub, "baseline": baseline, "ratio": hub_rate / base_rate})
    if len(results) > 1:
        growth = results[-1]["hub"]["peak_rss_mb"] - results[0]["hub"]["peak_rss_mb"]
        print(
            f"{label:<12} hub peak memory at {results[-1]['records']:,} is {growth:+.0f} MB against "
            f"{results[0]['records']:,} (bar: <= +50 MB)",
            flush=True,
        )
    return results


@contextmanager
def sqlite_file(data_dir: str, name: str) -> Any:
    yield f"sqlite+aiosqlite:///{data_dir}/{name}.db"


@contextmanager
def postgres(data_dir: str, name: str) -> Any:
    with pg_database(f"hub_sync_{name}") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--page-size", type=int, default=2000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--profile", help="write a pyinstrument profile of the hub's sync (HTML, or text for *.txt)")
    parser.add_argument("--child", choices=["baseline", "hub"], help=argparse.SUPPRESS)
    parser.add_argument("--instance-url", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with redis_server() as redis_url:
        print(f"Salesforce sync, {args.page_size:,} opportunities per page (each run in a fresh process and database)")
        if not args.no_sqlite:
            run_backend("SQLite", sqlite_file, args, redis_url)
        if not args.no_postgres and reachable("127.0.0.1", 5432):
            run_backend("PostgreSQL", postgres, args, redis_url)

if __name__ == "__main__":
    main()
