"""The `hub` command: serve, run a worker, migrate, and manage tenants and API keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from core import apikeys, credentials, tenants, webhooks
from core.changes import ChangeContext, mutation
from core.db import Database
from core.errors import HubError
from core.identity import Principal
from core.migrate import upgrade_to_head
from core.models import Tenant
from core.roles import Role
from core.settings import Settings, get_settings
from core.vault import KeyringInvalid, Vault, generate_key_line, load_keyring

CLI_ACTOR = "cli"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description="The deal integration hub")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the API (and, on the embedded default, everything else)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    sub.add_parser("worker", help="Run a worker: jobs, the outbox relay and webhook delivery (needs REDIS_URL)")

    sub.add_parser("migrate", help="Apply database migrations")

    tenants_p = sub.add_parser("tenants", help="Manage tenants").add_subparsers(dest="action", required=True)
    create_tenant = tenants_p.add_parser("create", help="Create a tenant")
    create_tenant.add_argument("name")
    tenants_p.add_parser("list", help="List tenants")
    limits = tenants_p.add_parser("limits", help="Override a tenant's rate limits (0 restores the default)")
    limits.add_argument("tenant", help="Tenant id or name")
    limits.add_argument("--user-per-minute", type=int)
    limits.add_argument("--integration-per-minute", type=int)
    limits.add_argument("--burst-multiplier", type=float)

    keys_p = sub.add_parser("apikeys", help="Manage API keys").add_subparsers(dest="action", required=True)
    create_key = keys_p.add_parser("create", help="Issue a key; its secret is printed once")
    create_key.add_argument("--tenant", required=True, help="Tenant id or name")
    create_key.add_argument("--name", required=True)
    create_key.add_argument("--role", action="append", required=True, choices=[r.value for r in Role], dest="roles")
    list_keys = keys_p.add_parser("list", help="List a tenant's keys (never their secrets)")
    list_keys.add_argument("--tenant", required=True)
    revoke = keys_p.add_parser("revoke", help="Revoke a key")
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("key_id")

    vault_p = sub.add_parser("vault", help="The credential vault's keys").add_subparsers(dest="action", required=True)
    gen = vault_p.add_parser("generate-key", help="Print a new `kid:base64key` entry for HUB_VAULT_KEYS")
    gen.add_argument("--kid", default=None, help="Key id (default: random)")
    vault_p.add_parser(
        "rotate", help="Re-encrypt every credential and webhook secret with the active (first) key of HUB_VAULT_KEYS"
    )

    openapi = sub.add_parser("openapi", help="Print the OpenAPI schema; check or refresh the contract snapshot")
    openapi_mode = openapi.add_mutually_exclusive_group()
    openapi_mode.add_argument("--check", action="store_true", help="Exit 1 listing breaking changes vs the snapshot")
    openapi_mode.add_argument("--write", action="store_true", help="Refresh the snapshot from the current app")
    openapi.add_argument("--snapshot", default=None, help="Snapshot file (default: hub/openapi.snapshot.json)")
    return parser


async def _open(settings: Settings) -> Database:
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade_to_head(settings.effective_database_url)
    return Database(settings.effective_database_url, pool_size=2)


async def _tenant(db: Database, ref: str) -> Tenant:
    found = await tenants.find_by_name(db, ref)
    return found if found is not None else await tenants.get(db, ref)


def _cli_context(tenant_id: str) -> ChangeContext:
    return ChangeContext(Principal(tenant_id, "system", CLI_ACTOR, frozenset({Role.ADMIN})))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    db = await _open(settings)
    try:
        if args.command == "migrate":
            print("migrations applied")
        elif args.command == "tenants" and args.action == "create":
            tenant = await tenants.create(db, args.name)
            print(f"{tenant.id}\t{tenant.name}")
        elif args.command == "tenants" and args.action == "limits":
            tenant = await _tenant(db, args.tenant)
            wanted = {
                name: (None if value == 0 else value)
                for name in tenants.LIMIT_KEYS
                if (value := getattr(args, name)) is not None
            }
            async with mutation(db, _cli_context(tenant.id)) as m:
                tenant = await tenants.set_limits(m, wanted)
            print(f"{tenant.name}: {tenant.limits or 'defaults'}")
        elif args.command == "tenants" and args.action == "list":
            for tenant in await tenants.list_all(db):
                print(f"{tenant.id}\t{tenant.name}")
        elif args.command == "vault" and args.action == "rotate":
            vault = Vault(load_keyring(
                settings.vault_keys.get_secret_value() if settings.vault_keys else None, settings.vault_key_file
            ))  # fmt: skip
            report = await credentials.rotate(db, vault)
            # Webhook signing secrets are sealed by the same vault.
            endpoints = await webhooks.reseal_all(db, vault)
            print(
                f"active key {report.active_key_id}: re-encrypted {report.credentials} credential(s), "
                f"{report.oauth_states} pending authorization(s) and {endpoints} webhook secret(s)"
                + (f"; {report.unreadable} record(s) could not be opened (see the log)" if report.unreadable else "")
            )
            return 1 if report.unreadable else 0
        elif args.command == "apikeys":
            tenant = await _tenant(db, args.tenant)
            if args.action == "create":
                async with mutation(db, _cli_context(tenant.id)) as m:
                    issued = await apikeys.issue(m, name=args.name, roles={Role(r) for r in args.roles})
                print(f"id: {issued.key.id}\nroles: {','.join(issued.key.roles)}\nkey (shown once): {issued.plaintext}")
            elif args.action == "list":
                for key in await apikeys.list_keys(db, tenant.id):
                    state = "revoked" if key.revoked_at else "active"
                    print(f"{key.id}\thub_{key.prefix}_…\t{','.join(key.roles)}\t{state}\t{key.name}")
            elif args.action == "revoke":
                async with mutation(db, _cli_context(tenant.id)) as m:
                    await apikeys.revoke(m, args.key_id)
                print(f"revoked {args.key_id}")
        return 0
    except HubError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "openapi":  # no settings, database or migrations needed
        from hub.contract import run_cli

        return run_cli(check_only=args.check, write=args.write, snapshot=args.snapshot)
    if args.command == "vault" and args.action == "generate-key":  # no settings or database needed
        try:
            print(generate_key_line(args.kid))
        except KeyringInvalid as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    settings = get_settings()
    if args.command == "worker":
        from hub.logs import configure_logging
        from worker.runtime import run_process

        configure_logging(settings.log_level, json_lines=settings.log_json)
        return run_process(settings)
    if args.command == "serve":
        from hub.serve import serve

        return serve(settings, host=args.host, port=args.port)
    return asyncio.run(_run(args, settings))


if __name__ == "__main__":
    sys.exit(main())
