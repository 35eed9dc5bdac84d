"""Connections: one tenant's instance of a connector, its plain configuration, its health,
and (through `core.credentials`) its sealed secrets.

This module knows nothing of connectors: the caller (hub or worker) hands in the split of
a configuration into plain fields and secrets, and classified call outcomes.

Status:

    CONNECTED   credentials present and the last call (if any) worked
    DEGRADED    the provider is failing (outage, open breaker, configuration rejected)
    AUTH_ERROR  credentials missing, revoked or rejected: an admin must reconnect
    DISABLED    turned off by an admin; nothing runs

Every change is one `Mutation`: the row, an audit event and an outbox event
(`integration.*`) commit together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import credentials, schedules
from core.changes import ChangeContext, Mutation, mutation
from core.credentials import Credentials, CredentialStatus
from core.db import Database
from core.errors import Conflict, NotFound, PreconditionFailed
from core.models import Connection, new_id
from core.pagination import MAX_LIMIT, Sort, page, split
from core.vault import Vault

RESOURCE = "connection"
MAX_ERROR_LENGTH = 1000


class ConnectionStatus(StrEnum):
    CONNECTED = "CONNECTED"
    DEGRADED = "DEGRADED"
    AUTH_ERROR = "AUTH_ERROR"
    DISABLED = "DISABLED"


class Outcome(StrEnum):
    """How a call to the provider ended, as far as the connection's health goes."""

    SUCCEEDED = "succeeded"
    AUTH_FAILED = "auth_failed"  # credentials rejected: AUTH_ERROR
    UNAVAILABLE = "unavailable"  # outage or open breaker: DEGRADED
    MISCONFIGURED = "misconfigured"  # the provider refuses the setup (permissions, fields): DEGRADED
    REJECTED = "rejected"  # this request was refused (bad input, quota): health unchanged


Precondition = Callable[[Connection], bool]


class Keep:
    """The type of `KEEP`: an argument left as it is."""


KEEP = Keep()


def describe(connection: Connection) -> dict[str, Any]:
    """A connection as it may be shown and audited: no secret, ever."""
    return {
        "id": connection.id,
        "connector_key": connection.connector_key,
        "name": connection.name,
        "config": dict(connection.config or {}),
        "status": connection.status,
        "last_success_at": connection.last_success_at,
        "last_error": connection.last_error,
        "last_error_at": connection.last_error_at,
        "error_count": connection.error_count,
        "sync_schedule": connection.sync_schedule,
        "last_synced_at": connection.last_synced_at,
        "version": connection.version,
        "created_by": connection.created_by,
        "created_at": connection.created_at,
        "updated_at": connection.updated_at,
    }


def _brief(connection: Connection) -> dict[str, Any]:
    """The outbox payload's view: identity and health."""
    return {
        "connection_id": connection.id,
        "connector_key": connection.connector_key,
        "name": connection.name,
        "status": connection.status,
    }


def _touch(connection: Connection, now: datetime) -> None:
    connection.version += 1
    connection.updated_at = now


def _clip(message: str | None) -> str | None:
    if message is None:
        return None
    return message if len(message) <= MAX_ERROR_LENGTH else message[: MAX_ERROR_LENGTH - 1] + "…"


# -- reading ------------------------------------------------------------------------------


async def get(session: AsyncSession, connection_id: str) -> Connection:
    connection = (await session.execute(select(Connection).where(Connection.id == connection_id))).scalar_one_or_none()
    if connection is None:
        raise NotFound("No such connection")
    return connection


async def list_page(
    session: AsyncSession,
    *,
    connector_key: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Connection], str | None]:
    limit = max(1, min(limit, MAX_LIMIT))
    stmt = select(Connection)
    if connector_key is not None:
        stmt = stmt.where(Connection.connector_key == connector_key)
    if status is not None:
        stmt = stmt.where(Connection.status == status)
    sort = Sort(Connection.created_at, descending=False)
    rows = list((await session.execute(page(stmt, sort, Connection.id, limit=limit, cursor=cursor))).scalars())
    return split(rows, sort, limit=limit)


# -- admin changes ------------------------------------------------------------------------


async def _name_taken(session: AsyncSession, name: str, *, other_than: str | None = None) -> bool:
    stmt = select(Connection.id).where(Connection.name == name)
    if other_than is not None:
        stmt = stmt.where(Connection.id != other_than)
    return (await session.execute(stmt)).first() is not None


async def create(
    m: Mutation,
    vault: Vault,
    *,
    connector_key: str,
    name: str,
    config: dict[str, Any],
    secrets: dict[str, str],
    status: ConnectionStatus,
    note: str | None = None,
    sync_schedule: dict[str, Any] | None = None,
) -> Connection:
    """A new connection; `secrets` go to the vault, `config` must hold none.

    :param note: why the connection starts in `status` (e.g. "authorize it"), kept as last error.
    :param sync_schedule: when it syncs on its own (see `core.schedules`), if ever.
    """
    sync_schedule = schedules.validate(sync_schedule)
    if await _name_taken(m.session, name):
        raise Conflict(f"A connection named {name!r} already exists")
    connection = Connection(
        id=new_id(),
        tenant_id=m.tenant_id,
        connector_key=connector_key,
        name=name,
        config=config,
        status=status.value,
        last_error=_clip(note),
        last_error_at=m.now if note else None,
        error_count=0,
        sync_schedule=sync_schedule,
        next_sync_at=schedules.next_run(sync_schedule, m.now),
        version=1,
        created_by=m.context.principal.actor_key,
        created_at=m.now,
        updated_at=m.now,
    )
    m.session.add(connection)
    await m.session.flush()
    if secrets:
        await credentials.save(
            m.session, vault, tenant_id=m.tenant_id, connection_id=connection.id,
            credentials=Credentials(secrets=secrets), now=m.now,
        )  # fmt: skip
    m.record(
        "integration.created",
        resource_type=RESOURCE,
        resource_id=connection.id,
        before=None,
        after={**describe(connection), "secret_fields": sorted(secrets)},
        payload=_brief(connection),
    )
    return connection


def _check(connection: Connection, precondition: Precondition | None) -> None:
    if precondition is not None and not precondition(connection):
        raise PreconditionFailed("The connection changed since you read it (If-Match)")


async def update_config(
    m: Mutation,
    vault: Vault,
    connection_id: str,
    *,
    name: str | None,
    config: dict[str, Any] | None,
    secrets: dict[str, str] | None,
    sync_schedule: dict[str, Any] | None | Keep = KEEP,
    precondition: Precondition | None = None,
) -> Connection:
    """Rename and/or replace the configuration. `secrets` (when given) replace the stored
    secret fields and keep the OAuth token; `sync_schedule` (when given) replaces the
    schedule, None removing it."""
    connection = await get(m.session, connection_id)
    _check(connection, precondition)
    before = describe(connection)
    if not isinstance(sync_schedule, Keep):
        sync_schedule = schedules.validate(sync_schedule)
        if sync_schedule != connection.sync_schedule:
            connection.sync_schedule = sync_schedule
            connection.next_sync_at = schedules.next_run(sync_schedule, m.now)
    changed_secrets: list[str] = []
    if name is not None and name != connection.name:
        if await _name_taken(m.session, name, other_than=connection.id):
            raise Conflict(f"A connection named {name!r} already exists")
        connection.name = name
    if config is not None:
        connection.config = config
    if secrets is not None:
        row = await credentials.find(m.session, connection.id)
        current = credentials.unseal(vault, row) if row is not None else Credentials()
        if secrets != current.secrets:
            changed_secrets = sorted(set(secrets) ^ set(current.secrets) | {
                k for k in secrets.keys() & current.secrets.keys() if secrets[k] != current.secrets[k]
            })  # fmt: skip
            await credentials.save(
                m.session, vault, tenant_id=m.tenant_id, connection_id=connection.id,
                credentials=Credentials(secrets=secrets, token=current.token), now=m.now,
            )  # fmt: skip
    after = describe(connection)
    if after == before and not changed_secrets:
        return connection
    _touch(connection, m.now)
    m.record(
        "integration.updated",
        resource_type=RESOURCE,
        resource_id=connection.id,
        before=before,
        # Which secret fields changed, never their values.
        after={**describe(connection), **({"secret_fields_changed": changed_secrets} if changed_secrets else {})},
        payload={**_brief(connection), "secret_fields_changed": changed_secrets},
    )
    await m.session.flush()
    return connection


def _status_event(old: str, new: str, *, failure: bool) -> str:
    if new == ConnectionStatus.AUTH_ERROR and failure:
        return "integration.auth_failed"
    if new == ConnectionStatus.CONNECTED and old == ConnectionStatus.AUTH_ERROR:
        return "integration.connected"
    return "integration.status_changed"


def _set_status(m: Mutation, connection: Connection, new: ConnectionStatus, *, reason: str, failure: bool = False) -> None:
    """Move to `new`, with its event; nothing happens if the status does not change."""
    old = connection.status
    if old == new.value:
        return
    connection.status = new.value
    _touch(connection, m.now)
    m.record(
        _status_event(old, new.value, failure=failure),
        resource_type=RESOURCE,
        resource_id=connection.id,
        before={"status": old},
        after={"status": new.value},
        payload={**_brief(connection), "previous_status": old, "reason": reason},
    )


async def disable(m: Mutation, connection_id: str, *, precondition: Precondition | None = None) -> Connection:
    connection = await get(m.session, connection_id)
    _check(connection, precondition)
    _set_status(m, connection, ConnectionStatus.DISABLED, reason="disabled by an admin")
    await m.session.flush()
    return connection


async def enable(
    m: Mutation, connection_id: str, *, ready: ConnectionStatus, precondition: Precondition | None = None
) -> Connection:
    """Turn a disabled connection back on, in status `ready` (CONNECTED, or AUTH_ERROR when
    it has no usable credentials); a connection that is not disabled is left as it is."""
    connection = await get(m.session, connection_id)
    _check(connection, precondition)
    if connection.status == ConnectionStatus.DISABLED:
        connection.error_count = 0
        _set_status(m, connection, ready, reason="enabled by an admin")
        await m.session.flush()
    return connection


async def delete(m: Mutation, connection_id: str, *, precondition: Precondition | None = None) -> None:
    connection = await get(m.session, connection_id)
    _check(connection, precondition)
    before = describe(connection)
    await m.session.delete(connection)  # credentials and OAuth states cascade
    m.record(
        "integration.deleted",
        resource_type=RESOURCE,
        resource_id=connection_id,
        before=before,
        after=None,
        payload=_brief(connection),
    )
    await m.session.flush()


# -- credentials --------------------------------------------------------------------------


async def store_token(
    m: Mutation, vault: Vault, connection_id: str, token: dict[str, Any], *, refreshed: bool
) -> Connection:
    """Keep a new OAuth token, sealed with the connection's other secrets.

    `refreshed=False`: an authorization just completed, so the connection is CONNECTED
    (`integration.connected`). `refreshed=True`: a refresh (`integration.credentials_refreshed`),
    which also ends an AUTH_ERROR.
    """
    connection = await get(m.session, connection_id)
    row = await credentials.find(m.session, connection.id)
    current = credentials.unseal(vault, row) if row is not None else Credentials()
    saved = await credentials.save(
        m.session, vault, tenant_id=m.tenant_id, connection_id=connection.id,
        credentials=Credentials(secrets=current.secrets, token=token), now=m.now, refreshed=refreshed,
    )  # fmt: skip
    shown = credentials.describe(saved, m.now)
    _touch(connection, m.now)
    if refreshed:
        m.record(
            "integration.credentials_refreshed",
            resource_type=RESOURCE,
            resource_id=connection.id,
            before=None,
            after={"credentials": shown},
            payload={**_brief(connection), "expires_at": saved.expires_at},
        )
        if connection.status == ConnectionStatus.AUTH_ERROR:
            connection.last_error = None
            connection.error_count = 0
            _set_status(m, connection, ConnectionStatus.CONNECTED, reason="credentials refreshed")
    else:
        before = {"status": connection.status}
        if connection.status != ConnectionStatus.DISABLED:
            connection.status = ConnectionStatus.CONNECTED.value
            connection.last_error = None
            connection.error_count = 0
        m.record(
            "integration.connected",
            resource_type=RESOURCE,
            resource_id=connection.id,
            before=before,
            after={"status": connection.status, "credentials": shown},
            payload={**_brief(connection), "previous_status": before["status"], "expires_at": saved.expires_at},
        )
    await m.session.flush()
    return connection


async def auth_failed(m: Mutation, connection_id: str, *, reason: str, revoke: bool) -> Connection:
    """The provider rejected the credentials (a refresh grant refused, or a 401 after
    refreshing): AUTH_ERROR, and with `revoke` the stored token is marked revoked."""
    connection = await get(m.session, connection_id)
    if revoke:
        await credentials.revoke(m.session, connection.id, now=m.now)
    connection.last_error = _clip(reason)
    connection.last_error_at = m.now
    connection.error_count += 1
    if connection.status == ConnectionStatus.DISABLED:
        _touch(connection, m.now)
    elif connection.status == ConnectionStatus.AUTH_ERROR:
        _touch(connection, m.now)  # already reported: no second event
    else:
        _set_status(m, connection, ConnectionStatus.AUTH_ERROR, reason=reason, failure=True)
    await m.session.flush()
    return connection


async def remove_credentials(m: Mutation, connection_id: str, *, needs_credentials: bool) -> Connection:
    """Delete the sealed secrets and token. A connector that needs credentials is then in
    AUTH_ERROR until it is given new ones."""
    connection = await get(m.session, connection_id)
    if not await credentials.remove(m.session, connection.id):
        return connection
    m.record(
        "integration.credentials_removed",
        resource_type=RESOURCE,
        resource_id=connection.id,
        before={"credentials": "present"},
        after={"credentials": "missing"},
        payload=_brief(connection),
    )
    _touch(connection, m.now)
    if needs_credentials and connection.status != ConnectionStatus.DISABLED:
        connection.last_error = "Credentials removed: connect again"
        connection.last_error_at = m.now
        _set_status(m, connection, ConnectionStatus.AUTH_ERROR, reason="credentials removed")
    await m.session.flush()
    return connection


# -- provider call outcomes ---------------------------------------------------------------


async def record_outcome(
    m: Mutation,
    connection_id: str,
    *,
    outcome: Outcome,
    error: str | None,
    event: str,
    payload: dict[str, Any],
) -> Connection:
    """Record one call to the provider (`event`, e.g. `integration.method.executed`) and
    update the connection's health from its `outcome`."""
    connection = await get(m.session, connection_id)
    before = describe(connection)
    new_status: ConnectionStatus | None = None
    current = connection.status
    if outcome is Outcome.SUCCEEDED:
        connection.last_success_at = m.now
        connection.error_count = 0
        if current in (ConnectionStatus.DEGRADED, ConnectionStatus.AUTH_ERROR):
            new_status = ConnectionStatus.CONNECTED
    elif outcome is not Outcome.REJECTED:
        connection.last_error = _clip(error)
        connection.last_error_at = m.now
        connection.error_count += 1
        if outcome is Outcome.AUTH_FAILED and current != ConnectionStatus.DISABLED:
            new_status = ConnectionStatus.AUTH_ERROR
        elif current == ConnectionStatus.CONNECTED:
            new_status = ConnectionStatus.DEGRADED
    if describe(connection) != before:
        _touch(connection, m.now)
    m.record(
        event,
        resource_type=RESOURCE,
        resource_id=connection.id,
        before=before,
        after=describe(connection),
        payload={**_brief(connection), **payload, "outcome": outcome.value, **({"error": error} if error else {})},
    )
    if new_status is not None:
        _set_status(
            m, connection, new_status, reason=error or outcome.value, failure=outcome is Outcome.AUTH_FAILED
        )
    await m.session.flush()
    return connection


# -- the store a connector host uses --------------------------------------------------------


@dataclass(frozen=True)
class LoadedConnection:
    """A connection with its decrypted credentials, for the process about to call the provider."""

    id: str
    tenant_id: str
    connector_key: str
    config: dict[str, Any]
    status: str
    credentials: Credentials | None
    credential_status: CredentialStatus

    def __repr__(self) -> str:
        return f"LoadedConnection(id={self.id!r}, connector_key={self.connector_key!r}, status={self.status!r})"


class ConnectionStore:
    """Persistence for a connector host working for one tenant: loads a connection with
    its credentials, and writes back rotated tokens and authentication failures, each in
    its own transaction (the provider call is never inside one).

    It satisfies `connectors.host.TokenStore` by shape; this module imports no connector code.
    """

    def __init__(self, db: Database, vault: Vault, context: ChangeContext) -> None:
        self.db = db
        self.vault = vault
        self.context = context

    async def load(self, connection_id: str) -> LoadedConnection:
        async with self.db.read(self.context.tenant_id) as session:
            connection = await get(session, connection_id)
            row = await credentials.find(session, connection.id)
            return LoadedConnection(
                id=connection.id,
                tenant_id=connection.tenant_id,
                connector_key=connection.connector_key,
                config=dict(connection.config or {}),
                status=connection.status,
                credentials=credentials.unseal(self.vault, row) if row is not None else None,
                credential_status=credentials.status(row),
            )

    async def current_token(self, connection_id: str) -> dict[str, Any] | None:
        async with self.db.read(self.context.tenant_id) as session:
            row = await credentials.find(session, connection_id)
        token = credentials.unseal(self.vault, row).token if row is not None else None
        return dict(token) if token else None

    async def save_token(self, connection_id: str, token: dict[str, Any]) -> None:
        async with mutation(self.db, self.context) as m:
            await store_token(m, self.vault, connection_id, token, refreshed=True)

    async def auth_failed(self, connection_id: str, reason: str) -> None:
        async with mutation(self.db, self.context) as m:
            await auth_failed(m, connection_id, reason=reason, revoke=True)

    async def record(
        self, connection_id: str, *, outcome: Outcome, error: str | None, event: str, payload: dict[str, Any]
    ) -> Connection:
        async with mutation(self.db, self.context) as m:
            return await record_outcome(
                m, connection_id, outcome=outcome, error=error, event=event, payload=payload
            )

