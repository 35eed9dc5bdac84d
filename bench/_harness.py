"""Shared pieces of the benchmarks: start servers as subprocesses, drive them with
concurrent keep-alive clients (aiohttp, in this process), and report figures."""

from __future__ import annotations

import asyncio
import os
import re
import signal
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
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass(frozen=True)
class Server:
    """A running server: the first match of `key_pattern` in its output, and its pid."""

    key: str | None
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far, all its threads
        (not its children, e.g. an embedded Redis); NaN where /proc is missing."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def process(args: list[str], env: dict[str, str], *, ready_url: str, key_pattern: str | None = None) -> Iterator[Server]:
    """Run a server until the block ends."""
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
        yield Server(found, proc.pid)
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
    # The server's CPU seconds over the measured seconds, when known.
    server_cpu: float = float("nan")

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
            f"   server CPU {self.server_cpu * 1e6 / max(self.requests, 1):>5.0f} us/request"
            f"   ({self.requests} requests, {self.errors} errors)"
        )


RequestFactory = Callable[[int, int], tuple[str, str, dict[str, str], Any]]


async def drive(
    base: str,
    make_request: RequestFactory,
    *,
    clients: int,
    seconds: float,
    warmup: float = 1.0,
    server: Server | None = None,
) -> LoadResult:
    """`clients` keep-alive connections, each sending requests back to back for `seconds`
    (and the `server`'s CPU time over those seconds)."""
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
        cpu_before = server.cpu_seconds() if server is not None else float("nan")
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(w + clients, session) for w in range(clients)))
        elapsed = time.perf_counter() - started
        cpu = (server.cpu_seconds() if server is not None else float("nan")) - cpu_before
    return LoadResult(counts["ok"] + counts["err"], counts["err"], elapsed, latencies, cpu)


def settle() -> None:
    """Before a measurement: write back what earlier runs left in the page cache, so that
    it does not land on this run's fsyncs (PostgreSQL's commits, measured after a SQLite
    run, had their p99 raised by half)."""
    os.sync()
    time.sleep(1.0)


@contextmanager
def py_spy(pid: int, out: str | None, *, gil: bool = False) -> Iterator[None]:
    """py-spy samples of process `pid` while the block runs, in its raw format (one line
    per stack, for a flame graph or a count), to `out`; nothing when `out` is None. With
    `gil`, only the thread holding the GIL (the process's Python CPU)."""
    if out is None:
        yield
        return
    cmd = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--format", "raw", "-o", out, "--rate", "200"]
    spy = subprocess.Popen([*cmd, *(["--gil"] if gil else [])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached before the measured work starts
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()


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


@contextmanager
def redis_server() -> Iterator[str]:
    """The Redis at 127.0.0.1:6379 when it answers, else an embedded one for this run: its URL."""
    if reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    from tempfile import TemporaryDirectory

    from core.embedded_redis import EmbeddedRedis

    with TemporaryDirectory() as data:
        embedded = EmbeddedRedis(Path(data))
        try:
            yield embedded.start()
        finally:
            embedded.stop()
