"""Property-based fuzzing of the whole API from its own OpenAPI document, against a
real `hub serve` (SQLite file, embedded Redis): no 5xx, every error is
problem+json, every response matches the schema it documents."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.served import ServedHub, served_hub

MAX_EXAMPLES = int(os.environ.get("HUB_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHub]:
    # The fuzzer is one busy client; the limits are tested elsewhere.
    with served_hub(
        tmp_path_factory.mktemp("fuzz"),
        HUB_RATE_LIMIT_USER_PER_MINUTE="1000000",
        HUB_RATE_LIMIT_INTEGRATION_PER_MINUTE="1000000",
        HUB_LOG_LEVEL="WARNING",
    ) as served:
        yield served


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
def test_api_fuzz(hub: ServedHub) -> None:
    """Every operation, a bounded number of generated cases each (HUB_FUZZ_EXAMPLES)."""
    base, key = hub.base_url, hub.api_key
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/metrics":
            continue  # Prometheus text, not JSON: covered by the operations tests
        operations += 1
        # Checked against a schema known only at run time (a connector's, a signed token):
        # schema-valid input may rightly be refused.
        runtime_checked = "x-runtime-validation" in operation.definition.raw

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def fuzz(case: schemathesis.Case) -> None:
            # A cursor is opaque: a schema-valid string the API never issued is rightly refused.
            excluded = [positive_data_acceptance] if "cursor" in (case.query or {}) or runtime_checked else []
            case.call_and_validate(
                base_url=base,
                headers={"X-API-Key": key},
                additional_checks=[errors_are_problem_json],
                excluded_checks=excluded,
            )

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect every failure, report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 10
    assert not failures, "\n\n".join(failures)
