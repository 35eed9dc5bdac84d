"""Shared fixtures. Every test that touches storage runs against a real SQLite file
and, when one answers at 127.0.0.1:5432, a real PostgreSQL (a fresh database per run)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from core import apikeys, tenants
from core.changes import ChangeContext, mutation
from core.db import Database
from core.embedded_redis import EmbeddedRedis
from core.identity import Principal
from core.roles import Role
from core.settings import Settings
from hub.app import create_app

PG_ADMIN_URL = os.environ.get("HUB_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_JWT_SECRET = "test-only-" + "k" * 40
TEST_ISSUER = "https://idp.test"
TEST_AUDIENCE = "deal-hub"
ROOT = Path(__file__).resolve().parent.parent


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def _pg_create_database() -> str:
    import asyncpg

    name = f"hub_test_{os.getpid()}_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _pg_drop_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def pg_url(database: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


# The suite's SQLite files, for the diagnostics of a "database is locked" (below).
_SQLITE_FILES: list[Path] = []


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "hub.db"
        _SQLITE_FILES.append(path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    if not _port_open("127.0.0.1", 5432):
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    name = await _pg_create_database()
    try:
        yield pg_url(name)
    finally:
        await _pg_drop_database(name)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis at 127.0.0.1:6379 when it answers, else an embedded real one."""
    if _port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.keys import write_jwks

    return write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json")


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory, jwks_file: Path) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("data"),
        demo_tenant=False,
        jwt_secret=TEST_JWT_SECRET,
        jwt_issuer=TEST_ISSUER,
        jwt_audience=TEST_AUDIENCE,
        jwks_file=jwks_file,
        max_body_bytes=256 * 1024,
        idempotency_wait_seconds=30.0,
        # Tests start the workers they need (tests/worker); receivers listen on 127.0.0.1.
        worker_in_process=False,
        worker_namespace=f"hubtest-{uuid.uuid4().hex[:12]}",
        webhooks_allow_private=True,
    )


# The app's connectors in tests: the built-ins, FakeCRM and the test connectors of
# tests/hub/integration_connectors.py; never whatever plugins happen to be installed.
TEST_CONNECTOR_PLUGINS = ("connectors.fake_crm", "tests.hub.integration_connectors")


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[object]:
    from connectors.registry import ConnectorRegistry

    registry = ConnectorRegistry(plugins=list(TEST_CONNECTOR_PLUGINS), load_entry_points=False)
    application = create_app(settings, connector_registry=registry)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
def db(app: object) -> Database:
    return app.state.hub.db  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as c:
        yield c


@dataclass
class TenantHandle:
    """A tenant made for one test, with an API key per role."""

    id: str
    name: str
    keys: dict[Role, str] = field(default_factory=dict)

    def headers(self, role: Role = Role.ADMIN, **extra: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[role], **extra}


async def new_tenant(db: Database, roles: tuple[Role, ...] = tuple(Role)) -> TenantHandle:
    tenant = await tenants.create(db, f"t-{uuid.uuid4().hex[:12]}")
    handle = TenantHandle(tenant.id, tenant.name)
    system = Principal(tenant.id, "system", "test-setup", frozenset({Role.ADMIN}))
    async with mutation(db, ChangeContext(system)) as m:
        for role in roles:
            issued = await apikeys.issue(m, name=f"{role.value} key", roles={role})
            handle.keys[role] = issued.plaintext
    return handle


@pytest.fixture
def make_tenant(db: Database) -> Callable[..., Awaitable[TenantHandle]]:
    async def make(roles: tuple[Role, ...] = tuple(Role)) -> TenantHandle:
        return await new_tenant(db, roles)

    return make


@pytest.fixture
async def tenant(make_tenant: Callable[..., Awaitable[TenantHandle]]) -> TenantHandle:
    return await make_tenant()


@pytest.fixture
async def other_tenant(make_tenant: Callable[..., Awaitable[TenantHandle]]) -> TenantHandle:
    return await make_tenant()


def deal_body(name: str = "Acme Series B", **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": name,
        "stage": "diligence",
        "amount": "25000000.00",
        "currency": "USD",
        "close_date": "2027-03-31",
        "company": "Acme Corp",
        "owner": "jane@fund.example",
        "attributes": {"sector": "fintech"},
    }
    body.update(overrides)
    return body


__all__ = ["TenantHandle", "asyncio", "deal_body", "new_tenant"]


# --------------------------------------------------------------------------- diagnostics


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A rare flake: a test's setup meets "database is locked" after the busy timeout,
    something else having held SQLite's write lock for over 10 s. Its report says who held
    locks on the suite's SQLite files, and what every thread of this process was doing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and call.excinfo is not None and "database is locked" in str(call.excinfo.value):
        report.sections.append(("database is locked: lock holders and threads", _lock_diagnostics()))


def _lock_diagnostics() -> str:
    import faulthandler
    import tempfile

    lines = [f"this process: {os.getpid()}"]
    try:
        inodes = {}
        for base in _SQLITE_FILES:
            for path in (base, Path(f"{base}-wal"), Path(f"{base}-shm")):
                if path.exists():
                    inodes[path.stat().st_ino] = path.name
        for entry in Path("/proc/locks").read_text().splitlines():
            fields = entry.split()
            inode = int(fields[5].rsplit(":", 1)[1]) if len(fields) > 5 else -1
            if inode in inodes:
                pid = fields[4]
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                lines.append(f"{inodes[inode]}: {entry} <- {cmdline[:200]}")
    except OSError as exc:  # not Linux, or the process is gone
        lines.append(f"(locks unavailable: {exc})")
    with tempfile.TemporaryFile("w+") as out:
        faulthandler.dump_traceback(out, all_threads=True)
        out.seek(0)
        lines.append(out.read())
    return "\n".join(lines)
