"""Connectors the hub's integration tests use besides Salesforce and FakeCRM, written
against ``connectors.sdk`` like any plugin: one with an API key (a secret config field),
one with OAuth client credentials (the client id and secret in the connection's config)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.sdk import (
    ApiKeyAuth,
    Connector,
    CursorPaginator,
    DealRecord,
    Kind,
    OAuth2ClientCredentials,
    RateLimit,
    RestResource,
    action,
    hookimpl,
)

KEYED_BASE = "https://api.keyed-crm.test/v1"
TOKEN_BASE = "https://api.token-crm.test"
TOKEN_URL = "https://auth.token-crm.test/oauth/token"


def to_deal(raw: dict[str, Any]) -> DealRecord:
    return DealRecord(external_system="keyed_crm", external_id=str(raw["id"]), name=raw.get("title"))


class NoteParams(BaseModel):
    """Attach a note to a deal."""

    model_config = ConfigDict(extra="forbid")

    deal_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    text: str = Field(min_length=1, max_length=500)
    pinned: bool = False


class NoteResult(BaseModel):
    id: str
    deal_id: str


class KeyedCRM(Connector):
    """A REST CRM authenticated by an API key."""

    key = "keyed_crm"
    title = "Keyed CRM"
    kind = Kind.CRM
    base_url = KEYED_BASE
    auth = ApiKeyAuth(header="Authorization", from_field="api_key", prefix="Bearer ")
    rate_limit = RateLimit(requests=1000, per_seconds=1)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        api_key: SecretStr
        region: str = Field("eu", pattern=r"^(eu|us)$")
        base_url: str | None = None

    streams = (
        RestResource(
            "deals",
            "deals",
            records_at="data",
            paginator=CursorPaginator(token_at="meta.next_cursor", param="cursor"),
            to_record=to_deal,
        ),
    )

    @action(description="Attach a note to a deal")
    async def create_note(self, params: NoteParams) -> NoteResult:
        """POST /notes."""
        body = await self.request_json("POST", "notes", json=params.model_dump())
        return NoteResult(id=str(body["id"]), deal_id=params.deal_id)


class PingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PingResult(BaseModel):
    ok: bool


class TokenCRM(Connector):
    """A CRM whose API takes OAuth client-credentials tokens; each customer registers an app."""

    key = "token_crm"
    title = "Token CRM"
    kind = Kind.CRM
    base_url = TOKEN_BASE
    auth = OAuth2ClientCredentials(token_url=TOKEN_URL, scopes=("deals.read",))

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        client_id: str = Field(min_length=1)
        client_secret: SecretStr

    @action(description="Call GET /ping")
    async def ping(self, params: PingParams) -> PingResult:
        """GET /ping."""
        body = await self.request_json("GET", "ping")
        return PingResult(ok=bool(body.get("ok")))


@hookimpl
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    register(KeyedCRM)
    register(TokenCRM)
