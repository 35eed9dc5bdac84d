"""Webhook delivery: throughput and commit-to-first-attempt latency, beside a bare
aiohttp loop measured in the same run.

    python bench/webhooks.py [--events 10000] [--concurrency N] [--rate 200] [--seconds 10]
                             [--no-sqlite] [--no-postgres] [--profile PREFIX [--profile-gil]]

`--seconds 0` skips the latency run; `--profile` writes py-spy samples of the worker's
throughput run to PREFIX.sqlite and PREFIX.postgresql (raw format: one stack and its
count a line), `--profile-gil` only of the thread holding the GIL (Python's CPU).

A receiver (bench/webhook_receiver.py, aiohttp) runs as a subprocess on 127.0.0.1.

Baseline: this process signs (Standard Webhooks) and POSTs the same event bodies to it,
with 8, 16 and 32 keep-alive connections; the fastest is the bar's reference.

The hub: one `hub worker` process (on an SQLite file, and on PostgreSQL when one answers at
127.0.0.1:5432; Redis at 127.0.0.1:6379, else an embedded one), with as many requests in
flight to the endpoint as the fastest bare loop had connections, delivers N events that this
process writes to the outbox in one commit: relay -> delivery rows -> signed POSTs ->
attempt rows and delivery updates. Prints deliveries/s and the ratio to the bare loop
(bar: >= 50% per worker process), its CPU per delivery beside the bare loop's per POST,
and how much of the run its event loop thread was on a CPU. Then events are committed one
per transaction at a steady `rate` per second, each followed by the API's nudge; prints
p50/p99 from commit to the first attempt's arrival (bar: p99 <= 250 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
import uvloop
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness import (  # noqa: E402
    BIN, clean_env, free_port, pg_database, py_spy, reachable, redis_server, settle, wait_http,
)  # fmt: skip
from connectors.sdk import sign_webhook  # noqa: E402
from core import jobs, tenants, webhooks  # noqa: E402
from core.changes import ChangeContext, mutation  # noqa: E402
from core.db import Database  # noqa: E402
from core.identity import Principal  # noqa: E402
from core.migrate import upgrade_to_head  # noqa: E402
from core.outbox import Outbox  # noqa: E402
from core.roles import Role  # noqa: E402
from core.vault import Vault, generate_key_line, parse_keyring  # noqa: E402

STAGES = ["sourcing", "screening", "diligence", "ic_review", "term_sheet"]


def deal_payload(i: int) -> dict[str, Any]:
    """A realistic event payload (~600 bytes), like the upsert's `deal.updated`."""
    return {
        "deal": {
            "id": str(uuid.UUID(int=i)),
            "name": f"Company {i} Series B",
            "stage": STAGES[i % len(STAGES)],
            "amount": f"{(i % 500 + 1) * 100000}.00",
            "currency": "USD",
            "close_date": "2027-03-31",
            "company": f"Company {i}",
            "owner": f"partner{i % 20}@fund.example",
            "attributes": {"sector": "fintech", "round_size": i % 90},
            "external_refs": [{"system": "salesforce", "external_id": f"006{i:012d}"}],
            "version": 2,
            "created_at": "2026-11-20T10:00:00.000000Z",
            "updated_at": "2026-11-22T10:00:00.000000Z",
        },
        "changed_fields": ["stage"],
    }


# --------------------------------------------------------------------------- the bare loop


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU a process has used (all its threads), or one of its threads, from /proc."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bare_loop(url: str, secret: str, bodies: list[bytes], concurrency: int) -> tuple[float, float]:
    """POSTs/s of a loop that signs and posts each body, `concurrency` at a time, and its
    CPU time per POST."""
    work = iter(enumerate(bodies))

    async def client(session: aiohttp.ClientSession) -> None:
        for i, body in work:
            msg_id = f"bare-{i}"
            stamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign_webhook(secret, msg_id, stamp, body),
            }
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        rate = len(bodies) / (time.perf_counter() - started)
        return rate, (time.process_time() - cpu) / len(bodies)


# --------------------------------------------------------------------------- the hub


async def prepare(db_url: str, vault: Vault, receiver: str) -> tuple[str, str]:
    await upgrade_to_head(db_url)
    db = Database(db_url, pool_size=2)
    try:
        tenant = await tenants.create(db, f"bench-{uuid.uuid4().hex[:8]}")
        system = Principal(tenant.id, "system", "bench", frozenset({Role.ADMIN}))
        async with mutation(db, ChangeContext(system)) as m:
            issued = await webhooks.create(m, vault, url=f"{receiver}/hub", event_types=["deal.*"])
        return tenant.id, issued.endpoint.id
    finally:
        await db.dispose()


async def write_events(db: Database, tenant_id: str, start: int, count: int) -> list[str]:
    """`count` outbox events in one transaction (as one batch upsert would write them)."""
    now = datetime.now(UTC)
    async with db.write(tenant_id) as session:
        outbox = Outbox(session, tenant_id)
        ids = [
            outbox.emit("deal.updated", resource_type="deal", resource_id=str(uuid.UUID(int=i)), payload=deal_payload(i), occurred_at=now)
            for i in range(start, start + count)
        ]
        await outbox.flush()
    return ids


async def stats(http: aiohttp.ClientSession, receiver: str, *, times: bool = False) -> dict[str, Any]:
    async with http.get(f"{receiver}/stats", params={"times": "1"} if times else {}) as r:
        result: dict[str, Any] = await r.json()
        return result


async def wait_unique(http: aiohttp.ClientSession, receiver: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (await stats(http, receiver))["unique"] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {(await stats(http, receiver))['unique']} of {count} deliveries arrived")
        await asyncio.sleep(0.05)


async def throughput(
    db_url: str, redis_url: str, tenant_id: str, receiver: str, events: int, keys: jobs.Keys, worker_pid: int
) -> tuple[float, float, float]:
    """Deliveries/s, the worker's CPU per delivery, and the share of the run its main
    thread (the event loop) was on a CPU: well under 1 means it waited, for the database
    or for a CPU the machine's other processes held."""
    db = Database(db_url, pool_size=2)
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        async with aiohttp.ClientSession() as http:
            await http.delete(f"{receiver}/stats")
            await write_events(db, tenant_id, 0, events)
            committed, cpu, loop_cpu = time.time(), cpu_seconds(worker_pid), cpu_seconds(worker_pid, worker_pid)
            await jobs.nudge_outbox(redis, keys)
            await wait_unique(http, receiver, events, timeout=300)
            used, loop_used, span = cpu_seconds(worker_pid) - cpu, cpu_seconds(worker_pid, worker_pid) - loop_cpu, time.time() - committed
            last = max((await stats(http, receiver, times=True))["first_seen"].values())
        return events / (last - committed), used / events, loop_used / span
    finally:
        await redis.aclose()
        await db.dispose()


async def latency(
    db_url: str, redis_url: str, tenant_id: str, receiver: str, rate: float, seconds: float, keys: jobs.Keys
) -> list[float]:
    """Seconds from each event's commit to its first attempt's arrival, at a steady rate."""
    db = Database(db_url, pool_size=2)
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    committed: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as http:
            await http.delete(f"{receiver}/stats")
            total = int(rate * seconds)
            started = time.monotonic()
            for n in range(total):
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                (event_id,) = await write_events(db, tenant_id, 10_000_000 + n, 1)
                committed[event_id] = time.time()
                await jobs.nudge_outbox(redis, keys)  # what the API does after a commit
            await wait_unique(http, receiver, total, timeout=60)
            first_seen = (await stats(http, receiver, times=True))["first_seen"]
        return sorted(first_seen[e] - t for e, t in committed.items())
    finally:
        await redis.aclose()
        await db.dispose()


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def run_hub(
    label: str, db_url: str, redis_url: str, receiver: str, args: argparse.Namespace, keyring: str, best_bare: float,
    bare_cpu: float,
) -> None:
    settle()
    vault = Vault(parse_keyring(keyring))
    tenant_id, _ = asyncio.run(prepare(db_url, vault, receiver))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    keys = jobs.Keys(namespace)
    metrics_port = free_port()
    env = clean_env(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        HUB_VAULT_KEYS=keyring,
        HUB_WORKER_NAMESPACE=namespace,
        HUB_WEBHOOKS_ALLOW_PRIVATE="true",
        HUB_WEBHOOK_ENDPOINT_CONCURRENCY=str(args.concurrency),
        HUB_WORKER_METRICS_PORT=str(metrics_port),
        HUB_LOG_LEVEL="WARNING",
    )
    worker = subprocess.Popen([str(BIN / "hub"), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{metrics_port}/health")
        out = f"{args.profile}.{label.split()[0].lower()}" if args.profile else None
        with py_spy(worker.pid, out, gil=args.profile_gil):
            rate, cpu, loop_busy = asyncio.run(
                throughput(db_url, redis_url, tenant_id, receiver, args.events, keys, worker.pid)
            )
        lags = asyncio.run(latency(db_url, redis_url, tenant_id, receiver, args.rate, args.seconds, keys)) if args.seconds else [0.0]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
    print(f"hub worker [{label}]{'':<{max(0, 21 - len(label))}} {rate:>7.0f} deliveries/s   "
          f"({args.events} events, outbox -> relay -> signed POST -> attempt log; 1 worker process)")  # fmt: skip
    print(f"{'':<34} ratio to the fastest bare loop: {rate / best_bare:.0%} (bar: >= 50%)")
    print(
        f"{'':<34} worker CPU per delivery {cpu * 1e6:.0f} us (all threads; the bare loop's per POST: "
        f"{bare_cpu * 1e6:.0f} us, so {bare_cpu / cpu:.0%} of its efficiency when CPU-bound); "
        f"event loop thread on a CPU {loop_busy:.0%} of the run"
    )
    if args.seconds:
        print(
            f"{'':<34} commit -> first attempt at {args.rate:.0f} events/s: p50 {pct(lags, 0.5):.1f} ms, "
            f"p99 {pct(lags, 0.99):.1f} ms, max {lags[-1] * 1000:.1f} ms ({len(lags)} events; bar: p99 <= 250 ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument(
        "--concurrency", type=int, default=None,
        help="Requests in flight per endpoint in the worker (default: the fastest bare loop's connections)",
    )  # fmt: skip
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="Of the latency run (0: skip it)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--profile", default=None, help="py-spy the worker during the throughput run, to this file prefix")
    parser.add_argument("--profile-gil", action="store_true", help="Profile only the thread holding the GIL (Python CPU)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.events} events; bare loops at 8/16/32 connections\n")

    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    recv = subprocess.Popen([sys.executable, str(Path(__file__).parent / "webhook_receiver.py"), str(port)])
    try:
        wait_http(f"{receiver}/stats")
        keyring = generate_key_line("bench")
        secret = webhooks.new_secret()
        bodies = [
            orjson.dumps({"event_id": str(uuid.uuid4()), "event_type": "deal.updated", "occurred_at": "2026-11-22T10:00:00.000000Z",
                          "tenant_id": "t", "resource_type": "deal", "resource_id": str(uuid.UUID(int=i)), "payload": deal_payload(i)})
            for i in range(args.events)
        ]  # fmt: skip
        # On uvloop, as `hub worker` runs.
        bare = {c: uvloop.run(bare_loop(f"{receiver}/bare", secret, bodies, c)) for c in (8, 16, 32)}
        for c, (rate, cpu) in bare.items():
            print(f"bare aiohttp loop, {c:>2} connections      {rate:>7.0f} POSTs/s (sign + POST, no database; {cpu * 1e6:.0f} us CPU per POST)")
        best, best_cpu = max(bare.values())
        if args.concurrency is None:
            # As many requests in flight as the loop it is measured against.
            args.concurrency = max(bare, key=lambda c: bare[c][0])
        print(f"hub worker endpoint concurrency (HUB_WEBHOOK_ENDPOINT_CONCURRENCY): {args.concurrency}")

        with redis_server() as redis_url:
            if not args.no_sqlite:
                with TemporaryDirectory() as data:
                    run_hub("SQLite", f"sqlite+aiosqlite:///{data}/hub.db", redis_url, receiver, args, keyring, best, best_cpu)
            if not args.no_postgres and reachable("127.0.0.1", 5432):
                with pg_database() as database_url:
                    run_hub("PostgreSQL", database_url, redis_url, receiver, args, keyring, best, best_cpu)
    finally:
        recv.terminate()
        recv.wait(timeout=10)


if __name__ == "__main__":
    main()
