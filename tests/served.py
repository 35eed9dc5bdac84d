"""A real `hub serve` in a subprocess, as the quick start runs it: for the tests that
must cross a real socket (the quick start itself, the API fuzzer)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.embedded_redis import free_port

HUB = Path(sys.executable).parent / "hub"


@dataclass
class ServedHub:
    base_url: str
    api_key: str
    env: dict[str, str]


def hub_env(data_dir: Path | None, **extra: str) -> dict[str, str]:
    """This process's environment without any hub setting, plus `extra` (and the data dir
    unless None: the default, `.hub-data` in the working directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") and k not in {"DATABASE_URL", "REDIS_URL"}}
    if data_dir is not None:
        env["HUB_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


@contextmanager
def served_hub(
    data_dir: Path | None, *, cwd: Path | None = None, timeout: float = 60.0, **extra_env: str
) -> Iterator[ServedHub]:
    """Start `hub serve` on a free port with a fresh data dir (None: the default, under
    `cwd`); yield once it answers, with the ADMIN key it printed."""
    env = hub_env(data_dir, **extra_env)
    port = free_port()
    proc = subprocess.Popen(
        [str(HUB), "serve", "--port", str(port)], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    try:
        key, seen = None, []
        deadline = time.monotonic() + timeout
        while key is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"HUB_API_KEY=(hub_\S+)", line)
            key = match.group(1) if match else None
        assert key, "hub serve printed no key:\n" + "".join(seen)
        # Keep reading its output so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield ServedHub(base, key, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
