"""The CRM upsert under load, beside a bare FastAPI ping on the same server stack.

    python bench/upsert.py [--seconds 8] [--clients 16] [--no-sqlite] [--no-postgres] [--profile PREFIX]

Starts `hub serve` on the embedded default (SQLite file + embedded Redis) and, when
one answers at 127.0.0.1:5432, on PostgreSQL too; 16 keep-alive clients send
`PUT /api/v1/deals/by-ref/...` with an API key, an Idempotency-Key and a realistic
deal body, 80% of them updates of existing deals. In the same run a bare FastAPI app
answers `GET /ping` to the same clients. Prints requests/s, p50 and p99 of both and
their ratio, then the batch upsert's records/s; beside each, the server process's CPU
time per request or record (all its threads; steadier than the rates on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import (
    BIN, LoadResult, Server, clean_env, drive, free_port, pg_database, process, py_spy, reachable, settle,
)  # fmt: skip

SEEDED = 2000
STAGES = ["sourcing", "screening", "diligence", "ic_review", "term_sheet", "closed_won"]


def deal(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "name": f"Company {i} Series {rng.choice('ABCD')}",
        "stage": rng.choice(STAGES),
        "amount": f"{rng.randint(1, 500) * 100000}.00",
        "currency": "USD",
        "close_date": f"2027-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "company": f"Company {i}",
        "owner": f"partner{rng.randint(1, 20)}@fund.example",
        "attributes": {"sector": rng.choice(["fintech", "health", "saas", "climate"]), "round_size": rng.randint(1, 90)},
    }


def upsert_requests(key: str, seed: int) -> Any:
    rng = random.Random(seed)
    fresh = iter(range(10_000_000, 20_000_000))

    def make(worker: int, n: int) -> tuple[str, str, dict[str, str], Any]:
        existing = rng.random() < 0.8
        i = rng.randrange(SEEDED) if existing else next(fresh)
        headers = {"X-API-Key": key, "Idempotency-Key": str(uuid.uuid4())}
        return "PUT", f"/api/v1/deals/by-ref/salesforce/006{i:012d}", headers, deal(i, rng)

    return make


def ping_requests(worker: int, n: int) -> tuple[str, str, dict[str, str], Any]:
    return "GET", "/ping", {}, None


async def seed(base: str, key: str) -> None:
    rng = random.Random(7)
    async with aiohttp.ClientSession() as session:
        for start in range(0, SEEDED, 1000):
            items = [
                {"system": "salesforce", "external_id": f"006{i:012d}", "deal": deal(i, rng)}
                for i in range(start, min(SEEDED, start + 1000))
            ]
            async with session.post(f"{base}/api/v1/deals/batch-upsert", json={"items": items}, headers={"X-API-Key": key}) as r:
                assert r.status == 200, await r.text()


async def batch_records(server: Server, base: str, key: str, batches: int = 10, size: int = 1000) -> tuple[float, float]:
    """Records/s of the batch upsert, and the server's CPU microseconds per record."""
    assert server.key is not None
    rng = random.Random(11)
    async with aiohttp.ClientSession() as session:
        total = 0
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        for b in range(batches):
            # Half new deals, half updates, like a CRM's incremental export.
            ids = [50_000_000 + b * size + i if i % 2 else rng.randrange(SEEDED) for i in range(size)]
            items = [{"system": "salesforce", "external_id": f"006{i:012d}", "deal": deal(i, rng)} for i in ids]
            async with session.post(f"{base}/api/v1/deals/batch-upsert", json={"items": items}, headers={"X-API-Key": key}) as r:
                assert r.status == 200, await r.text()
                total += size
        elapsed = time.perf_counter() - started
        return total / elapsed, (server.cpu_seconds() - cpu_before) * 1e6 / total


def run_hub(label: str, env: dict[str, str], args: argparse.Namespace, ping: LoadResult) -> None:
    settle()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hub = [str(BIN / "hub"), "serve", "--port", str(port)]
    # Raise the benchmark tenant's limits through the per-tenant override, before the
    # hub caches them. On PostgreSQL the tenant must exist first: start, then set.
    with process(hub, env, ready_url=f"{base}/health", key_pattern=r"HUB_API_KEY=(\S+)") as server:
        key = server.key
        assert key is not None
        subprocess.run(
            [str(BIN / "hub"), "tenants", "limits", "demo", "--user-per-minute", "100000000",
             "--integration-per-minute", "100000000"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        asyncio.run(seed(base, key))
        prefix = f"{args.profile}.{label.split()[0].lower()}" if args.profile else None
        with py_spy(server.pid, prefix and f"{prefix}.upsert", gil=True):
            result = asyncio.run(
                drive(base, upsert_requests(key, 1), clients=args.clients, seconds=args.seconds, server=server)
            )
        with py_spy(server.pid, prefix and f"{prefix}.batch", gil=True):
            records, cpu_per_record = asyncio.run(batch_records(server, base, key))
    print(result.line(f"hub upsert [{label}]"))
    print(f"{'':<34} ratio to ping: {result.rps / ping.rps:.0%} of requests/s (bar: >= 40%, p99 <= 100 ms)")
    print(
        f"hub batch upsert [{label}]          {records:>9.0f} records/s (bar: >= 10,000, with audit and outbox rows)"
        f"   server CPU {cpu_per_record:.0f} us/record"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--profile", default=None, help="py-spy the hub (its Python CPU) during the upsert and batch runs, to this file prefix"
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.clients} keep-alive clients; {args.seconds:.0f} s per run\n")

    port = free_port()
    ping_cmd = [sys.executable, "-m", "uvicorn", "bench.ping_app:app", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    with process(ping_cmd, clean_env(), ready_url=f"http://127.0.0.1:{port}/ping") as server:
        ping = asyncio.run(
            drive(f"http://127.0.0.1:{port}", ping_requests, clients=args.clients, seconds=args.seconds, server=server)
        )
    print(ping.line("bare FastAPI ping (baseline)"))

    if not args.no_sqlite:
        with TemporaryDirectory() as data:
            run_hub("SQLite + embedded Redis", clean_env(HUB_DATA_DIR=data, HUB_LOG_LEVEL="WARNING"), args, ping)

    if not args.no_postgres and reachable("127.0.0.1", 5432):
        with pg_database() as database_url, TemporaryDirectory() as data:
            env = clean_env(
                HUB_DATA_DIR=data, HUB_LOG_LEVEL="WARNING", DATABASE_URL=database_url, REDIS_URL="redis://127.0.0.1:6379/0"
            )
            run_hub("PostgreSQL + Redis", env, args, ping)

if __name__ == "__main__":
    main()
