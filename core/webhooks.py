"""Webhook endpoints: where a tenant's events go, which ones, and the secrets that sign them.

A secret is `whsec_` + base64 of 32 random bytes (Standard Webhooks). It is shown once,
when created or rotated, and otherwise lives sealed by the credential vault. A rotation
keeps the previous secret signing beside the new one for an overlap window, so
receivers can switch without dropping a delivery.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import addresses
from core.changes import ChangeContext, Mutation, mutation
from core.db import Database
from core.errors import NotFound, PreconditionFailed, ValidationFailed
from core.identity import Principal
from core.models import WebhookEndpoint, new_id
from core.pagination import MAX_LIMIT, Sort, page, split
from core.roles import Role
from core.vault import Sealed, Vault

RESOURCE = "webhook_endpoint"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SEAL_PURPOSE = "webhook_secret"
TEST_EVENT = "webhook_endpoint.test"
DISABLED_EVENT = "webhook_endpoint.disabled"
# An exact type (`deal.created`), every type under a prefix (`deal.*`), or everything (`*`).
EVENT_FILTER_PATTERN = r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$"
_EVENT_FILTER = re.compile(EVENT_FILTER_PATTERN)
MAX_EVENT_FILTERS = 50
# Why an endpoint is disabled.
MANUAL, GONE, FAILING = "manual", "gone", "failing"
SYSTEM_ACTOR = "webhook-delivery"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def matches(filters: list[str], event_type: str) -> bool:
    """Whether an endpoint subscribed with `filters` wants `event_type`."""
    for wanted in filters:
        if wanted == "*" or wanted == event_type:
            return True
        if wanted.endswith(".*") and event_type.startswith(wanted[:-1]):
            return True
    return False


def check_filters(filters: list[str]) -> list[str]:
    """The filters, de-duplicated in order; raises `ValidationFailed` on a malformed one."""
    bad = [f for f in filters if not _EVENT_FILTER.match(f)]
    if bad or not filters or len(filters) > MAX_EVENT_FILTERS:
        raise ValidationFailed(
            "Event types are exact types (deal.created), prefixes (deal.*) or *",
            details=[{"loc": ["body", "event_types"], "msg": f"1 to {MAX_EVENT_FILTERS} of {EVENT_FILTER_PATTERN}"}],
        )
    return list(dict.fromkeys(filters))


async def vet_url(url: str, *, allow_private: bool) -> str:
    """Check an endpoint URL before it is stored (outside any transaction: it resolves DNS)."""
    try:
        return await addresses.vet_url(url, allow_private=allow_private)
    except addresses.UrlRefused as exc:
        raise ValidationFailed(
            f"This URL cannot receive webhooks: {exc}", details=[{"loc": ["body", "url"], "msg": str(exc)}]
        ) from None


# --- secrets, sealed by the vault


@dataclass(frozen=True, slots=True)
class Secrets:
    current: str
    previous: str | None

    def signing(self, previous_expires_at: datetime | None, now: datetime) -> tuple[str, ...]:
        """The secrets that sign now: the current one, and the previous one within its overlap."""
        if self.previous and previous_expires_at is not None and previous_expires_at > now:
            return (self.current, self.previous)
        return (self.current,)


def _seal(vault: Vault, endpoint: WebhookEndpoint, value: Secrets) -> None:
    sealed = vault.seal(
        {"current": value.current, "previous": value.previous},
        purpose=SEAL_PURPOSE,
        tenant_id=endpoint.tenant_id,
        record_id=endpoint.id,
    )
    endpoint.secret_key_id, endpoint.secret_nonce, endpoint.secret_ciphertext = sealed


def unseal(vault: Vault, endpoint: WebhookEndpoint) -> Secrets:
    """The endpoint's signing secrets. :raises VaultError: they cannot be opened."""
    document = vault.open(
        Sealed(endpoint.secret_key_id, endpoint.secret_nonce, endpoint.secret_ciphertext),
        purpose=SEAL_PURPOSE, tenant_id=endpoint.tenant_id, record_id=endpoint.id,
    )  # fmt: skip
    return Secrets(current=document["current"], previous=document.get("previous"))


# --- endpoints


def describe(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as it may be shown: everything but its secrets."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": list(endpoint.event_types),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at,
        "failing_since": endpoint.failing_since,
        "previous_secret_expires_at": endpoint.previous_secret_expires_at,
        "version": endpoint.version,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


def _audited(endpoint: WebhookEndpoint) -> dict[str, Any]:
    view = describe(endpoint)
    for key in ("version", "created_at", "updated_at"):
        view.pop(key)
    return view


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    endpoint: WebhookEndpoint
    secret: str


async def create(m: Mutation, vault: Vault, *, url: str, event_types: list[str], description: str = "") -> IssuedSecret:
    """Create an endpoint with a new secret. `url` must have passed `vet_url`."""
    endpoint = WebhookEndpoint(
        id=new_id(),
        tenant_id=m.tenant_id,
        url=url,
        description=description,
        event_types=check_filters(event_types),
        enabled=True,
        version=1,
        created_by=m.context.principal.actor_key,
        created_at=m.now,
        updated_at=m.now,
    )
    secret = new_secret()
    _seal(vault, endpoint, Secrets(secret, None))
    m.session.add(endpoint)
    m.record(
        "webhook_endpoint.created", resource_type=RESOURCE, resource_id=endpoint.id,
        before=None, after=_audited(endpoint), payload={"endpoint": describe(endpoint)},
    )  # fmt: skip
    await m.session.flush()
    return IssuedSecret(endpoint, secret)


async def get(session: AsyncSession, endpoint_id: str) -> WebhookEndpoint:
    endpoint = (await session.execute(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))).scalar_one_or_none()
    if endpoint is None:
        raise NotFound("No such webhook endpoint")
    return endpoint


async def list_endpoints(
    session: AsyncSession, *, limit: int = 50, cursor: str | None = None, enabled: bool | None = None
) -> tuple[list[WebhookEndpoint], str | None]:
    limit = max(1, min(limit, MAX_LIMIT))
    order = Sort(WebhookEndpoint.created_at, descending=True)
    stmt = select(WebhookEndpoint)
    if enabled is not None:
        stmt = stmt.where(WebhookEndpoint.enabled == enabled)
    rows = list((await session.execute(page(stmt, order, WebhookEndpoint.id, limit=limit, cursor=cursor))).scalars())
    return split(rows, order, limit=limit)


Precondition = Callable[[WebhookEndpoint], bool]


def _check(endpoint: WebhookEndpoint, precondition: Precondition | None) -> None:
    if precondition is not None and not precondition(endpoint):
        raise PreconditionFailed("The webhook endpoint changed since you read it")


def _enable(endpoint: WebhookEndpoint) -> None:
    endpoint.enabled = True
    endpoint.disabled_reason = None
    endpoint.disabled_at = None
    # A fresh start: the failing period counts again from the next failure.
    endpoint.failing_since = None


def _disable(endpoint: WebhookEndpoint, reason: str, now: datetime) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    endpoint.disabled_at = now


async def update_endpoint(
    m: Mutation,
    endpoint_id: str,
    changes: dict[str, Any],
    *,
    precondition: Precondition | None = None,
) -> WebhookEndpoint:
    """Apply `changes` (url, event_types, description, enabled); a vetted url only."""
    endpoint = await get(m.session, endpoint_id)
    _check(endpoint, precondition)
    before = _audited(endpoint)
    if "event_types" in changes:
        changes = {**changes, "event_types": check_filters(changes["event_types"])}
    changed = False
    for field in ("url", "description", "event_types"):
        if field in changes and getattr(endpoint, field) != changes[field]:
            setattr(endpoint, field, changes[field])
            changed = True
    if "enabled" in changes and changes["enabled"] != endpoint.enabled:
        if changes["enabled"]:
            _enable(endpoint)
        else:
            _disable(endpoint, MANUAL, m.now)
        changed = True
    if not changed:
        return endpoint
    endpoint.version += 1
    endpoint.updated_at = m.now
    m.record(
        "webhook_endpoint.updated", resource_type=RESOURCE, resource_id=endpoint.id,
        before=before, after=_audited(endpoint), payload={"endpoint": describe(endpoint)},
    )  # fmt: skip
    await m.session.flush()
    return endpoint


async def delete(m: Mutation, endpoint_id: str, *, precondition: Precondition | None = None) -> None:
    """Delete an endpoint with its deliveries and their attempts."""
    endpoint = await get(m.session, endpoint_id)
    _check(endpoint, precondition)
    before = _audited(endpoint)
    await m.session.delete(endpoint)
    m.record(
        "webhook_endpoint.deleted", resource_type=RESOURCE, resource_id=endpoint_id,
        before=before, after=None, payload={"endpoint": {"id": endpoint_id, "url": before["url"]}},
    )  # fmt: skip
    await m.session.flush()


async def rotate_secret(m: Mutation, vault: Vault, endpoint_id: str, *, overlap_seconds: float) -> IssuedSecret:
    """A new secret; the current one keeps signing beside it for `overlap_seconds`."""
    endpoint = await get(m.session, endpoint_id)
    old = unseal(vault, endpoint)
    secret = new_secret()
    keep = overlap_seconds > 0
    _seal(vault, endpoint, Secrets(secret, old.current if keep else None))
    endpoint.previous_secret_expires_at = m.now + timedelta(seconds=overlap_seconds) if keep else None
    endpoint.version += 1
    endpoint.updated_at = m.now
    m.record(
        "webhook_endpoint.secret_rotated", resource_type=RESOURCE, resource_id=endpoint.id,
        before=None, after={"previous_secret_expires_at": endpoint.previous_secret_expires_at},
        payload={"endpoint": describe(endpoint)},
    )  # fmt: skip
    await m.session.flush()
    return IssuedSecret(endpoint, secret)


async def send_test(m: Mutation, endpoint_id: str) -> str:
    """Emit a test event that the relay delivers to this endpoint alone; returns its event id."""
    endpoint = await get(m.session, endpoint_id)
    m.record(
        TEST_EVENT, resource_type=RESOURCE, resource_id=endpoint.id, before=None, after=None,
        payload={"endpoint_id": endpoint.id, "message": "A test event sent from the hub"},
    )  # fmt: skip
    event_id = m.events.last_event_id
    assert event_id is not None
    return event_id


async def disable_by_system(db: Database, tenant_id: str, endpoint_id: str, *, reason: str, detail: str) -> bool:
    """Disable an endpoint the hub gave up on, and tell its tenant with a
    `webhook_endpoint.disabled` event; False if it was already disabled or is gone."""
    system = Principal(tenant_id, "system", SYSTEM_ACTOR, frozenset({Role.ADMIN}))
    async with mutation(db, ChangeContext(system)) as m:
        endpoint = (
            await m.session.execute(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).with_for_update())
        ).scalar_one_or_none()
        if endpoint is None or not endpoint.enabled:
            return False
        before = _audited(endpoint)
        _disable(endpoint, reason, m.now)
        endpoint.version += 1
        endpoint.updated_at = m.now
        m.record(
            DISABLED_EVENT, resource_type=RESOURCE, resource_id=endpoint.id, before=before, after=_audited(endpoint),
            payload={"endpoint": describe(endpoint), "reason": reason, "detail": detail},
        )  # fmt: skip
    return True


async def failing_too_long(db: Database, *, older_than: datetime) -> list[tuple[str, str]]:
    """(tenant id, endpoint id) of enabled endpoints failing since before `older_than`, all tenants."""
    async with db.read(None) as session:
        stmt = (
            select(WebhookEndpoint.tenant_id, WebhookEndpoint.id)
            .where(WebhookEndpoint.enabled.is_(True), WebhookEndpoint.failing_since < older_than)
            .execution_options(cross_tenant=True)
        )
        return [(t, e) for t, e in await session.execute(stmt)]


async def reseal_all(db: Database, vault: Vault) -> int:
    """Seal every endpoint's secrets under the vault's active key (after a key rotation)."""
    count = 0
    async with db.write(None) as session:
        stmt = (
            select(WebhookEndpoint)
            .where(WebhookEndpoint.secret_key_id != vault.active_key_id)
            .execution_options(cross_tenant=True)
        )
        for endpoint in (await session.execute(stmt)).scalars():
            key_id, nonce, ciphertext = vault.reseal(
                Sealed(endpoint.secret_key_id, endpoint.secret_nonce, endpoint.secret_ciphertext),
                purpose=SEAL_PURPOSE, tenant_id=endpoint.tenant_id, record_id=endpoint.id,
            )  # fmt: skip
            await session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint.id)
                .values(secret_key_id=key_id, secret_nonce=nonce, secret_ciphertext=ciphertext)
                .execution_options(cross_tenant=True)
            )
            count += 1
    return count
