"""Streams: what a connector can read, declared as data.

``RestResource`` covers the usual REST list endpoint. An API that does not fit subclasses
``Stream`` and overrides ``read`` only: that is the one override point.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ._errors import FatalProviderError
from ._pagination import PageRequest, Paginator, RecordPath, lookup, paginate
from ._records import DealRecord, Page, Record

if TYPE_CHECKING:
    from ._connector import Connector

ToRecord = Callable[[Mapping[str, Any]], Record | DealRecord]


def parse_cursor(value: Any) -> Any:
    """A cursor value in its real type: ISO-8601 strings become aware ``datetime`` (naive
    ones are taken as UTC); other values are returned unchanged."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def format_cursor(value: Any) -> str:
    """A cursor value as a query parameter: ISO-8601 in UTC with ``Z`` for datetimes."""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class Stream:
    """A readable collection of records. Subclass and override ``read`` for custom APIs.

    :param name: unique within the connector.
    :param primary_key: field (or fields) identifying a record.
    :param cursor_field: field whose value orders changes; set for incremental streams.
    :param model: optional pydantic model validating each raw record; its JSON schema is
        published as the stream's record schema.
    :param description: one line for the registry.
    """

    name: str
    _: KW_ONLY
    primary_key: str | Sequence[str] = "id"
    cursor_field: str | None = None
    model: type[BaseModel] | None = None
    description: str = ""

    @property
    def primary_key_fields(self) -> tuple[str, ...]:
        """``primary_key`` as a tuple."""
        return (self.primary_key,) if isinstance(self.primary_key, str) else tuple(self.primary_key)

    def read(self, connector: Connector, cursor: Any = None) -> AsyncGenerator[Page[Any], None]:
        """Yield pages from ``cursor`` on (everything if ``None``); each page's cursor is
        the value to resume from once its records are stored."""
        raise NotImplementedError(f"stream {self.name!r} does not implement read()")

    def describe(self) -> dict[str, Any]:
        """Name, key, cursor and record schema, for the registry."""
        return {
            "name": self.name,
            "description": self.description,
            "primary_key": list(self.primary_key_fields),
            "cursor_field": self.cursor_field,
            "incremental": self.cursor_field is not None,
            "record_schema": self.model.model_json_schema() if self.model else None,
        }

    def validate_record(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``raw`` checked against ``model`` (if any) and normalised to JSON-able values.

        :raises FatalProviderError: the record does not match the model; the message
            names the failing fields only, never their values.
        """
        if self.model is None:
            return dict(raw)
        try:
            return self.model.model_validate(raw).model_dump(mode="json", by_alias=True)
        except ValidationError as exc:
            where = sorted({".".join(map(str, error["loc"])) for error in exc.errors()})
            raise FatalProviderError(f"stream {self.name!r}: record does not match its model at {where}") from None

    def record_id(self, raw: Mapping[str, Any]) -> str:
        """The primary key value of ``raw`` as a string (``:``-joined for composite keys)."""
        try:
            return ":".join(str(raw[key]) for key in self.primary_key_fields)
        except KeyError:
            raise FatalProviderError(f"stream {self.name!r}: record without primary key {self.primary_key!r}") from None

    def cursor_of(self, raw: Mapping[str, Any]) -> Any:
        """The typed cursor value of ``raw``, or ``None``."""
        if self.cursor_field is None:
            return None
        return parse_cursor(lookup(raw, self.cursor_field))


def advance(cursor: Any, candidate: Any) -> Any:
    """The later of two cursor values, ignoring ``None``."""
    if candidate is None:
        return cursor
    if cursor is None:
        return candidate
    return max(cursor, candidate)


@dataclass(frozen=True)
class RestResource(Stream):
    """A REST list endpoint, declared: path, where the records are, how pages follow.

    :param path: relative to the connector's ``api_base`` (or absolute).
    :param records_at: where the record list sits in the body (``None``: the body is it).
    :param cursor_param: query parameter taking the cursor for incremental reads.
    :param cursor_format: renders the cursor for ``cursor_param``.
    :param paginator: how pages follow each other; ``None`` for a single page.
    :param params: fixed query parameters.
    :param to_record: maps a raw record to a ``Record`` or ``DealRecord``; by default a
        ``Record`` with the raw fields, keyed by ``primary_key``.
    """

    path: str
    _: KW_ONLY
    records_at: RecordPath = None
    cursor_param: str | None = None
    cursor_format: Callable[[Any], str] = format_cursor
    paginator: Paginator | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    to_record: ToRecord | None = None

    async def read(self, connector: Connector, cursor: Any = None) -> AsyncGenerator[Page[Any], None]:
        """Yield the endpoint's pages, from ``cursor`` on."""
        params = dict(self.params)
        if cursor is not None and self.cursor_param:
            params[self.cursor_param] = self.cursor_format(cursor)
        request = PageRequest(connector.url(self.path), params)
        high = cursor
        pages = paginate(connector.fetch, request, paginator=self.paginator, records_at=self.records_at)
        async with aclosing(pages):
            async for raw_page in pages:
                records = []
                for raw in raw_page.records:
                    high = advance(high, self.cursor_of(raw))
                    records.append(self.make_record(raw))
                yield Page(records=records, cursor=high)

    def make_record(self, raw: Mapping[str, Any]) -> Record | DealRecord:
        """The record for one raw item: validated, then mapped by ``to_record``."""
        data = self.validate_record(raw)
        if self.to_record is not None:
            return self.to_record(data)
        updated = self.cursor_of(data)
        return Record(
            id=self.record_id(data),
            data=data,
            updated_at=updated if isinstance(updated, datetime) else None,
        )
