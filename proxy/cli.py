"""Command line: ``memproxy serve`` and ``memproxy memories list``.

Flags map one to one onto settings; the environment and config.yaml fill the rest.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from proxy.config import ConfigError, Settings, load_settings
from proxy.jobs_cli import add_jobs_commands


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import create_app

    settings = _settings(args, {"server.host": args.host, "server.port": args.port})
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO (litellm's calls included): too chatty.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        # Keep-alive past typical client idle time; the access log is ours to keep quiet.
        timeout_keep_alive=30,
        access_log=False,
        # Proxied responses carry the upstream's own Date/Server; uvicorn would add twins.
        server_header=False,
        date_header=False,
    )
    return 0


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"memproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _memories_list(args: argparse.Namespace) -> int:
    import httpx

    settings = _settings(args)
    url = args.url or f"http://{settings.server.host}:{settings.server.port}"
    headers = {}
    if settings.admin_key is not None:
        headers["authorization"] = f"Bearer {settings.admin_key.get_secret_value()}"
    try:
        response = httpx.get(
            url.rstrip("/") + "/v1/memories",
            params={"user_id": args.user, "limit": args.limit},
            headers=headers,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        print(f"memproxy: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"memproxy: {response.status_code} {response.text}", file=sys.stderr)
        return 1
    data = response.json()["data"]
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    if not data:
        print(f"no memories for user {args.user}")
        return 0
    import time

    print(f"{'created (UTC)':<17} {'source':<6} {'id':<32} memory")
    for memory in data:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(memory["created_at"]))
        print(f"{created:<17} {memory['source']:<6} {memory['id']:<32} {memory['text']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memproxy", description=__doc__)
    parser.add_argument("--config", help="path to config.yaml (default: $MEMPROXY_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.set_defaults(func=_serve)

    memories = commands.add_parser("memories", help="look at stored memories")
    memory_commands = memories.add_subparsers(dest="memories_command", required=True)
    listing = memory_commands.add_parser("list", help="list a user's memories")
    listing.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    listing.add_argument("--user", required=True, help="user id")
    listing.add_argument("--url", help="proxy URL (default: from settings)")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_memories_list)
    add_jobs_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
