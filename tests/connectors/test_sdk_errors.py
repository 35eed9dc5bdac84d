"""The error classification table and the typed provider errors."""

from __future__ import annotations

import httpx
import pytest

from connectors.sdk import (
    DEFAULT_ERRORS,
    AuthError,
    CircuitOpen,
    ConfigError,
    ErrorAction,
    ErrorRule,
    FatalProviderError,
    ProviderUnavailable,
    RateLimited,
    is_outage,
)
from connectors.sdk._errors import provider_error_details

REQUEST = httpx.Request("GET", "https://api.example.test/v1/deals?api_key=SECRET-KEY-123")


def response(status: int, body: object = None) -> httpx.Response:
    if body is None:
        return httpx.Response(status, request=REQUEST)
    return httpx.Response(status, json=body, request=REQUEST)


@pytest.mark.parametrize(
    ("status", "action", "outage"),
    [
        (400, ErrorAction.FATAL, False),
        (401, ErrorAction.REFRESH_THEN_RETRY, False),
        (403, ErrorAction.CONFIG_ERROR, False),
        (404, ErrorAction.FATAL, False),
        (408, ErrorAction.RETRY, True),
        (409, ErrorAction.FATAL, False),
        (422, ErrorAction.FATAL, False),
        (429, ErrorAction.RATE_LIMITED, False),
        (500, ErrorAction.RETRY, True),
        (502, ErrorAction.RETRY, True),
        (503, ErrorAction.RETRY, True),
        (504, ErrorAction.RETRY, True),
    ],
)
def test_default_table_classifies_statuses(status: int, action: ErrorAction, outage: bool) -> None:
    rule = DEFAULT_ERRORS.classify_response(response(status))
    assert rule is not None
    assert (rule.action, rule.outage) == (action, outage)


def test_success_is_not_classified() -> None:
    assert DEFAULT_ERRORS.classify_response(response(200)) is None
    assert DEFAULT_ERRORS.classify_response(response(300)) is None


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (httpx.ReadTimeout("t"), True),
        (httpx.ConnectError("c"), True),
        (httpx.RemoteProtocolError("r"), True),
        (ValueError("bad json"), True),
    ],
)
def test_default_table_classifies_transport_exceptions_as_retryable_outages(exc: Exception, outage: bool) -> None:
    rule = DEFAULT_ERRORS.classify_exception(exc)
    assert rule.action is ErrorAction.RETRY
    assert rule.outage is outage


def test_unknown_exceptions_are_fatal_and_not_outages() -> None:
    rule = DEFAULT_ERRORS.classify_exception(RuntimeError("bug"))
    assert rule.action is ErrorAction.FATAL and not rule.outage


def test_provider_extension_takes_precedence_by_error_code(sample) -> None:
    table = DEFAULT_ERRORS.extend(
        ErrorRule(ErrorAction.RATE_LIMITED, status=403, code="REQUEST_LIMIT_EXCEEDED", retry_after=900),
        ErrorRule(ErrorAction.REFRESH_THEN_RETRY, status=401, code="INVALID_SESSION_ID"),
    )
    limited = response(403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    rule = table.classify_response(limited)
    assert rule is not None and rule.action is ErrorAction.RATE_LIMITED and rule.retry_after == 900
    # Another 403 keeps the default meaning: a permission problem for the admin.
    forbidden = response(403, [{"message": "no", "errorCode": "INSUFFICIENT_ACCESS"}])
    assert table.classify_response(forbidden).action is ErrorAction.CONFIG_ERROR  # type: ignore[union-attr]
    session = table.classify_response(response(401, sample("salesforce_error_invalid_session.json")))
    assert session is not None and session.action is ErrorAction.REFRESH_THEN_RETRY
    # The default table is not modified by extending it.
    assert DEFAULT_ERRORS.classify_response(limited).action is ErrorAction.CONFIG_ERROR  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "codes", "message"),
    [
        (
            [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
            ("INVALID_SESSION_ID",),
            "Session expired or invalid",
        ),
        ({"errors": [{"code": "not-found", "message": "Not found"}]}, ("not-found",), "Not found"),
        (
            {
                "error": {
                    "code": "activityLimitReached",
                    "message": "Throttled",
                    "innerError": {"code": "throttledRequest"},
                }
            },
            ("activityLimitReached", "throttledRequest"),
            "Throttled",
        ),
        (
            {"error": "invalid_grant", "error_description": "expired access/refresh token"},
            ("invalid_grant",),
            "expired access/refresh token",
        ),
        ({"error_summary": "path/not_found/..", "error": {".tag": "path"}}, (), None),
        ({"message": "Entry type not found"}, (), "Entry type not found"),
    ],
)
def test_error_details_understand_provider_envelopes(body: object, codes: tuple[str, ...], message: str | None) -> None:
    details = provider_error_details(response(400, body))
    assert details.codes == codes
    assert details.message == message


def test_error_details_of_the_salesforce_samples(sample) -> None:
    for name, code in [
        ("salesforce_error_invalid_field.json", "INVALID_FIELD"),
        ("salesforce_error_upsert_extid_not_found.json", "NOT_FOUND"),
        ("salesforce_error_invalid_session.json", "INVALID_SESSION_ID"),
    ]:
        assert provider_error_details(response(400, sample(name))).codes == (code,)


def test_error_details_of_a_non_json_body_are_empty() -> None:
    details = provider_error_details(httpx.Response(502, text="<html>Bad gateway</html>", request=REQUEST))
    assert details.codes == () and details.message is None


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, AuthError), (403, ConfigError), (404, FatalProviderError), (429, RateLimited), (503, ProviderUnavailable)],
)
def test_errors_are_typed_and_leave_the_query_string_out(status: int, error_type: type) -> None:
    error = DEFAULT_ERRORS.error_for_response(
        response(status, [{"message": "Nope", "errorCode": "SOME_CODE"}]),
        DEFAULT_ERRORS.classify_response(response(status)),  # type: ignore[arg-type]
    )
    assert type(error) is error_type
    assert error.status == status and error.code == "SOME_CODE"
    assert str(error) == f"GET https://api.example.test/v1/deals returned {status} SOME_CODE: Nope"
    assert "SECRET-KEY-123" not in repr(error)


def test_exception_errors_name_only_the_exception_type() -> None:
    exc = httpx.ConnectError("connection to https://api.example.test/?api_key=SECRET-KEY-123 refused")
    error = DEFAULT_ERRORS.error_for_exception(exc, REQUEST, DEFAULT_ERRORS.classify_exception(exc))
    assert isinstance(error, ProviderUnavailable)
    assert str(error) == "GET https://api.example.test/v1/deals failed: ConnectError"


def test_long_provider_messages_are_truncated() -> None:
    details = provider_error_details(response(400, {"message": "x" * 5000}))
    assert details.message is not None and len(details.message) == 300


def test_outage_flags() -> None:
    assert is_outage(ProviderUnavailable("down"))
    assert not is_outage(CircuitOpen("open"))
    assert not is_outage(AuthError("no"))
    assert not is_outage(RateLimited("slow down"))
    assert is_outage(httpx.ReadTimeout("t"))
    assert not is_outage(KeyError("bug"))
