"""A connection's credentials: its secret configuration fields and its OAuth token,
sealed together by the vault in one `ConnectionCredential` row.

Plaintext exists only in memory, in the process about to call the provider. What may be
shown is the credential *status* (`describe`): never a value, not even masked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import Database
from core.errors import CredentialsUnreadable
from core.models import ConnectionCredential, OAuthState, new_id, utcnow
from core.vault import Sealed, Vault, VaultError

log = logging.getLogger("core.credentials")

PURPOSE = "connection-credentials"
OAUTH_STATE_PURPOSE = "oauth-state"
# An access token this close to its expiry reports `expiring` (it is refreshed on next use).
EXPIRING_WINDOW = timedelta(minutes=5)


class CredentialStatus(StrEnum):
    VALID = "valid"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    REVOKED = "revoked"
    MISSING = "missing"


@dataclass(frozen=True)
class Credentials:
    """Decrypted credentials. `repr` shows which fields are set, never their values."""

    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    token: dict[str, Any] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Credentials(secrets={sorted(self.secrets)}, token={'set' if self.token else 'none'})"

    def document(self) -> dict[str, Any]:
        return {"secrets": self.secrets, "token": self.token}


def token_expiry(token: dict[str, Any] | None) -> datetime | None:
    """When an access token expires, if the provider said (`expires_at`, epoch seconds)."""
    if not token:
        return None
    value = token.get("expires_at")
    try:
        return datetime.fromtimestamp(float(value), timezone.utc) if value is not None else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def status(row: ConnectionCredential | None, now: datetime | None = None) -> CredentialStatus:
    if row is None:
        return CredentialStatus.MISSING
    if row.revoked_at is not None:
        return CredentialStatus.REVOKED
    now = now or utcnow()
    if row.expires_at is not None:
        if row.expires_at <= now:
            return CredentialStatus.EXPIRED
        if row.expires_at - now <= EXPIRING_WINDOW:
            return CredentialStatus.EXPIRING
    return CredentialStatus.VALID


def describe(row: ConnectionCredential | None, now: datetime | None = None) -> dict[str, Any]:
    """What may be shown about credentials: status and timestamps only."""
    return {
        "status": status(row, now).value,
        "expires_at": row.expires_at if row else None,
        "refreshed_at": row.refreshed_at if row else None,
        "revoked_at": row.revoked_at if row else None,
        "updated_at": row.updated_at if row else None,
    }


async def find(session: AsyncSession, connection_id: str) -> ConnectionCredential | None:
    stmt = select(ConnectionCredential).where(ConnectionCredential.connection_id == connection_id)
    return (await session.execute(stmt)).scalar_one_or_none()


def unseal(vault: Vault, row: ConnectionCredential) -> Credentials:
    """The row's plaintext.

    :raises CredentialsUnreadable: the row does not authenticate (tampered, copied from
        another connection, or sealed with a key no longer in the keyring).
    """
    try:
        document = vault.open(
            Sealed(row.key_id, row.nonce, row.ciphertext),
            purpose=PURPOSE,
            tenant_id=row.tenant_id,
            record_id=row.connection_id,
        )
    except VaultError:
        log.error("credentials of connection %s failed to open", row.connection_id)
        raise CredentialsUnreadable(
            "The stored credentials of this connection cannot be read; remove them and connect again"
        ) from None
    secrets = document.get("secrets") or {}
    token = document.get("token")
    return Credentials(
        secrets={str(k): str(v) for k, v in secrets.items()} if isinstance(secrets, dict) else {},
        token=token if isinstance(token, dict) else None,
    )


async def load(session: AsyncSession, vault: Vault, connection_id: str) -> Credentials | None:
    row = await find(session, connection_id)
    return None if row is None else unseal(vault, row)


async def save(
    session: AsyncSession,
    vault: Vault,
    *,
    tenant_id: str,
    connection_id: str,
    credentials: Credentials,
    now: datetime,
    refreshed: bool = False,
) -> ConnectionCredential:
    """Seal `credentials` into the connection's row (created if missing), under the active key.
    A save clears a revocation: these are new credentials."""
    sealed = vault.seal(credentials.document(), purpose=PURPOSE, tenant_id=tenant_id, record_id=connection_id)
    row = await find(session, connection_id)
    if row is None:
        row = ConnectionCredential(id=new_id(), tenant_id=tenant_id, connection_id=connection_id, created_at=now)
        session.add(row)
    row.key_id, row.nonce, row.ciphertext = sealed
    row.expires_at = token_expiry(credentials.token)
    row.revoked_at = None
    row.updated_at = now
    if refreshed:
        row.refreshed_at = now
    await session.flush()
    return row


async def revoke(session: AsyncSession, connection_id: str, *, now: datetime) -> ConnectionCredential | None:
    """Mark the credentials as rejected by the provider for good (kept until replaced or removed)."""
    row = await find(session, connection_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = now
        row.updated_at = now
        await session.flush()
    return row


async def remove(session: AsyncSession, connection_id: str) -> bool:
    row = await find(session, connection_id)
    if row is None:
        return False
    await session.delete(row)
    await session.flush()
    return True


# -- key rotation -------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationReport:
    active_key_id: str
    credentials: int
    oauth_states: int
    unreadable: int


async def rotate(db: Database, vault: Vault, *, batch: int = 200) -> RotationReport:
    """Re-seal every record not sealed with the active key, across tenants.

    Each row is replaced only if it still holds the ciphertext read (a concurrent token
    refresh wins, and already used the active key). Rows that fail to open are counted and
    left alone. The values do not change, so no audit event is written.
    """
    sealed_credentials, unreadable = await _rotate_table(db, vault, ConnectionCredential, PURPOSE, batch)
    sealed_states, unreadable_states = await _rotate_table(db, vault, OAuthState, OAUTH_STATE_PURPOSE, batch)
    return RotationReport(vault.active_key_id, sealed_credentials, sealed_states, unreadable + unreadable_states)


async def _rotate_table(
    db: Database, vault: Vault, model: type[ConnectionCredential] | type[OAuthState], purpose: str, batch: int
) -> tuple[int, int]:
    """(rows re-sealed, rows that could not be opened) of one table."""
    resealed, skipped = 0, set[str]()
    active = vault.active_key_id
    while True:
        async with db.write(None) as session:
            stmt = (
                select(model)
                .where(model.key_id != active, model.id.not_in(skipped) if skipped else true())
                .order_by(model.id)
                .limit(batch)
                .execution_options(cross_tenant=True)
            )
            rows: list[Any] = list((await session.execute(stmt)).scalars())
            if not rows:
                return resealed, len(skipped)
            for row in rows:
                # Credentials are bound to their connection, pending authorizations to their state id.
                record_id = row.connection_id if isinstance(row, ConnectionCredential) else row.id
                old = Sealed(row.key_id, row.nonce, row.ciphertext)
                try:
                    new = vault.reseal(old, purpose=purpose, tenant_id=row.tenant_id, record_id=record_id)
                except VaultError:
                    log.error("%s row %s cannot be opened; left as it is", model.__tablename__, row.id)
                    skipped.add(row.id)
                    continue
                result = await session.execute(
                    update(model)
                    .where(model.id == row.id, model.key_id == old.key_id, model.nonce == old.nonce)
                    .values(key_id=new.key_id, nonce=new.nonce, ciphertext=new.ciphertext)
                    .execution_options(cross_tenant=True, synchronize_session=False)
                )
                resealed += result.rowcount or 0  # type: ignore[attr-defined]
