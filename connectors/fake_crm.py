"""``FakeCRM``: a deterministic in-memory CRM connector for hub and worker tests.

It is a plugin module like any other, but not in ``DEFAULT_CONNECTORS``: tests opt in with
``ConnectorRegistry(plugins=[connectors.testing.FAKE_CRM_PLUGIN])``. No network: pages are
computed from the config, so a test knows exactly what a sync must store.

Deal ``i`` (0-based) is ``FAKE-{i+1:05d}``, updated at ``start + i minutes``; a read from
cursor ``c`` returns the deals updated strictly after ``c``, ``page_size`` per page.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connectors.sdk import (
    Connector,
    DealRecord,
    Kind,
    Page,
    ProviderUnavailable,
    Stream,
    action,
    hookimpl,
)

STAGES = ("Prospecting", "Qualification", "Proposal", "Negotiation", "Closed Won", "Closed Lost")


class FakeCRMConfig(BaseModel):
    """How much fake data to serve, and which failure to simulate."""

    model_config = ConfigDict(extra="forbid")

    records: int = Field(25, ge=0, le=100_000)
    page_size: int = Field(10, ge=1, le=10_000)
    deleted_every: int = Field(0, ge=0, description="Every n-th deal is a tombstone (0: none)")
    fail_on_page: int | None = Field(
        None, ge=1, description="Raise ProviderUnavailable instead of this page (1-based): a crash mid-sync"
    )
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)


class PushStatusParams(BaseModel):
    """A status update pushed from the hub to the CRM."""

    model_config = ConfigDict(extra="forbid")

    external_id: str
    status: str
    note: str | None = None


class PushStatusResult(BaseModel):
    """The fake CRM's acknowledgement."""

    external_id: str
    status: str
    accepted: bool = True


def fake_deal(config: FakeCRMConfig, index: int) -> DealRecord:
    """Deal number ``index`` (0-based) of a FakeCRM with ``config``."""
    number = index + 1
    return DealRecord(
        external_system=FakeCRM.key,
        external_id=f"FAKE-{number:05d}",
        name=f"Deal {number}",
        stage=STAGES[index % len(STAGES)],
        amount=Decimal(1000 * number),
        currency="USD",
        close_date=(config.start + timedelta(days=index)).date(),
        company=f"Company {index % 7}",
        owner=f"Owner {index % 3}",
        attributes={"probability": (index * 10) % 100},
        deleted=bool(config.deleted_every) and number % config.deleted_every == 0,
        updated_at=config.start + timedelta(minutes=index),
    )


@dataclass(frozen=True)
class FakeDealStream(Stream):
    """The fake deals, oldest first; the cursor is the last ``updated_at`` (a ``datetime``)."""

    async def read(self, connector: Connector, cursor: Any = None) -> AsyncGenerator[Page[DealRecord], None]:
        """Yield pages of deals updated after ``cursor``."""
        config = connector.config
        assert isinstance(config, FakeCRMConfig)
        deals = [fake_deal(config, index) for index in range(config.records)]
        pending = [deal for deal in deals if cursor is None or (deal.updated_at and deal.updated_at > cursor)]
        for number, offset in enumerate(range(0, len(pending), config.page_size), start=1):
            if config.fail_on_page == number:
                raise ProviderUnavailable(f"fake_crm: simulated outage on page {number}")
            chunk = pending[offset : offset + config.page_size]
            yield Page(records=chunk, cursor=chunk[-1].updated_at)


class FakeCRM(Connector):
    """A CRM that lives in memory: deterministic deals, pages, tombstones and failures."""

    key = "fake_crm"
    title = "Fake CRM"
    kind = Kind.CRM
    Config = FakeCRMConfig
    streams = (FakeDealStream("deals", primary_key="external_id", cursor_field="updated_at"),)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pushed: list[PushStatusParams] = []
        """Status updates received by ``push_status``, in order."""

    @action(description="Record a deal status pushed from the hub")
    async def push_status(self, params: PushStatusParams) -> PushStatusResult:
        """Accept a status update."""
        self.pushed.append(params)
        return PushStatusResult(external_id=params.external_id, status=params.status)


@hookimpl
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    """Register ``FakeCRM``."""
    register(FakeCRM)
