"""Acme CRM: a third-party connector plugin written against ``connectors.sdk`` only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from connectors.sdk import (
    ApiKeyAuth,
    Connector,
    CursorPaginator,
    DealRecord,
    Kind,
    RateLimit,
    RestResource,
    hookimpl,
    parse_cursor,
)


def to_deal(raw: Mapping[str, Any]) -> DealRecord:
    """Map an Acme deal to the hub's ``DealRecord``."""
    return DealRecord(
        external_system="acme_crm",
        external_id=str(raw["id"]),
        name=raw.get("title"),
        stage=raw.get("pipeline_stage"),
        amount=raw.get("value"),
        currency=raw.get("currency"),
        company=(raw.get("organization") or {}).get("name"),
        deleted=bool(raw.get("archived", False)),
        updated_at=parse_cursor(raw.get("updated_at")),
    )


class AcmeCRM(Connector):
    """Acme CRM deals, incremental on ``updated_at``."""

    key = "acme_crm"
    title = "Acme CRM"
    kind = Kind.CRM
    base_url = "https://api.acme-crm.test/v1"
    auth = ApiKeyAuth(header="Authorization", from_field="api_key", prefix="Bearer ")
    rate_limit = RateLimit(requests=10, per_seconds=1)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        api_key: SecretStr
        base_url: str | None = None

    streams = (
        RestResource(
            "deals",
            "deals",
            records_at="data",
            cursor_field="updated_at",
            cursor_param="updated_since",
            paginator=CursorPaginator(token_at="meta.next_cursor", param="cursor"),
            to_record=to_deal,
        ),
    )


@hookimpl
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    """Register Acme CRM with the hub."""
    register(AcmeCRM)
