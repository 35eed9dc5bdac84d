"""Sealed credentials in the database: what is stored, key rotation (the routine and the
`hub vault rotate` command), and rows that must not open. On a fresh database per
backend, because rotation walks every tenant's rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core import connections, credentials, oauth_states, tenants, webhooks
from core.changes import ChangeContext, mutation
from core.connections import ConnectionStatus
from core.db import Database
from core.errors import CredentialsUnreadable
from core.identity import Principal
from core.migrate import upgrade_to_head
from core.models import ConnectionCredential, OAuthState, WebhookEndpoint
from core.roles import Role
from core.vault import Vault, generate_key_line, parse_keyring
from hub import cli
from tests.conftest import _pg_create_database, _pg_drop_database, pg_url

OLD, NEW = generate_key_line("old"), generate_key_line("new")
API_KEYS = ["kc_live_first_0001", "kc_live_second_0002"]


@pytest.fixture
async def fresh_url(database_url: str, tmp_path) -> AsyncIterator[str]:
    if database_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / 'vault.db'}"
        return
    name = await _pg_create_database()
    try:
        yield pg_url(name)
    finally:
        await _pg_drop_database(name)


async def _seed(url: str, vault: Vault) -> tuple[Database, str, list[str]]:
    """A tenant with two connections holding secrets and one pending authorization."""
    await upgrade_to_head(url)
    db = Database(url, pool_size=2)
    tenant = await tenants.create(db, "vaulted")
    context = ChangeContext(Principal(tenant.id, "system", "test", frozenset({Role.ADMIN})))
    ids = []
    async with mutation(db, context) as m:
        for number, key in enumerate(API_KEYS):
            made = await connections.create(
                m, vault, connector_key="keyed_crm", name=f"c{number}", config={"region": "eu"},
                secrets={"api_key": key}, status=ConnectionStatus.CONNECTED,
            )  # fmt: skip
            ids.append(made.id)
        await oauth_states.start(
            m, vault, ids[0], code_verifier="v" * 64, redirect_uri="http://hub.test/cb",
            expires_at=m.now + timedelta(minutes=10),
        )  # fmt: skip
        await webhooks.create(m, vault, url="https://hooks.example.com/hub", event_types=["deal.*"])
    return db, tenant.id, ids


async def _key_ids(db: Database) -> set[str]:
    async with db.read(None) as session:
        rows = [
            *(await session.execute(select(ConnectionCredential.key_id).execution_options(cross_tenant=True))).scalars(),
            *(await session.execute(select(OAuthState.key_id).execution_options(cross_tenant=True))).scalars(),
            *(await session.execute(select(WebhookEndpoint.secret_key_id).execution_options(cross_tenant=True))).scalars(),
        ]
    return set(rows)


async def test_rotation_reseals_every_record_with_the_active_key(fresh_url):
    db, tenant_id, ids = await _seed(fresh_url, Vault(parse_keyring(OLD)))
    try:
        assert await _key_ids(db) == {"old"}
        rotating = Vault(parse_keyring(f"{NEW},{OLD}"))
        report = await credentials.rotate(db, rotating)
        assert (report.active_key_id, report.credentials, report.oauth_states, report.unreadable) == ("new", 2, 1, 0)
        assert await webhooks.reseal_all(db, rotating) == 1
        assert await _key_ids(db) == {"new"}
        # The old key can now leave the keyring: everything opens with the new one alone.
        only_new = Vault(parse_keyring(NEW))
        async with db.read(tenant_id) as session:
            found = [await credentials.load(session, only_new, cid) for cid in ids]
        assert [f.secrets["api_key"] for f in found if f] == API_KEYS
        again = await credentials.rotate(db, rotating)
        assert (again.credentials, again.oauth_states) == (0, 0) and await webhooks.reseal_all(db, rotating) == 0
    finally:
        await db.dispose()


async def test_rotation_leaves_unreadable_records_alone_and_reports_them(fresh_url):
    db, tenant_id, ids = await _seed(fresh_url, Vault(parse_keyring(OLD)))
    try:
        async with db.write(tenant_id) as session:
            await session.execute(
                update(ConnectionCredential).where(ConnectionCredential.connection_id == ids[1]).values(ciphertext=b"\0" * 40)
            )
        report = await credentials.rotate(db, Vault(parse_keyring(f"{NEW},{OLD}")))
        assert (report.credentials, report.unreadable) == (1, 1)
    finally:
        await db.dispose()


async def test_a_ciphertext_copied_to_another_connection_does_not_open(fresh_url):
    vault = Vault(parse_keyring(OLD))
    db, tenant_id, ids = await _seed(fresh_url, vault)
    try:
        async with db.write(tenant_id) as session:
            first = await credentials.find(session, ids[0])
            assert first is not None
            await session.execute(
                update(ConnectionCredential)
                .where(ConnectionCredential.connection_id == ids[1])
                .values(key_id=first.key_id, nonce=first.nonce, ciphertext=first.ciphertext)
            )
        async with db.read(tenant_id) as session:
            with pytest.raises(CredentialsUnreadable) as info:
                await credentials.load(session, vault, ids[1])
            assert API_KEYS[0] not in str(info.value)
            assert (await credentials.load(session, vault, ids[0])).secrets["api_key"] == API_KEYS[0]  # type: ignore[union-attr]
    finally:
        await db.dispose()


def test_hub_vault_rotate_command(fresh_url, tmp_path, monkeypatch, capsys):
    # A sync test: the command runs its own event loop, like from a shell.
    async def seed() -> None:
        db, _, _ = await _seed(fresh_url, Vault(parse_keyring(OLD)))
        await db.dispose()

    asyncio.run(seed())
    monkeypatch.setenv("DATABASE_URL", fresh_url)
    monkeypatch.setenv("HUB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HUB_VAULT_KEYS", f"{NEW},{OLD}")
    cli.get_settings.cache_clear()
    try:
        assert cli.main(["vault", "rotate"]) == 0
        out = capsys.readouterr().out
        assert "active key new: re-encrypted 2 credential(s), 1 pending authorization(s) and 1 webhook secret(s)" in out
        assert NEW.split(":", 1)[1] not in out and OLD.split(":", 1)[1] not in out

        async def kids() -> set[str]:
            db = Database(fresh_url, pool_size=1)
            try:
                return await _key_ids(db)
            finally:
                await db.dispose()

        assert asyncio.run(kids()) == {"new"}
    finally:
        cli.get_settings.cache_clear()


def test_hub_vault_generate_key_prints_a_valid_entry(capsys):
    assert cli.main(["vault", "generate-key", "--kid", "k2027"]) == 0
    line = capsys.readouterr().out.strip()
    assert parse_keyring(line).key_ids == ["k2027"]
