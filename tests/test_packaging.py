"""The deliverables around the code: the compose file, the CLI, and the quick start."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import AliasChoices

from core.settings import Settings
from hub.cli import _parser

ROOT = Path(__file__).resolve().parent.parent


def _settings_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"HUB_{name.upper()}")
        if isinstance(field.validation_alias, AliasChoices):
            names.update(str(choice) for choice in field.validation_alias.choices)
    return names


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_commands_are_real_cli_commands() -> None:
    services = _compose()["services"]
    hub_services = [s for s in services.values() if s.get("command") and s["command"][0] == "hub"]
    assert hub_services, "the compose file runs no hub process"
    for service in hub_services:
        _parser().parse_args(service["command"][1:])  # exits (SystemExit) on an unknown command or flag


def test_compose_variables_are_settings_the_hub_reads() -> None:
    known = _settings_env_names()
    for name, service in _compose()["services"].items():
        if not (service.get("command") or [""])[0] == "hub":
            continue
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name} sets variables the hub ignores: {unknown}"
        url = service["environment"]["DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_hub_serve_starts_prints_a_key_and_takes_an_upsert(tmp_path: Path) -> None:
    """The quick start's first command, end to end: a fresh data dir, the printed
    ADMIN key, and a CRM upsert over real HTTP."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") and k not in {"DATABASE_URL", "REDIS_URL"}}
    env["HUB_DATA_DIR"] = str(tmp_path / "data")
    hub = Path(sys.executable).parent / "hub"
    proc = subprocess.Popen(
        [str(hub), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        key, seen = None, []
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while key is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"HUB_API_KEY=(hub_\S+)", line)
            if match:
                key = match.group(1)
        assert key, "no key printed:\n" + "".join(seen)
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        r = httpx.put(
            f"{base}/api/v1/deals/by-ref/salesforce/006QS",
            json={"name": "Quick start deal", "amount": "1000.00", "currency": "EUR"},
            headers={"X-API-Key": key},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"]
        r = httpx.get(f"{base}/api/v1/deals", headers={"X-API-Key": key}, timeout=10)
        assert [d["name"] for d in r.json()["items"]] == ["Quick start deal"]
        assert (tmp_path / "data" / "hub.db").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    # A second start on the same data dir keeps the tenant and prints no new key.
    proc = subprocess.run(
        [str(hub), "tenants", "list"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.count("\tdemo") == 1
