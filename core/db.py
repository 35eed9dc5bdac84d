"""Engines, sessions and the tenant scope that every ORM query passes through.

Tenant scoping is enforced here, not remembered by each service: a session is
opened *for* a tenant, and every ORM SELECT/UPDATE/DELETE touching a
`TenantOwned` model gets `tenant_id = <session tenant>` added. A statement on
tenant rows from a session without a tenant raises, unless the caller says
`execution_options(cross_tenant=True)` (key lookup, the outbox relay). A Core statement
(on a `Table`'s columns, where the ORM's criteria do not apply) names the tenant itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import column, event, table
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.util import find_tables

from core.jsonable import dumps
from core.models import Base, TenantOwned


class TenantScopeMissing(RuntimeError):
    """A query on tenant-owned rows was attempted without a tenant."""


def _tenant_table_names() -> frozenset[str]:
    # Worked out again only when a model is added: this runs for every ORM statement.
    mappers = Base.registry.mappers
    if _TENANT_TABLES[0] != len(mappers):
        names = frozenset(m.local_table.name for m in mappers if issubclass(m.class_, TenantOwned))
        _TENANT_TABLES[:] = [len(mappers), names]
    return _TENANT_TABLES[1]  # type: ignore[no-any-return]


_TENANT_TABLES: list[object] = [-1, frozenset()]


def _touches_tenant_rows(state: ORMExecuteState) -> bool:
    if any(issubclass(m.class_, TenantOwned) for m in state.all_mappers):
        return True
    # An entity named only in select_from() (`select(func.count()).select_from(Deal)`)
    # is not among all_mappers, yet it reads tenant rows: look at the tables too.
    names = _tenant_table_names()
    tables = find_tables(state.statement, include_aliases=True, include_joins=True, include_crud=True)
    return any(getattr(t, "name", None) in names for t in tables)


@event.listens_for(Session, "do_orm_execute")
def _scope_to_tenant(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.execution_options.get("cross_tenant", False):
        return
    tenant_id = state.session.info.get("tenant_id")
    if tenant_id is not None and not state.is_orm_statement:
        # A Core statement (columns of a Table) takes no loader criteria: it names its
        # tenant itself, as the driver statements below do.
        return
    if not _touches_tenant_rows(state):
        return
    if tenant_id is None:
        raise TenantScopeMissing("query on tenant-owned rows without a tenant scope")
    state.statement = state.statement.options(_tenant_criteria(tenant_id))


@lru_cache(maxsize=4096)
def _tenant_criteria(tenant_id: str) -> Any:
    # Built once per tenant: building the option (it analyses the lambda) cost more than
    # the rest of running a cached statement.
    return with_loader_criteria(TenantOwned, lambda cls: cls.tenant_id == tenant_id, include_aliases=True)


@event.listens_for(Session, "before_flush")
def _stamp_tenant(session: Session, flush_context: Any, instances: Any) -> None:
    tenant_id = session.info.get("tenant_id")
    for obj in session.new:
        if isinstance(obj, TenantOwned):
            if obj.tenant_id is None:
                if tenant_id is None:
                    raise TenantScopeMissing(f"new {type(obj).__name__} without a tenant")
                obj.tenant_id = tenant_id
            elif tenant_id is not None and obj.tenant_id != tenant_id:
                raise TenantScopeMissing(f"new {type(obj).__name__} for another tenant")


def _sqlite_pragmas(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to issue.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # First: the pragmas after it may need a lock another connection holds.
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock up front: no deadlock-prone lock upgrades.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _json_text(value: Any) -> str:
    return dumps(value).decode()


# --- statements run straight on the driver
#
# At thousands of rows per second SQLAlchemy's per-value work (parameter construction,
# the type decorators' bind processing) is most of the cost of a bulk write. A
# `DriverStatement` is compiled once per dialect and run as one executemany on the
# driver, each value turned by its Python type into the form the column's type would
# have written: a UTC timestamp as SQLite's DATETIME text or an aware datetime for
# PostgreSQL, a date as ISO text on SQLite, a Decimal as its plain text (`DecimalText`),
# a dict or list as JSON text; a str is taken as it is (JSON columns may be given their
# text). Its rows carry `tenant_id` themselves: no ORM event scopes these statements.


@lru_cache(maxsize=256)  # the rows of a transaction share their timestamps
def _sqlite_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _decimal_text(value: Decimal) -> str:
    text = str(value)  # a third of format()'s cost, and the same text unless in exponent form
    return format(value, "f") if "E" in text else text


_DRIVER_FORMS: dict[str, dict[type, Callable[[Any], Any]]] = {
    "sqlite": {datetime: _sqlite_time, date: date.isoformat, Decimal: _decimal_text, dict: _json_text, list: _json_text},
    "postgresql": {Decimal: _decimal_text, dict: _json_text, list: _json_text},
}


def raw_table(model: type[Base]) -> TableClause:
    """The model's table with untyped columns, for driver statements."""
    return table(model.__tablename__, *(column(c.name) for c in model.__table__.columns))


class DriverStatement:
    """A statement (built from a `raw_table`, with a bind parameter per value) run as one
    executemany straight on the driver; rows are dicts of bind names to Python values."""

    def __init__(self, statement: Any) -> None:
        self._statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...]]] = {}

    def _sql(self, dialect: Any) -> tuple[str, tuple[str, ...]]:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self._statement.compile(dialect=dialect)
            found = self._compiled[dialect.name] = (str(compiled), tuple(compiled.positiontup or ()))
        return found

    async def executemany(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        connection = await session.connection()
        sql, order = self._sql(connection.dialect)
        forms = _DRIVER_FORMS[connection.dialect.name]
        params = [
            tuple([v if (form := forms.get(type(v))) is None else form(v) for v in map(row.__getitem__, order)])
            for row in rows
        ]
        await connection.exec_driver_sql(sql, params)


class Database:
    """The process's engines. On SQLite, writes go through one connection (SQLite
    has one writer anyway) and reads through a pool; on PostgreSQL both share a pool."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # orjson for JSON columns: the stdlib encoder was a visible cost of bulk writes.
        common: dict[str, Any] = {"echo": echo, "json_serializer": _json_text, "json_deserializer": orjson.loads}
        if self.is_sqlite:
            self.writer = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60, **common)
            self.reader = create_async_engine(url, pool_size=pool_size, max_overflow=0, **common)
            _sqlite_pragmas(self.writer.sync_engine, immediate=True)
            _sqlite_pragmas(self.reader.sync_engine, immediate=False)
        else:
            self.writer = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **common
            )
            self.reader = self.writer
        self._write_sessions = async_sessionmaker(self.writer, expire_on_commit=False, autoflush=False)
        self._read_sessions = async_sessionmaker(self.reader, expire_on_commit=False, autoflush=False)

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    @asynccontextmanager
    async def read(self, tenant_id: str | None) -> AsyncIterator[AsyncSession]:
        """A session for reading one tenant's rows (or none, for cross-tenant lookups)."""
        async with self._read_sessions() as session:
            session.info["tenant_id"] = tenant_id
            yield session

    @asynccontextmanager
    async def write(self, tenant_id: str | None) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on success and rolled back on error."""
        async with self._write_sessions() as session:
            session.info["tenant_id"] = tenant_id
            async with session.begin():
                yield session

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def engine_for_migrations(url: str) -> AsyncEngine:
    engine = create_async_engine(url)
    if url.startswith("sqlite"):
        _sqlite_pragmas(engine.sync_engine, immediate=True)
    return engine
