"""Auth specs and flows: OAuth2 refresh on 401 with host callbacks, API key, Basic."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
import respx
from pydantic import BaseModel, ConfigDict, SecretStr

from connectors.sdk import (
    ApiKeyAuth,
    AuthError,
    BasicAuth,
    HubHttp,
    OAuth2Auth,
    OAuth2AuthorizationCode,
    OAuth2ClientCredentials,
    ProviderUnavailable,
    RetryPolicy,
    fetch_client_credentials_token,
    refresh_oauth2_token,
)

API = "https://na1.salesforce.com/services/data/v62.0/limits"
TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"


class KeyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: SecretStr
    user: str = "me"


class Host:
    """What the hub does around OAuth2Auth: refresh via the token endpoint, persist updates."""

    def __init__(self, client: httpx.AsyncClient, result: dict | Exception | None = None) -> None:
        self.client = client
        self.refreshed_with: list[dict] = []
        self.persisted: list[dict] = []
        self.result = result

    async def refresh(self, token):
        self.refreshed_with.append(dict(token))
        if isinstance(self.result, Exception):
            raise self.result
        if self.result is not None:
            return self.result
        return await refresh_oauth2_token(
            self.client, token_url=TOKEN_URL, token=token, client_id="cid", client_secret="csecret"
        )

    async def on_token_update(self, token):
        self.persisted.append(token)


@pytest.fixture
def token(sample) -> dict:
    return {**sample("salesforce_oauth_token_success.json"), "refresh_token": "5Aep-REFRESH-TOKEN-value"}


@respx.mock
async def test_refreshes_once_on_401_and_hands_the_new_token_to_the_host(sample, token, http_client) -> None:
    old_access = token["access_token"]
    refreshed = {**sample("salesforce_oauth_token_success.json"), "access_token": "00Dx!NEW-ACCESS-TOKEN"}
    token_route = respx.post(TOKEN_URL).respond(200, json=refreshed)
    api = respx.get(API)
    api.side_effect = [
        httpx.Response(401, json=sample("salesforce_error_invalid_session.json")),
        httpx.Response(200, json={"DailyApiRequests": {"Max": 15000, "Remaining": 14998}}),
    ]
    host = Host(http_client)
    auth = OAuth2Auth(token, refresh=host.refresh, on_token_update=host.on_token_update)
    http = HubHttp(auth=auth, client=http_client)
    assert (await http.get_json(API))["DailyApiRequests"]["Max"] == 15000
    assert [call.request.headers["Authorization"] for call in api.calls] == [
        f"Bearer {old_access}",
        "Bearer 00Dx!NEW-ACCESS-TOKEN",
    ]
    form = dict(httpx.QueryParams(token_route.calls.last.request.content.decode()))
    assert form == {
        "grant_type": "refresh_token",
        "refresh_token": "5Aep-REFRESH-TOKEN-value",
        "client_id": "cid",
        "client_secret": "csecret",
    }
    # Salesforce answers without a refresh token: the stored one is kept.
    assert host.persisted == [{**refreshed, "refresh_token": "5Aep-REFRESH-TOKEN-value"}]
    assert auth.token["access_token"] == "00Dx!NEW-ACCESS-TOKEN"


@respx.mock
async def test_concurrent_401s_refresh_only_once(token, http_client) -> None:
    old = token["access_token"]

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == f"Bearer {old}":
            return httpx.Response(401)
        return httpx.Response(200, json={})

    respx.get(API).mock(side_effect=answer)
    host = Host(http_client, result={"access_token": "fresh"})

    async def slow_refresh(current):
        await asyncio.sleep(0.01)  # let the other requests pile up on the lock
        return await host.refresh(current)

    auth = OAuth2Auth(token, refresh=slow_refresh, on_token_update=host.on_token_update)
    http = HubHttp(auth=auth, client=http_client)
    await asyncio.gather(*(http.get_json(API) for _ in range(5)))
    assert len(host.refreshed_with) == 1 and len(host.persisted) == 1


@respx.mock
async def test_a_rejected_refresh_token_is_an_auth_error_without_secrets(sample, token, http_client) -> None:
    respx.post(TOKEN_URL).respond(400, json=sample("salesforce_oauth_refresh_invalid_grant.json"))
    api = respx.get(API).respond(401, json=sample("salesforce_error_invalid_session.json"))
    host = Host(http_client)
    http = HubHttp(
        auth=OAuth2Auth(token, refresh=host.refresh, on_token_update=host.on_token_update), client=http_client
    )
    with pytest.raises(AuthError) as caught:
        await http.get_json(API)
    assert caught.value.code == "invalid_grant"
    assert "expired access/refresh token" in str(caught.value)
    text = f"{caught.value} {caught.value!r}"
    assert token["access_token"] not in text and token["refresh_token"] not in text and "csecret" not in text
    assert host.persisted == [] and api.call_count == 1


@respx.mock
async def test_still_401_after_refresh_is_an_auth_error(token, http_client) -> None:
    respx.get(API).respond(401)
    host = Host(http_client, result={"access_token": "fresh-but-useless"})
    http = HubHttp(auth=OAuth2Auth(token, refresh=host.refresh), client=http_client, retry=RetryPolicy())
    with pytest.raises(AuthError):
        await http.get_json(API)
    assert len(host.refreshed_with) == 1


@respx.mock
async def test_without_refresh_callback_a_401_is_an_auth_error(token, http_client) -> None:
    respx.get(API).respond(401)
    with pytest.raises(AuthError):
        await HubHttp(auth=OAuth2Auth(token), client=http_client).get_json(API)


@respx.mock
async def test_an_expired_token_is_refreshed_before_the_request(http_client) -> None:
    api = respx.get(API).respond(200, json={})
    host = Host(http_client, result={"access_token": "fresh", "expires_in": 3600})
    auth = OAuth2Auth(
        {"access_token": "stale", "refresh_token": "r", "expires_at": 1_000.0},
        refresh=host.refresh,
        on_token_update=host.on_token_update,
        clock=lambda: 2_000.0,
    )
    await HubHttp(auth=auth, client=http_client).get_json(API)
    assert api.calls.last.request.headers["Authorization"] == "Bearer fresh"
    assert host.persisted[0]["expires_at"] == 5_600.0


@respx.mock
async def test_client_credentials_mint_the_first_token(http_client) -> None:
    token_url = "https://acme.dealcloud.com/api/rest/v1/oauth/token"
    minted = respx.post(token_url).respond(200, json={"access_token": "minted", "expires_in": 900})
    api = respx.get(API).respond(200, json={})
    persisted: list[dict] = []

    async def mint(_token):
        return await fetch_client_credentials_token(
            http_client, token_url=token_url, client_id="1234", client_secret="api-key", scopes=["data"]
        )

    async def persist(token):
        persisted.append(token)

    spec = OAuth2ClientCredentials(token_url=token_url, scopes=["data"])
    auth = spec.http_auth(KeyConfig(api_key=SecretStr("x")), {}, refresh=mint, on_token_update=persist)
    await HubHttp(auth=auth, client=http_client).get_json(API)
    assert api.calls.last.request.headers["Authorization"] == "Bearer minted"
    assert b"grant_type=client_credentials" in minted.calls.last.request.content
    assert b"scope=data" in minted.calls.last.request.content
    assert persisted[0]["access_token"] == "minted"


@respx.mock
async def test_token_endpoint_outage_is_unavailable_not_auth(http_client, token) -> None:
    respx.post(TOKEN_URL).respond(503)
    with pytest.raises(ProviderUnavailable):
        await refresh_oauth2_token(http_client, token_url=TOKEN_URL, token=token, client_id="cid")
    respx.post(TOKEN_URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(ProviderUnavailable):
        await refresh_oauth2_token(http_client, token_url=TOKEN_URL, token=token, client_id="cid")


async def test_refresh_without_a_refresh_token_needs_reauthorization(http_client) -> None:
    with pytest.raises(AuthError, match="re-authorized"):
        await refresh_oauth2_token(http_client, token_url=TOKEN_URL, token={"access_token": "a"}, client_id="cid")


@respx.mock
async def test_api_key_auth_reads_the_secret_from_config(http_client) -> None:
    api = respx.get(API).respond(200, json={})
    spec = ApiKeyAuth(header="Authorization", from_field="api_key", prefix="Bearer ")
    auth = spec.http_auth(KeyConfig(api_key=SecretStr("k-123")), {})
    await HubHttp(auth=auth, client=http_client).get_json(API)
    assert api.calls.last.request.headers["Authorization"] == "Bearer k-123"


@respx.mock
async def test_basic_auth_with_an_empty_user_name(http_client) -> None:
    api = respx.get(API).respond(200, json={})
    auth = BasicAuth(password_field="api_key").http_auth(KeyConfig(api_key=SecretStr("k-123")), {})
    await HubHttp(auth=auth, client=http_client).get_json(API)
    assert api.calls.last.request.headers["Authorization"] == "Basic " + base64.b64encode(b":k-123").decode()


def test_missing_secret_is_an_auth_error() -> None:
    with pytest.raises(AuthError, match="'token'"):
        ApiKeyAuth(header="X-Key", from_field="token").http_auth(KeyConfig(api_key=SecretStr("k")), {})


def test_specs_describe_themselves_without_secrets() -> None:
    spec = OAuth2AuthorizationCode(authorize_url="https://a.test/auth", token_url="https://a.test/token", scopes=["x"])
    assert spec.describe() == {
        "scheme": "oauth2_authorization_code",
        "authorize_url": "https://a.test/auth",
        "token_url": "https://a.test/token",
        "scopes": ["x"],
        "pkce": True,
    }
    assert ApiKeyAuth(header="X-Key", from_field="api_key").describe()["scheme"] == "api_key"
    assert BasicAuth(password_field="p").describe()["scheme"] == "basic"
    assert OAuth2ClientCredentials(token_url="https://a.test/t").describe()["scheme"] == "oauth2_client_credentials"


def test_oauth2_auth_is_async_only() -> None:
    with pytest.raises(RuntimeError), httpx.Client(auth=OAuth2Auth({"access_token": "a"}), verify=False) as client:
        client.get("https://example.test")
