"""The deliverables around the code: the compose file, the CLI, and the quick start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import AliasChoices

from core.settings import Settings
from hub.cli import _parser
from tests.served import HUB, hub_env, served_hub

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


@pytest.mark.slow
def test_hub_serve_starts_prints_a_key_and_takes_an_upsert(tmp_path: Path) -> None:
    """The quick start's first command, end to end, as the README runs it: no settings at
    all (the default data dir, `.hub-data`, relative to the working directory), the
    printed ADMIN key, and a CRM upsert over real HTTP."""
    with served_hub(None, cwd=tmp_path) as hub:
        r = httpx.put(
            f"{hub.base_url}/api/v1/deals/by-ref/salesforce/006QS",
            json={"name": "Quick start deal", "amount": "1000.00", "currency": "EUR"},
            headers={"X-API-Key": hub.api_key},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"]
        r = httpx.get(f"{hub.base_url}/api/v1/deals", headers={"X-API-Key": hub.api_key}, timeout=10)
        assert [d["name"] for d in r.json()["items"]] == ["Quick start deal"]
        assert (tmp_path / ".hub-data" / "hub.db").exists()
        assert (tmp_path / ".hub-data" / "redis" / "redis.log").exists()  # the embedded Redis's

    # The data stays: the same data dir still has its one demo tenant.
    listed = subprocess.run(
        [str(HUB), "tenants", "list"], env=hub.env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    assert listed.stdout.count("\tdemo") == 1


def test_tenant_limits_command_sets_and_clears_overrides(tmp_path: Path) -> None:
    env = hub_env(tmp_path)
    run = lambda *args: subprocess.run([str(HUB), *args], env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("tenants", "create", "acme").returncode == 0
    out = run("tenants", "limits", "acme", "--user-per-minute", "5000", "--burst-multiplier", "3")
    assert out.returncode == 0 and "'user_per_minute': 5000" in out.stdout and "'burst_multiplier': 3.0" in out.stdout
    out = run("tenants", "limits", "acme", "--burst-multiplier", "0")
    assert out.stdout.strip() == "acme: {'user_per_minute': 5000}"
    refused = run("tenants", "limits", "acme", "--user-per-minute", "-1")
    assert refused.returncode == 1 and "must be positive" in refused.stderr
