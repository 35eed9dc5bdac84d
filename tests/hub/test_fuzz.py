"""Property-based fuzzing of the whole API from its own OpenAPI document, against a
real `hub serve` (SQLite file, embedded Redis): no 5xx, every error is
problem+json, every response matches the schema it documents."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.specs.openapi.checks import positive_data_acceptance

from core.embedded_redis import free_port

MAX_EXAMPLES = int(os.environ.get("HUB_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def served_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") and k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        HUB_DATA_DIR=str(tmp_path_factory.mktemp("fuzz")),
        # The fuzzer is one busy client; the limits are tested elsewhere.
        HUB_RATE_LIMIT_USER_PER_MINUTE="1000000",
        HUB_RATE_LIMIT_INTEGRATION_PER_MINUTE="1000000",
        HUB_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "hub"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    key = None
    deadline = time.monotonic() + 60
    while key is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"HUB_API_KEY=(hub_\S+)", line)
        key = match.group(1) if match else None
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    assert key, "hub serve printed no key"
    try:
        yield base, key
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@schemathesis.check
def errors_are_problem_json(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/problem+json"), f"{response.status_code} answered as {content_type}"
        body = response.json()
        for member in ("type", "title", "status", "detail", "code", "request_id"):
            assert member in body, f"problem without {member}"
        assert body["status"] == response.status_code
    return None


@pytest.mark.slow
def test_api_fuzz(served_hub: tuple[str, str]) -> None:
    """Every operation, a bounded number of generated cases each (HUB_FUZZ_EXAMPLES)."""
    base, key = served_hub
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/metrics":
            continue  # Prometheus text, not JSON: covered by the operations tests
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def fuzz(case: schemathesis.Case) -> None:
            # A cursor is opaque: a schema-valid string the API never issued is rightly refused.
            excluded = [positive_data_acceptance] if "cursor" in (case.query or {}) else []
            case.call_and_validate(
                base_url=base,
                headers={"X-API-Key": key},
                additional_checks=[errors_are_problem_json],
                excluded_checks=excluded,
            )

        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 10
    assert not failures, "\n\n".join(failures)
