"""HubHttp: retries, Retry-After, idempotency, error typing, breaker and rate limiter wiring."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
import respx

from connectors.sdk import (
    AsyncCircuitBreaker,
    AuthError,
    CircuitOpen,
    ConfigError,
    FatalProviderError,
    HubHttp,
    InMemoryBreakerStorage,
    ProviderUnavailable,
    RateLimited,
    RetryPolicy,
    TokenBucket,
)
from connectors.testing import SleepRecorder

URL = "https://api.example.test/v1/deals"
POLICY = RetryPolicy(random=lambda: 1.0)  # backoffs at their ceiling: 0.5, 1, 2


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def make_http(http_client: httpx.AsyncClient):
    def make(sleeps: SleepRecorder, **kwargs: object) -> HubHttp:
        return HubHttp(client=http_client, retry=POLICY, sleep=sleeps, **kwargs)  # type: ignore[arg-type]

    return make


@respx.mock
async def test_returns_the_decoded_body(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).respond(200, json={"deals": [1, 2]})
    async with make_http(sleeps) as http:
        assert await http.get_json(URL) == {"deals": [1, 2]}
    assert sleeps.calls == []


@respx.mock
async def test_retries_server_errors_with_exponential_backoff(sleeps: SleepRecorder, make_http) -> None:
    route = respx.get(URL)
    route.side_effect = [httpx.Response(503), httpx.Response(502), httpx.Response(200, json={"ok": True})]
    async with make_http(sleeps) as http:
        assert await http.get_json(URL) == {"ok": True}
    assert route.call_count == 3
    assert sleeps.calls == [0.5, 1.0]


@respx.mock
async def test_gives_up_after_max_attempts(sleeps: SleepRecorder, make_http) -> None:
    route = respx.get(URL).respond(503, json=[{"message": "down", "errorCode": "SERVER_UNAVAILABLE"}])
    async with make_http(sleeps) as http:
        with pytest.raises(ProviderUnavailable) as caught:
            await http.get_json(URL)
    assert route.call_count == POLICY.max_attempts
    assert caught.value.status == 503 and caught.value.code == "SERVER_UNAVAILABLE"
    assert sleeps.calls == [0.5, 1.0, 2.0]


@respx.mock
async def test_honours_retry_after_seconds(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).side_effect = [httpx.Response(429, headers={"Retry-After": "12"}), httpx.Response(200, json={})]
    async with make_http(sleeps) as http:
        await http.get_json(URL)
    assert sleeps.calls == [12.0]


@respx.mock
async def test_honours_retry_after_http_date(sleeps: SleepRecorder, make_http) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    respx.get(URL).side_effect = [httpx.Response(503, headers={"Retry-After": when}), httpx.Response(200, json={})]
    async with make_http(sleeps) as http:
        await http.get_json(URL)
    # Graph and others send Retry-After with 503 too.
    assert sleeps.calls == [pytest.approx(30, abs=2)]
    respx.get(URL).side_effect = [httpx.Response(429, headers={"Retry-After": when}), httpx.Response(200, json={})]
    sleeps.calls.clear()
    async with make_http(sleeps) as http:
        await http.get_json(URL)
    assert sleeps.calls == [pytest.approx(30, abs=2)]


@respx.mock
async def test_an_outage_with_a_long_retry_after_is_raised_with_it(sleeps: SleepRecorder, make_http) -> None:
    route = respx.get(URL).respond(503, headers={"Retry-After": "600"})
    async with make_http(sleeps) as http:
        with pytest.raises(ProviderUnavailable) as caught:
            await http.get_json(URL)
    assert caught.value.retry_after == 600.0 and route.call_count == 1


@respx.mock
async def test_long_retry_after_is_raised_for_the_host_to_defer(sleeps: SleepRecorder, make_http) -> None:
    route = respx.get(URL).respond(429, headers={"Retry-After": "3600"})
    async with make_http(sleeps) as http:
        with pytest.raises(RateLimited) as caught:
            await http.get_json(URL)
    assert caught.value.retry_after == 3600.0
    assert route.call_count == 1 and sleeps.calls == []


@respx.mock
async def test_429_without_retry_after_backs_off_then_raises(sleeps: SleepRecorder, make_http) -> None:
    route = respx.get(URL).respond(429)
    async with make_http(sleeps) as http:
        with pytest.raises(RateLimited) as caught:
            await http.get_json(URL)
    assert route.call_count == POLICY.max_attempts
    assert sleeps.calls == [0.5, 1.0, 2.0]
    assert caught.value.retry_after is None


@respx.mock
async def test_post_is_not_resent_after_a_server_error(sleeps: SleepRecorder, make_http) -> None:
    route = respx.post(URL).respond(503)
    async with make_http(sleeps) as http:
        with pytest.raises(ProviderUnavailable):
            await http.request("POST", URL, json={"name": "x"})
    assert route.call_count == 1


@respx.mock
async def test_post_is_resent_when_it_never_arrived_or_was_refused(sleeps: SleepRecorder, make_http) -> None:
    route = respx.post(URL)
    route.side_effect = [httpx.ConnectError("refused"), httpx.Response(429), httpx.Response(201, json={"id": 1})]
    async with make_http(sleeps) as http:
        response = await http.request("POST", URL, json={"name": "x"})
    assert response.status_code == 201 and route.call_count == 3


@respx.mock
async def test_an_idempotent_patch_is_resent(sleeps: SleepRecorder, make_http) -> None:
    route = respx.patch(URL)
    route.side_effect = [httpx.Response(500), httpx.Response(204)]
    async with make_http(sleeps) as http:
        response = await http.request("PATCH", URL, json={}, idempotent=True)
    assert response.status_code == 204 and route.call_count == 2


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, FatalProviderError), (401, AuthError), (403, ConfigError), (404, FatalProviderError)],
)
@respx.mock
async def test_client_errors_are_not_retried(status: int, error_type: type, sleeps: SleepRecorder, make_http) -> None:
    route = respx.get(URL).respond(status)
    async with make_http(sleeps) as http:
        with pytest.raises(error_type):
            await http.get_json(URL)
    assert route.call_count == 1 and sleeps.calls == []


@respx.mock
async def test_accepted_error_statuses_are_returned(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).respond(404, json=[{"errorCode": "NOT_FOUND", "message": "gone"}])
    async with make_http(sleeps) as http:
        result = await http.request_json("GET", URL, accept=(404,))
    assert result.response.status_code == 404 and result.body == [{"errorCode": "NOT_FOUND", "message": "gone"}]


@respx.mock
async def test_truncated_json_is_retried(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).side_effect = [
        httpx.Response(200, content=b'{"deals": [1, 2', headers={"Content-Type": "application/json"}),
        httpx.Response(200, json={"deals": [1, 2]}),
    ]
    async with make_http(sleeps) as http:
        assert await http.get_json(URL) == {"deals": [1, 2]}
    assert sleeps.calls == [0.5]


@respx.mock
async def test_persistently_invalid_json_raises_unavailable(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).respond(200, content=b"<html>maintenance</html>")
    async with make_http(sleeps) as http:
        with pytest.raises(ProviderUnavailable, match="incomplete or invalid JSON body"):
            await http.get_json(URL)


@respx.mock
async def test_timeouts_are_retried(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).side_effect = [httpx.ReadTimeout("slow"), httpx.Response(200, json={})]
    async with make_http(sleeps) as http:
        assert await http.get_json(URL) == {}
    assert sleeps.calls == [0.5]


@respx.mock
async def test_error_messages_never_carry_credentials(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).respond(401, json={"message": "bad key"})
    auth = httpx.BasicAuth("user", "S3CRET-PASSWORD")
    async with make_http(sleeps, auth=auth, headers={"X-Api-Key": "S3CRET-HEADER"}) as http:
        with pytest.raises(AuthError) as caught:
            await http.get_json(URL, params={"api_key": "S3CRET-QUERY"})
    text = f"{caught.value} {caught.value!r}"
    assert "S3CRET" not in text
    assert str(caught.value) == "GET https://api.example.test/v1/deals returned 401: bad key"


@respx.mock
async def test_auth_and_headers_are_applied(sleeps: SleepRecorder, make_http) -> None:
    route = respx.get(URL).respond(200, json={})
    async with make_http(sleeps, auth=httpx.BasicAuth("", "key"), headers={"X-Extra": "1"}) as http:
        await http.get_json(URL)
    request = route.calls.last.request
    assert request.headers["Authorization"].startswith("Basic ")
    assert request.headers["X-Extra"] == "1"
    assert request.headers["Accept"] == "application/json"
    assert request.extensions["timeout"]["connect"] == 10.0


@respx.mock
async def test_observer_sees_every_response(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).side_effect = [httpx.Response(503), httpx.Response(200, json={})]
    seen: list[int] = []
    async with make_http(sleeps) as http:
        await http.request_json("GET", URL, observe=lambda response: seen.append(response.status_code))
    assert seen == [503, 200]


@respx.mock
async def test_breaker_counts_outages_and_then_fails_fast(sleeps: SleepRecorder, make_http) -> None:
    route = respx.get(URL).respond(503)
    breaker = AsyncCircuitBreaker("t1:c1", fail_max=3, storage=InMemoryBreakerStorage())
    async with make_http(sleeps, breaker=breaker) as http:
        with pytest.raises(CircuitOpen) as caught:
            await http.get_json(URL)
        assert route.call_count == 3  # the 4th attempt was refused by the open breaker
        assert await breaker.state() == "open"
        with pytest.raises(CircuitOpen):
            await http.get_json(URL)
    assert route.call_count == 3
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 60


@respx.mock
async def test_auth_and_client_errors_do_not_trip_the_breaker(sleeps: SleepRecorder, make_http) -> None:
    breaker = AsyncCircuitBreaker("t1:c2", fail_max=2)
    async with make_http(sleeps, breaker=breaker) as http:
        for status in (401, 403, 400, 404, 401, 403):
            respx.get(URL).respond(status)
            with pytest.raises((AuthError, ConfigError, FatalProviderError)):
                await http.get_json(URL)
    assert await breaker.state() == "closed"
    assert (await breaker.snapshot()).failures == 0


@respx.mock
async def test_rate_limiter_is_consulted_on_every_attempt(sleeps: SleepRecorder, make_http) -> None:
    respx.get(URL).side_effect = [httpx.Response(500), httpx.Response(200, json={})]
    acquired: list[float] = []

    class CountingBucket(TokenBucket):
        async def acquire(self, tokens: float = 1.0) -> None:
            acquired.append(tokens)
            await super().acquire(tokens)

    async with make_http(sleeps, rate_limiter=CountingBucket(rate=100, capacity=10)) as http:
        await http.get_json(URL)
    assert acquired == [1.0, 1.0]


async def test_a_shared_client_is_left_open(ssl_context) -> None:
    client = httpx.AsyncClient(verify=ssl_context)
    async with HubHttp(client=client):
        pass
    assert not client.is_closed
    await client.aclose()
    own = HubHttp()
    await own.aclose()
    assert own._client.is_closed
