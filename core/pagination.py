"""Keyset (cursor) pagination: stable under inserts, no OFFSET scans."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.types import TypeDecorator

from core.errors import ValidationFailed
from core.jsonable import iso

MAX_LIMIT = 200
_MAX_BIGINT = 2**63 - 1


@dataclass(frozen=True)
class Sort:
    column: InstrumentedAttribute[Any]
    descending: bool


def encode_cursor(value: Any, row_id: str) -> str:
    if isinstance(value, datetime):
        value = {"t": iso(value)}
    raw = orjson.dumps([value, row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _invalid_cursor() -> ValidationFailed:
    return ValidationFailed(
        "The cursor is not one this API issued", details=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}]
    )


def decode_cursor(cursor: str, expected: type | None = None) -> tuple[Any, str]:
    """The (sort value, id) a cursor holds; with `expected`, the value must be of that type
    (a cursor of one sort given with another, or a forged one, is refused, not run)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, row_id = orjson.loads(raw)
        if isinstance(value, dict):
            value = datetime.fromisoformat(value["t"].replace("Z", "+00:00"))
            if value.tzinfo is None:
                raise ValueError
        if not isinstance(row_id, str):
            raise ValueError
    except (binascii.Error, ValueError, TypeError, KeyError, AttributeError, orjson.JSONDecodeError):
        raise _invalid_cursor() from None
    if expected is not None and not isinstance(value, expected):
        raise _invalid_cursor()
    return value, row_id


def decode_seq_cursor(cursor: str) -> int:
    """The sequence number a plain-number cursor holds (the audit trail's `seq`).

    ASCII digits only (str.isdigit() also passes '²', which int() refuses) and within the
    bigint column, so a forged cursor is refused like any other, not sent to the database."""
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > _MAX_BIGINT:
        raise _invalid_cursor()
    return int(cursor)


def _python_type(column: InstrumentedAttribute[Any]) -> type | None:
    """What a cursor value for this column must be (the stored type for a TypeDecorator)."""
    column_type = column.type
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    try:
        return column_type.python_type  # type: ignore[no-any-return]
    except NotImplementedError:
        return None


def page(stmt: Select[Any], sort: Sort, id_column: InstrumentedAttribute[Any], *, limit: int, cursor: str | None) -> Select[Any]:
    """Order `stmt` by (sort column, id), start after `cursor`, fetch one extra row to
    know whether there is a next page."""
    col = sort.column
    if cursor:
        value, last_id = decode_cursor(cursor, _python_type(col))
        if sort.descending:
            stmt = stmt.where(or_(col < value, and_(col == value, id_column < last_id)))
        else:
            stmt = stmt.where(or_(col > value, and_(col == value, id_column > last_id)))
    if sort.descending:
        stmt = stmt.order_by(col.desc(), id_column.desc())
    else:
        stmt = stmt.order_by(col.asc(), id_column.asc())
    return stmt.limit(limit + 1)


def split(rows: list[Any], sort: Sort, *, limit: int) -> tuple[list[Any], str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, sort.column.key), last.id)
