"""`python -m llmchat_auth [command]` (also `llmchat-auth`); no command serves.

Commands read the same settings (environment) as the service: Postgres for everything, NATS
to tell the edges that the JWKS changed. Exit codes: 0 done, 1 refused or failed, 2 usage,
3 keys changed but the edges could not be signalled (they pick the change up on their next
JWKS refetch).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from llmchat_auth.errors import CommandRefused
from llmchat_auth.handlers import KvRevocations
from llmchat_auth.main import build_service, migrate, open_database, run
from llmchat_auth.service import AuthService, revocation_value
from llmchat_auth.settings import AuthSettings
from llmchat_common.auth_contracts import revocation_key
from llmchat_common.lifecycle import connect_broker, run_command
from llmchat_common.messaging import jetstream, make_broker, revocations_kv

log = logging.getLogger(__name__)

ADMIN_PASSWORD_ENV = "LLMCHAT_ADMIN_PASSWORD"  # noqa: S105 - the variable's name


class _NoRevocations:
    """Commands that never write the revocations bucket."""

    async def put(self, key: str, value: bytes) -> None:
        raise RuntimeError("this command does not write revocations")

    async def delete(self, key: str) -> None:
        raise RuntimeError("this command does not write revocations")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmchat-auth", description="llmchat auth service and its admin commands"
    )
    sub = p.add_subparsers(dest="command", metavar="command")
    sub.add_parser("serve", help="run the service (the default)")
    sub.add_parser("migrate", help="create or upgrade schema auth, then exit")
    admin = sub.add_parser(
        "create-admin",
        help=f"create an admin account (password from ${ADMIN_PASSWORD_ENV} or a prompt)",
    )
    admin.add_argument("--email", required=True)
    admin.add_argument(
        "--promote", action="store_true", help="if the user exists: make it an admin and set this password"
    )
    sub.add_parser("rotate-keys", help="new active signing key; the previous one is retired")
    remove = sub.add_parser("remove-key", help="stop publishing a signing key (e.g. a leaked one)")
    remove.add_argument("--kid", required=True)
    keys = sub.add_parser("list-keys", help="signing keys and their state")
    keys.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        return run()
    commands: dict[str, Callable[[AuthService, AuthSettings, argparse.Namespace], Awaitable[int]]] = {
        "migrate": _migrate,
        "create-admin": _create_admin,
        "rotate-keys": _rotate_keys,
        "remove-key": _remove_key,
        "list-keys": _list_keys,
    }
    return run_command(
        "auth", AuthSettings, lambda s: s.log, lambda s: _with_service(s, args, commands[command])
    )


async def _with_service(
    settings: AuthSettings,
    args: argparse.Namespace,
    command: Callable[[AuthService, AuthSettings, argparse.Namespace], Awaitable[int]],
) -> int:
    db = open_database(settings)
    try:
        # Every command first brings the schema up to date (a no-op when it is).
        await migrate(db, settings)
        return await command(build_service(settings, db, _NoRevocations()), settings, args)
    finally:
        await db.dispose()


async def _migrate(service: AuthService, settings: AuthSettings, args: argparse.Namespace) -> int:
    print("schema auth is up to date")
    return 0


def _read_password() -> str:
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin.isatty():
        raise CommandRefused(f"set {ADMIN_PASSWORD_ENV} or run in a terminal to be asked for the password")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise CommandRefused("the passwords differ")
    return first


async def _create_admin(service: AuthService, settings: AuthSettings, args: argparse.Namespace) -> int:
    password = _read_password()
    user = await service.create_admin(args.email, password, promote=args.promote)
    print(f"admin {user.id} ({user.email}){' - disabled' if user.disabled else ''}")
    return 0


async def _rotate_keys(service: AuthService, settings: AuthSettings, args: argparse.Namespace) -> int:
    kid, retired = await service.keyring.rotate()
    print(f"active: {kid}")
    for old in retired:
        print(f"retired: {old}")
    return await _signal_jwks_changed(settings)


async def _remove_key(service: AuthService, settings: AuthSettings, args: argparse.Namespace) -> int:
    await service.keyring.remove(args.kid)
    print(f"removed: {args.kid}")
    return await _signal_jwks_changed(settings)


async def _list_keys(service: AuthService, settings: AuthSettings, args: argparse.Namespace) -> int:
    for key, state in service.keyring.states(await service.keyring.all()):
        row = {
            "kid": key.kid,
            "state": state,
            "created_at": key.created_at.isoformat(),
            "retired_at": key.retired_at.isoformat() if key.retired_at else None,
            "removed_at": key.removed_at.isoformat() if key.removed_at else None,
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{key.kid}  {state:8}  created {row['created_at']}")
    return 0


async def _signal_jwks_changed(settings: AuthSettings) -> int:
    """Edges watch `jwks.changed` and refetch the JWKS."""
    broker = make_broker(settings.nats, name="auth-cli")
    try:
        await connect_broker(broker, min(settings.startup_timeout_s, 10.0))
        kv = KvRevocations(await revocations_kv(jetstream(broker), settings.nats.replicas))
        await kv.put(revocation_key("jwks", "changed"), revocation_value())
    except Exception as exc:  # noqa: BLE001 - the key change itself is done
        print(
            f"warning: keys changed, but the edges could not be told ({type(exc).__name__}); "
            "they see the change at their next JWKS refetch",
            file=sys.stderr,
        )
        return 3
    finally:
        await broker.stop()
    print("edges notified (jwks.changed)")
    return 0
