"""``memproxy jobs list|retry|purge``: the extraction job queue, read and repaired in place.

Works on the database directly (``<data_dir>/memproxy.sqlite``, or the shared Postgres when
``MEMPROXY_DATABASE_URL`` / ``state.database_url`` is set), so it needs no running server (and
is safe next to one: SQLite in WAL mode with a busy timeout; Postgres row locks). Running
servers pick up retried jobs within ``jobs.poll_seconds``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from proxy.cli.common import add_subcommand, local_database, settings_from_args
from proxy.extraction.jobs import STATES
from proxy.extraction.queue import JobQueue

# failed: queued again after an error, backing off (as in /metrics' memproxy_jobs).
LISTED_STATES = (*STATES, "failed")


def _queue(args: argparse.Namespace) -> JobQueue | None:
    path = local_database(args)
    return JobQueue(path, settings_from_args(args).jobs) if path is not None else None


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def _list(args: argparse.Namespace) -> int:
    queue = _queue(args)
    rows = queue.list(args.state or (), args.user, args.limit) if queue else []
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no jobs")
        return 0
    print(f"{'id':>7} {'state':<11} {'tries':>5} {'created (UTC)':<19} {'next/finished':<19}"
          f" {'facts':>5} user / last error")
    for row in rows:
        moment = row.finished_at if row.state in ("done", "dead") else row.run_after
        facts = "-" if row.facts is None else str(row.facts)
        error = f"  [{row.last_error}]" if row.last_error else ""
        print(f"{row.id:>7} {row.state:<11} {row.attempts:>5} {_when(row.created_at):<19}"
              f" {_when(moment):<19} {facts:>5} {row.user_id}{error}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    if not args.ids and not args.dead:
        print("memproxy: name job ids, or --dead for every dead job", file=sys.stderr)
        return 2
    queue = _queue(args)
    count = queue.retry(args.ids, all_dead=args.dead) if queue else 0
    print(f"{count} job{'s' if count != 1 else ''} queued again")
    return 0


def _purge(args: argparse.Namespace) -> int:
    queue = _queue(args)
    count = queue.purge(args.state or ["done"], args.older_than) if queue else 0
    print(f"{count} job{'s' if count != 1 else ''} deleted")
    return 0


def add_jobs_commands(commands: Any) -> None:
    """Register ``jobs`` on the top-level parser's subcommands."""
    jobs = commands.add_parser("jobs", help="inspect and repair the extraction job queue")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)

    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        return add_subcommand(sub, name, help_text, func)

    listing = command("list", "list jobs, newest first", _list)
    listing.add_argument("--state", action="append", choices=LISTED_STATES,
                         help="only jobs in this state (repeatable); failed: queued again "
                         "after an error")
    listing.add_argument("--user", help="only this user's jobs")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON")

    retry = command("retry", "queue dead (or waiting) jobs again, attempts reset", _retry)
    retry.add_argument("ids", nargs="*", type=int, help="job ids")
    retry.add_argument("--dead", action="store_true", help="every dead job")

    purge = command("purge", "delete finished jobs", _purge)
    purge.add_argument("--state", action="append", choices=("done", "dead"),
                       help="which finished jobs (repeatable; default: done)")
    purge.add_argument("--older-than", type=float, default=0.0, metavar="SECONDS",
                       help="only jobs finished at least this long ago")
