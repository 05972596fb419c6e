"""``memproxy keys create|list|revoke``: proxy keys, on the database directly.

The database is the data dir's SQLite file, or the shared Postgres when
``MEMPROXY_DATABASE_URL`` / ``state.database_url`` is set. Needs no running server (SQLite in
WAL mode is safe next to one); every running replica sees a new or revoked key at its next
request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from proxy.cli.common import add_subcommand, local_database
from proxy.gateway.identity import check_id
from proxy.gateway.keys import KeyStore


def _keys(args: argparse.Namespace, *, create: bool = False) -> KeyStore | None:
    path = local_database(args, create=create)
    return KeyStore(path) if path is not None else None


def _create(args: argparse.Namespace) -> int:
    try:
        tenant = check_id(args.tenant, "--tenant", 256, header=False)
        user = check_id(args.user, "--user", 256, header=False) if args.user else None
    except ValueError as exc:
        print(f"memproxy: {exc}", file=sys.stderr)
        return 2
    keys = _keys(args, create=True)
    assert keys is not None
    key, token = keys.create(tenant, user, args.name)
    keys.close()
    if args.json:
        print(json.dumps({**key.to_json(), "key": token}))
    else:
        bound = f", user {user}" if user else " (any user)"
        print(f"created {key.id} for tenant {tenant}{bound}")
        print(f"key (shown once, store it now): {token}")
    return 0


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def _list(args: argparse.Namespace) -> int:
    keys = _keys(args)
    if keys is None:
        return 1
    found = keys.list(args.tenant, include_revoked=args.all)
    keys.close()
    if args.json:
        print(json.dumps([k.to_json() for k in found], indent=2, ensure_ascii=False))
        return 0
    if not found:
        print("no keys")
        return 0
    rows: list[tuple[str, ...]] = [("id", "prefix", "tenant", "user", "created (UTC)", "revoked",
                                    "name")]
    rows += [
        (k.id, k.prefix, k.tenant, k.user_id or "*", _when(k.created_at), _when(k.revoked_at),
         k.name or "")
        for k in found
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    keys = _keys(args)
    if keys is None:
        return 1
    revoked = keys.revoke(args.id)
    keys.close()
    if not revoked:
        print(f"memproxy: no active key {args.id}", file=sys.stderr)
        return 1
    print(f"revoked {args.id}")
    return 0


def add_keys_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="proxy keys for keys mode (auth.mode: keys)")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    def command(name: str, text: str, func: Any) -> argparse.ArgumentParser:
        return add_subcommand(sub, name, text, func, json_flag=True)

    create = command("create", "create a key (printed once)", _create)
    create.add_argument("--tenant", required=True, help="the tenant whose memories it uses")
    create.add_argument("--user", help="bind the key to this one user")
    create.add_argument("--name", help="a label, e.g. the app that uses it")
    listing = command("list", "list keys (never the keys themselves)", _list)
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = command("revoke", "revoke a key by its id", _revoke)
    revoke.add_argument("id", help="key id, e.g. key_3f9a1c2b7d10")
