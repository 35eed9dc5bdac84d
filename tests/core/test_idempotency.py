"""Idempotency keys past their lifetime are purged, in every tenant, a chunk at a time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core import idempotency
from core.errors import ValidationFailed
from core.models import IdempotencyRecord, utcnow
from worker import schedules


async def claim(db, tenant_id: str, keys: list[str], ttl: timedelta) -> None:
    claims = [idempotency.Claim("user:someone", key, "f" * 64) for key in keys]
    async with db.write(tenant_id) as session:
        assert len(await idempotency.claim_many(session, tenant_id=tenant_id, claims=claims, ttl=ttl)) == len(keys)


async def keys_of(db, tenant_id: str) -> set[str]:
    async with db.read(tenant_id) as session:
        return set((await session.execute(select(IdempotencyRecord.key))).scalars())


async def test_expired_keys_of_every_tenant_are_purged_and_live_ones_kept(db, tenant, other_tenant):
    await claim(db, tenant.id, [f"old-{n}" for n in range(5)], ttl=timedelta(hours=-1))
    await claim(db, other_tenant.id, ["old-elsewhere"], ttl=timedelta(hours=-1))
    await claim(db, tenant.id, ["live"], ttl=timedelta(hours=24))
    await claim(db, other_tenant.id, ["live-elsewhere"], ttl=timedelta(hours=24))

    # Chunks of two: the purge goes on until a chunk comes back short.
    purged = await idempotency.purge_expired(db, chunk=2)

    assert purged >= 6  # other tests' expired keys may go too; these six must
    assert await keys_of(db, tenant.id) == {"live"}
    assert await keys_of(db, other_tenant.id) == {"live-elsewhere"}
    async with db.read(None) as session:
        left = select(func.count()).select_from(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow())
        assert (await session.execute(left.execution_options(cross_tenant=True))).scalar_one() == 0


async def test_a_purge_with_nothing_expired_changes_nothing(db, tenant):
    await claim(db, tenant.id, ["kept"], ttl=timedelta(hours=24))
    await idempotency.purge_expired(db)
    assert await idempotency.purge_expired(db) == 0
    assert await keys_of(db, tenant.id) == {"kept"}


def test_the_worker_purges_expired_keys_on_a_schedule(settings):
    names = [job.name for job in schedules.cron_jobs(settings)]
    assert f"{settings.worker_namespace}.purge_expired_keys" in names


def test_a_key_must_be_visible_ascii_to_its_end():
    assert idempotency.check_key("order-42") == "order-42"
    for bad in ("order-42\n", "", "with space", "x" * 256):
        with pytest.raises(ValidationFailed):
            idempotency.check_key(bad)


async def test_a_lapsed_claim_taken_by_another_request_is_no_longer_the_first_ones(db, tenant):
    """A claim held as a lease lapses; another request takes the key. The first request can
    then neither find it held nor release it: the newer claim stays."""
    lease = timedelta(seconds=30)
    first_at = utcnow() - timedelta(minutes=1)  # its lease ended half a minute ago
    second_at = utcnow()
    fingerprint = "f" * 64
    async with db.write(tenant.id) as session:
        assert await idempotency.claim(
            session, tenant_id=tenant.id, actor="user:a", key="K", request_fingerprint=fingerprint, ttl=lease, now=first_at
        )
    async with db.write(tenant.id) as session:
        assert await idempotency.claim(
            session, tenant_id=tenant.id, actor="user:a", key="K", request_fingerprint=fingerprint, ttl=lease, now=second_at
        )
    async with db.write(tenant.id) as session:
        assert not await idempotency.holds(session, actor="user:a", key="K", until=first_at + lease)
        assert await idempotency.holds(session, actor="user:a", key="K", until=second_at + lease)
        await idempotency.release(session, actor="user:a", key="K", until=first_at + lease)
    assert await keys_of(db, tenant.id) == {"K"}, "the newer claim is kept"
    async with db.write(tenant.id) as session:
        await idempotency.release(session, actor="user:a", key="K", until=second_at + lease)
    assert await keys_of(db, tenant.id) == set()
