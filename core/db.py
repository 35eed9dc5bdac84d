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
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Delete, bindparam, column, event, insert, table, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.util import find_tables

from core import wal
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
        if immediate:  # the writer: checkpoints run in the background (core.wal)
            cursor.execute(f"PRAGMA wal_autocheckpoint={wal.SAFETY_NET_PAGES}")
            cursor.execute(f"PRAGMA journal_size_limit={wal.WAL_SIZE_LIMIT}")
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
# driver. Its rows are tuples of values as the driver takes them, which the callers
# build with the helpers below: a timestamp through `stamper` (SQLite's DATETIME text, or
# the aware datetime for asyncpg), a date through `day_of`, a Decimal as `decimal_text`,
# JSON as `json_text`. The rows carry `tenant_id` themselves: no ORM event scopes these
# statements.


@lru_cache(maxsize=256)  # the rows of a transaction share their timestamps
def _sqlite_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _sqlite_stamp(value: datetime | None) -> str | None:
    return None if value is None else _sqlite_time(value)


def _sqlite_day(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _same(value: Any) -> Any:
    return value


Stamp = Callable[[datetime | None], Any]


def _dialect_name(where: Database | AsyncSession | str) -> str:
    if isinstance(where, str):
        return where
    if isinstance(where, Database):
        return where.dialect
    return where.bind.dialect.name


def stamper(where: Database | AsyncSession | str) -> Stamp:
    """How this database's driver takes a UTC timestamp (or None)."""
    return _sqlite_stamp if _dialect_name(where) == "sqlite" else _same


def day_of(where: Database | AsyncSession | str) -> Callable[[date | None], Any]:
    """How this database's driver takes a date (or None)."""
    return _sqlite_day if _dialect_name(where) == "sqlite" else _same


def decimal_text(value: Decimal | None) -> str | None:
    """A `DecimalText` column's value: the plain digits, never exponent form."""
    if value is None:
        return None
    text = str(value)  # a third of format()'s cost, and the same text unless in exponent form
    return format(value, "f") if "E" in text else text


def json_text(value: Any) -> str | None:
    """A JSON column's value; a str is taken as JSON text already."""
    if value is None or isinstance(value, str):
        return value
    return _json_text(value)


def raw_table(model: type[Base]) -> TableClause:
    """The model's table with untyped columns, for driver statements."""
    return table(model.__tablename__, *(column(c.name) for c in model.__table__.columns))


def binds(names: Sequence[str]) -> dict[str, Any]:
    return {name: bindparam(name) for name in names}


_PG = postgresql.dialect()


def pg_arrays(model: type[Base], columns: Sequence[str]) -> str:
    """`unnest($1::type[], $2::type[], ...)` of the model's columns' PostgreSQL types."""
    types = [model.__table__.c[name].type.compile(dialect=_PG) for name in columns]
    return "unnest(" + ", ".join(f"${n}::{t}[]" for n, t in enumerate(types, 1)) + ")"


class DriverStatement:
    """A statement compiled once per dialect and run as one executemany straight on the
    driver (no per-value processing). Rows are tuples of the values of `binds`, in that
    order, as the driver takes them.

    With `postgresql` (SQL taking one array per bind, in `binds` order, through unnest()),
    PostgreSQL runs it once for all the rows: a statement per row was most of the
    server's work and much of the driver's."""

    def __init__(
        self, build: Callable[[str], Any] | Any, binds: Sequence[str], *, postgresql: str | None = None
    ) -> None:
        self._build = build if callable(build) else (lambda dialect: build)
        self._binds = tuple(binds)
        self._postgresql = postgresql
        self._compiled: dict[str, tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]] | None]] = {}

    @classmethod
    def insert(cls, model: type[Base], columns: Sequence[str] | None = None) -> DriverStatement:
        """INSERT of `columns` (all the model's, by default, in table order)."""
        names = tuple(columns or (c.name for c in model.__table__.columns))
        pg = f"INSERT INTO {model.__tablename__} ({', '.join(names)}) SELECT * FROM {pg_arrays(model, names)}"
        return cls(insert(raw_table(model)).values(binds(names)), names, postgresql=pg)

    @classmethod
    def update(cls, model: type[Base], keys: Sequence[str], columns: Sequence[str]) -> DriverStatement:
        """UPDATE setting `columns` of the rows matching `keys`; rows are the keys' values
        then the columns', in that order, each naming a different row."""
        names = (*keys, *columns)
        raw = raw_table(model)
        stmt = (
            update(raw)
            .where(*(raw.c[k] == bindparam(f"b_{k}") for k in keys))
            .values({c: bindparam(f"b_{c}") for c in columns})
        )
        pg = (
            f"UPDATE {model.__tablename__} AS t SET "
            + ", ".join(f"{c} = u.{c}" for c in columns)
            + f" FROM {pg_arrays(model, names)} AS u({', '.join(names)}) WHERE "
            + " AND ".join(f"t.{k} = u.{k}" for k in keys)
        )
        return cls(stmt, [f"b_{n}" for n in names], postgresql=pg)

    def _sql(self, dialect: Any) -> tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]] | None]:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self._build(dialect.name).compile(dialect=dialect)
            order = tuple(compiled.positiontup or ())
            if sorted(order) != sorted(self._binds):
                raise ValueError(f"the statement binds {order}, not {self._binds}")
            pick = None if order == self._binds else itemgetter(*(self._binds.index(name) for name in order))
            found = self._compiled[dialect.name] = (str(compiled), pick)
        return found

    async def executemany(self, session: AsyncSession, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        connection = await session.connection()
        if self._postgresql is not None and connection.dialect.name == "postgresql":
            await connection.exec_driver_sql(self._postgresql, tuple(map(list, zip(*rows, strict=True))))
            return
        sql, pick = self._sql(connection.dialect)
        await connection.exec_driver_sql(sql, list(rows) if pick is None else [pick(row) for row in rows])


class Database:
    """The process's engines. On SQLite, writes go through one connection (SQLite
    has one writer anyway) and reads through a pool, and the WAL is checkpointed in the
    background (core.wal); on PostgreSQL both share a pool."""

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
            path = make_url(url).database
            self._checkpoints = wal.Checkpointer(path) if path and path != ":memory:" else None
        else:
            self._checkpoints = None
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
        if self._checkpoints is not None:
            self._checkpoints.wrote()

    async def dispose(self) -> None:
        if self._checkpoints is not None:
            await self._checkpoints.close()
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


async def delete_in_chunks(db: Database, statement: Callable[[int], Delete], *, chunk: int) -> int:
    """Run `statement(chunk)`, a DELETE of at most `chunk` rows of any tenant, each time in
    a transaction of its own (the write lock is held briefly), until it deletes fewer;
    return how many rows went."""
    deleted = 0
    while True:
        async with db.write(None) as session:
            result = await session.execute(
                statement(chunk).execution_options(cross_tenant=True, synchronize_session=False)
            )
        count = result.rowcount or 0  # type: ignore[attr-defined]
        deleted += count
        if count < chunk:
            return deleted


def engine_for_migrations(url: str) -> AsyncEngine:
    engine = create_async_engine(url)
    if url.startswith("sqlite"):
        _sqlite_pragmas(engine.sync_engine, immediate=True)
    return engine
