"""Shared pieces of the benchmarks: start servers as subprocesses, drive them with
concurrent keep-alive clients (aiohttp, in this process), and report figures."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") and k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback only
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(args: list[str], env: dict[str, str], *, ready_url: str, key_pattern: str | None = None) -> Iterator[str | None]:
    """Run a server; yield the first match of `key_pattern` in its output (a printed key)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = None
    try:
        if key_pattern is not None:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            while found is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("server exited before printing its key")
                match = re.search(key_pattern, line)
                found = match.group(1) if match else None
        wait_http(ready_url)
        # Keep draining output so the server never blocks on a full pipe.
        if proc.stdout is not None:
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        yield found
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self, label: str) -> str:
        return (
            f"{label:<34} {self.rps:>9.0f} req/s   p50 {self.pct(0.50):>6.1f} ms   p99 {self.pct(0.99):>6.1f} ms"
            f"   ({self.requests} requests, {self.errors} errors)"
        )


RequestFactory = Callable[[int, int], tuple[str, str, dict[str, str], Any]]


async def drive(
    base: str, make_request: RequestFactory, *, clients: int, seconds: float, warmup: float = 1.0
) -> LoadResult:
    """`clients` keep-alive connections, each sending requests back to back for `seconds`."""
    latencies: list[float] = []
    counts = {"ok": 0, "err": 0}
    stop_at = 0.0
    measuring = False

    async def client(worker: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            method, path, headers, body = make_request(worker, n)
            n += 1
            started = time.perf_counter()
            async with session.request(method, base + path, headers=headers, json=body) as response:
                await response.read()
                ok = response.status < 400
            if measuring:
                latencies.append(time.perf_counter() - started)
                counts["ok" if ok else "err"] += 1

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + warmup
        await asyncio.gather(*(client(w, session) for w in range(clients)))
        measuring = True
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(w + clients, session) for w in range(clients)))
        elapsed = time.perf_counter() - started
    return LoadResult(counts["ok"] + counts["err"], counts["err"], elapsed, latencies)


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.0f}"


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def pg_database(prefix: str = "hub_bench") -> Iterator[str]:
    """A fresh PostgreSQL database for one run (dropped afterwards): its SQLAlchemy URL."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
