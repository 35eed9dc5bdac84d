"""Pending OAuth authorizations: the signed, single-use, expiring `state` of the
authorization-code flow, and the PKCE verifier it stands for.

The `state` sent to the provider is `payload.signature`: the payload names the tenant,
the connection, a random state id and the expiry; the signature is an HMAC under a key
derived from the vault's. The callback is unauthenticated: the signature proves which
tenant and connection it is for, and the state row (claimed with a conditional UPDATE)
makes it usable once. The verifier never leaves the hub: it is sealed in the row.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
from sqlalchemy import delete, select, update

from core import connections
from core.changes import Mutation
from core.credentials import OAUTH_STATE_PURPOSE
from core.db import Database
from core.errors import OAuthStateInvalid
from core.jsonable import iso
from core.models import OAuthState, utcnow
from core.vault import Sealed, Vault, VaultError

_SIGNATURE_PURPOSE = "oauth-state"
_MAX_STATE_LENGTH = 1024


@dataclass(frozen=True)
class StateClaims:
    state_id: str
    tenant_id: str
    connection_id: str
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(vault: Vault, claims: StateClaims) -> str:
    payload = _b64(
        orjson.dumps(
            {
                "sid": claims.state_id,
                "tid": claims.tenant_id,
                "cid": claims.connection_id,
                "exp": int(claims.expires_at.timestamp()),
            }
        )
    )
    return f"{payload}.{vault.sign(payload.encode(), purpose=_SIGNATURE_PURPOSE)}"


def verify(vault: Vault, state: str, *, now: datetime | None = None) -> StateClaims:
    """The claims of a `state` this hub signed and that has not expired.

    :raises OAuthStateInvalid: forged, malformed or expired.
    """
    invalid = OAuthStateInvalid("The OAuth state is invalid or expired; start the authorization again")
    if len(state) > _MAX_STATE_LENGTH:
        raise invalid
    payload, dot, signature = state.partition(".")
    if not dot or not vault.verify(payload.encode(), signature, purpose=_SIGNATURE_PURPOSE):
        raise invalid
    try:
        data = orjson.loads(_unb64(payload))
        claims = StateClaims(
            state_id=str(data["sid"]),
            tenant_id=str(data["tid"]),
            connection_id=str(data["cid"]),
            expires_at=datetime.fromtimestamp(int(data["exp"]), timezone.utc),
        )
    except (binascii.Error, ValueError, TypeError, KeyError, OverflowError, orjson.JSONDecodeError):
        raise invalid from None
    if claims.expires_at <= (now or utcnow()):
        raise invalid
    return claims


def new_state_id() -> str:
    return secrets.token_urlsafe(32)


async def start(
    m: Mutation,
    vault: Vault,
    connection_id: str,
    *,
    code_verifier: str | None,
    redirect_uri: str,
    expires_at: datetime,
    state_id: str | None = None,
) -> str:
    """Keep a pending authorization for `connection_id` and return its signed `state`."""
    connection = await connections.get(m.session, connection_id)
    await m.session.execute(
        delete(OAuthState).where(OAuthState.connection_id == connection.id, OAuthState.expires_at <= m.now)
    )
    state_id = state_id or new_state_id()
    sealed = vault.seal(
        {"code_verifier": code_verifier}, purpose=OAUTH_STATE_PURPOSE, tenant_id=m.tenant_id, record_id=state_id
    )
    m.session.add(
        OAuthState(
            id=state_id,
            tenant_id=m.tenant_id,
            connection_id=connection.id,
            key_id=sealed.key_id,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
            redirect_uri=redirect_uri,
            created_by=m.context.principal.actor_key,
            created_at=m.now,
            expires_at=expires_at,
        )
    )
    m.record(
        "integration.authorization_started",
        resource_type=connections.RESOURCE,
        resource_id=connection.id,
        before=None,
        after={"expires_at": iso(expires_at)},
        payload={"connection_id": connection.id, "connector_key": connection.connector_key, "expires_at": expires_at},
    )
    await m.session.flush()
    return sign(vault, StateClaims(state_id, m.tenant_id, connection.id, expires_at))


@dataclass(frozen=True)
class PendingAuthorization:
    connection_id: str
    redirect_uri: str
    created_by: str | None
    code_verifier: str | None = None

    def __repr__(self) -> str:
        return f"PendingAuthorization(connection_id={self.connection_id!r})"


async def consume(db: Database, vault: Vault, claims: StateClaims) -> PendingAuthorization:
    """Use a pending authorization once: of two callbacks with one state, only one gets
    past the conditional UPDATE. Consumed even if what follows fails: a state never works twice.

    :raises OAuthStateInvalid: unknown, already used, expired, or for another connection.
    """
    now = utcnow()
    async with db.write(claims.tenant_id) as session:
        claimed = await session.execute(
            update(OAuthState)
            .where(
                OAuthState.id == claims.state_id,
                OAuthState.connection_id == claims.connection_id,
                OAuthState.used_at.is_(None),
                OAuthState.expires_at > now,
            )
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise OAuthStateInvalid("This authorization is unknown, expired or already used; start it again")
        row = (await session.execute(select(OAuthState).where(OAuthState.id == claims.state_id))).scalar_one()
        try:
            document = vault.open(
                Sealed(row.key_id, row.nonce, row.ciphertext),
                purpose=OAUTH_STATE_PURPOSE,
                tenant_id=claims.tenant_id,
                record_id=claims.state_id,
            )
        except VaultError:
            raise OAuthStateInvalid("This authorization cannot be read; start it again") from None
    verifier = document.get("code_verifier")
    return PendingAuthorization(
        connection_id=row.connection_id,
        redirect_uri=row.redirect_uri,
        created_by=row.created_by,
        code_verifier=verifier if isinstance(verifier, str) else None,
    )
