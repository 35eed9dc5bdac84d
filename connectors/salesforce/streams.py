"""Salesforce streams: Opportunities by SOQL on ``SystemModstamp``, and their deletions."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from connectors.sdk import DealRecord, NextUrlPaginator, Page, PageRequest, Stream, paginate, parse_cursor

from .mapping import EXTERNAL_SYSTEM, to_deal

if TYPE_CHECKING:
    from .connector import SalesforceConnector

# Salesforce keeps deletions for 30 days; stay inside the window with a margin.
DELETED_LOOKBACK = timedelta(days=30) - timedelta(minutes=5)
_NEXT = NextUrlPaginator(url_at="nextRecordsUrl", done_at="done")


def soql_datetime(value: datetime) -> str:
    """A SOQL dateTime literal in UTC, truncated to the second.

    Truncating moves the bound earlier; with ``>=`` that can only re-read a record (an
    idempotent upsert absorbs it), never skip one.
    """
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class OpportunityStream(Stream):
    """Opportunities changed since the cursor, oldest first, as ``DealRecord`` pages.

    The cursor is the greatest ``SystemModstamp`` read so far (a ``datetime``); records are
    ordered by it, so the cursor after each page is a safe resume point.
    """

    def soql(self, connector: SalesforceConnector, cursor: datetime | None) -> str:
        """The query for one incremental read."""
        where = f" WHERE SystemModstamp >= {soql_datetime(cursor)}" if cursor is not None else ""
        fields = ", ".join(connector.opportunity_fields())
        return f"SELECT {fields} FROM Opportunity{where} ORDER BY SystemModstamp ASC"

    async def read(self, connector: SalesforceConnector, cursor: Any = None) -> AsyncGenerator[Page[DealRecord], None]:  # type: ignore[override]
        """Yield pages of deals, following ``nextRecordsUrl`` until ``done``."""
        request = PageRequest(connector.url("query"), {"q": self.soql(connector, cursor)})
        high: datetime | None = cursor
        pages = paginate(connector.fetch, request, paginator=_NEXT, records_at="records")
        async with aclosing(pages):
            async for raw in pages:
                deals = [to_deal(record) for record in raw.records]
                for deal in deals:
                    if deal.updated_at is not None and (high is None or deal.updated_at > high):
                        high = deal.updated_at
                yield Page(records=deals, cursor=high)


@dataclass(frozen=True)
class DeletedOpportunityStream(Stream):
    """Opportunities deleted since the cursor, as ``DealRecord`` tombstones (``deleted=True``).

    Reads ``/sobjects/Opportunity/deleted/?start=&end=``; the cursor is the response's
    ``latestDateCovered``. Salesforce keeps 30 days only: a cursor older than that is
    clamped, and deletions in the gap are lost (a periodic full sync catches them).
    """

    async def read(self, connector: SalesforceConnector, cursor: Any = None) -> AsyncGenerator[Page[DealRecord], None]:  # type: ignore[override]
        """Yield one page of tombstones covering ``cursor`` (or 30 days ago) up to now."""
        end = connector.now()
        start = end - DELETED_LOOKBACK
        if cursor is not None and cursor > start:
            start = cursor
        if end - start < timedelta(minutes=1):
            yield Page(records=[], cursor=cursor)  # nothing new can be covered yet
            return
        body = await connector.request_json(
            "GET", "sobjects/Opportunity/deleted/", params={"start": _iso(start), "end": _iso(end)}
        )
        deals = [
            DealRecord(
                external_system=EXTERNAL_SYSTEM,
                external_id=str(item["id"]),
                deleted=True,
                updated_at=parse_cursor(item.get("deletedDate")),
            )
            for item in body.get("deletedRecords", [])
        ]
        covered = parse_cursor(body.get("latestDateCovered"))
        yield Page(records=deals, cursor=covered if isinstance(covered, datetime) else cursor)
