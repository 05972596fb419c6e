"""``memproxy memories …`` and ``memproxy users …``: the memory API from a terminal.

They talk to a running proxy (``--url``, default from the settings' host and port) with the
admin key from ``MEMPROXY_ADMIN_KEY`` (or config.yaml). Output is a readable table, or JSON
with ``--json``; imports and exports of large files show a progress bar on a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from proxy.cli.common import settings_from_args

IMPORT_BATCH = 1000


class CommandFailed(Exception):
    """Printed as ``memproxy: <message>``; the command exits 1."""


class Client:
    def __init__(self, args: argparse.Namespace):
        settings = settings_from_args(args)
        self.url = (args.url or f"http://{settings.server.host}:{settings.server.port}").rstrip(
            "/")
        self.headers = {}
        if settings.admin_key is not None:
            self.headers["authorization"] = f"Bearer {settings.admin_key.get_secret_value()}"
        self.tenant: str | None = getattr(args, "tenant", None)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        params = {k: v for k, v in (kwargs.pop("params", None) or {}).items() if v is not None}
        if self.tenant is not None:
            params.setdefault("tenant", self.tenant)
        headers = {**self.headers, **kwargs.pop("headers", {})}
        try:
            response = httpx.request(
                method, self.url + path, params=params, headers=headers, timeout=300, **kwargs
            )
        except httpx.HTTPError as exc:
            raise CommandFailed(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise CommandFailed(f"{response.status_code}: {message}")
        return response

    def body(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "tenant": self.tenant} if self.tenant is not None else payload


def segment(value: str) -> str:
    """An id as one path segment (``team/alice`` → ``team%2Falice``; ``..`` → ``%2E%2E``,
    which a client would otherwise resolve away)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if value in (".", "..") else quoted


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Columns (title, key); the last one is printed unpadded (free text)."""
    cells = [[_cell(row, key) for _, key in columns] for row in rows]
    widths = [max([len(title)] + [len(r[i]) for r in cells]) for i, (title, _) in
              enumerate(columns)]
    line = "  ".join(title.ljust(w) for (title, _), w in zip(columns, widths, strict=True))
    print(line.rstrip())
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1])


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key in ("created_at", "updated_at"):
        return _when(value)
    if key == "score":
        return f"{value:.3f}"
    if key == "metadata":
        return json.dumps(value, ensure_ascii=False) if value else ""
    return "" if value is None else str(value).replace("\n", " ")


MEMORY_COLUMNS = [("created (UTC)", "created_at"), ("source", "source"), ("id", "id"),
                  ("metadata", "metadata"), ("memory", "memory")]


def _json_arg(raw: str | None, name: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise CommandFailed(f"--{name} is not valid JSON: {exc}") from exc


# -- memories -----------------------------------------------------------------------------


def _list(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {
        "user_id": args.user, "agent_id": args.agent, "session_id": args.session,
        "limit": min(args.limit, 1000), "filters": args.filter,
        "include_superseded": "true" if args.include_superseded else None,
    }
    data: list[dict[str, Any]] = []
    while True:
        page = client.request("GET", "/v1/memories", params=params).json()
        data += page["data"]
        if not args.all or not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif not data:
        print(f"no memories for user {args.user}")
    else:
        print_table(data, MEMORY_COLUMNS)
    return 0


def _search(args: argparse.Namespace, client: Client) -> int:
    body = client.body({"user_id": args.user, "query": args.query, "limit": args.limit,
                        "filters": _json_arg(args.filter, "filter")})
    data = client.request("POST", "/v1/memories/search", json=body).json()["data"]
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif not data:
        print("nothing found")
    else:
        print_table(data, [("score", "score"), ("id", "id"), ("memory", "memory")])
    return 0


def _add(args: argparse.Namespace, client: Client) -> int:
    body = client.body({
        "user_id": args.user, "text": args.text, "infer": args.infer, "model": args.model,
        "agent_id": args.agent, "session_id": args.session,
        "metadata": _json_arg(args.metadata, "metadata"),
    })
    data = client.request("POST", "/v1/memories", json={
        k: v for k, v in body.items() if v is not None}).json()["data"]
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif not data:
        print("nothing new to remember")
    else:
        print_table(data, MEMORY_COLUMNS)
    return 0


def _edit(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {}
    if args.text is not None:
        body["text"] = args.text
    if args.metadata is not None:
        body["metadata"] = _json_arg(args.metadata, "metadata")
    if not body:
        raise CommandFailed("give --text and/or --metadata")
    memory = client.request("PATCH", f"/v1/memories/{segment(args.id)}", json=body).json()
    print(json.dumps(memory, indent=2, ensure_ascii=False) if args.json else
          f"updated {memory['id']}: {memory['memory']}")
    return 0


def _delete(args: argparse.Namespace, client: Client) -> int:
    result = client.request("DELETE", f"/v1/memories/{segment(args.id)}").json()
    print(json.dumps(result) if args.json else f"deleted {args.id}")
    return 0


def _history(args: argparse.Namespace, client: Client) -> int:
    data = client.request("GET", f"/v1/memories/{segment(args.id)}/history").json()["data"]
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    print_table(data, [("when (UTC)", "created_at"), ("event", "event"), ("actor", "actor"),
                       ("old", "old_text"), ("new", "new_text")])
    return 0


# -- users --------------------------------------------------------------------------------


def _progress(total: int | None, unit: str) -> Any:
    from tqdm import tqdm

    # disable=None: a bar only on a terminal; pipes and CI logs stay clean.
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=None)


def _export(args: argparse.Namespace, client: Client) -> int:
    out: IO[str] = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        with httpx.stream(
            "GET", f"{client.url}/v1/users/{segment(args.user)}/export", headers=client.headers,
            params={**({"tenant": client.tenant} if client.tenant else {}),
                    **({"vectors": "true"} if args.vectors else {})} or None,
            timeout=300,
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise CommandFailed(f"{response.status_code}: {response.text[:500]}")
            total = response.headers.get("x-export-records")
            count = 0
            with _progress(int(total) if total else None, "memories") as bar:
                for line in response.iter_lines():
                    if line:
                        out.write(line + "\n")
                        count += 1
                        bar.update(1)
    except httpx.HTTPError as exc:
        raise CommandFailed(f"cannot reach {client.url}: {exc}") from exc
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output:
        print(f"exported {count} records of user {args.user} to {args.output}", file=sys.stderr)
    return 0


def _batches(path: Path, size: int) -> tuple[int, Iterator[list[str]]]:
    """(record count, batches of JSON-lines text) from JSON lines or a JSON array file."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        lines = [json.dumps(r, ensure_ascii=False) for r in json.loads(text)]
    else:
        lines = [line for line in text.splitlines() if line.strip()]
    return len(lines), (lines[i : i + size] for i in range(0, len(lines), size))


def _import(args: argparse.Namespace, client: Client) -> int:
    try:
        total, batches = _batches(Path(args.file), args.batch)
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"cannot read {args.file}: {exc}") from exc
    imported = history = 0
    with _progress(total, "records") as bar:
        for batch in batches:
            result = client.request(
                "POST", "/v1/memories/import", params={"user_id": args.user},
                content="\n".join(batch).encode("utf-8", "surrogatepass"),
                headers={"content-type": "application/x-ndjson"},
            ).json()
            imported += result["imported"]
            history += result["history"]
            bar.update(len(batch))
    if args.json:
        print(json.dumps({"imported": imported, "history": history}))
    else:
        print(f"imported {imported} memories ({history} history rows)")
    return 0


def _forget(args: argparse.Namespace, client: Client) -> int:
    if not args.yes and sys.stdin.isatty():
        answer = input(f"Forget everything about user {args.user}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    result = client.request("DELETE", f"/v1/users/{segment(args.user)}").json()
    if args.json:
        print(json.dumps(result))
    else:
        counts = result["deleted"]
        print(f"forgot user {args.user}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0


# -- parser -------------------------------------------------------------------------------


def _run(command: Callable[[argparse.Namespace, Client], int]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args, Client(args))
        except CommandFailed as exc:
            print(f"memproxy: {exc}", file=sys.stderr)
            return 1

    return run


def _common(parser: argparse.ArgumentParser, *, user: bool = False) -> None:
    parser.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    parser.add_argument("--url", help="proxy URL (default: from settings)")
    parser.add_argument("--tenant", help="tenant (default: default)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    if user:
        parser.add_argument("--user", required=True, help="user id")


def add_admin_commands(commands: Any) -> None:
    memories = commands.add_parser("memories", help="see and correct stored memories")
    sub = memories.add_subparsers(dest="memories_command", required=True)

    listing = sub.add_parser("list", help="list a user's memories, newest first")
    _common(listing, user=True)
    listing.add_argument("--agent", help="only memories made through this agent (X-Agent-Id)")
    listing.add_argument("--session", help="only memories of this session (X-Session-Id)")
    listing.add_argument("--limit", type=int, default=100,
                         help="memories per page, at most 1000 (default 100)")
    listing.add_argument("--all", action="store_true", help="follow every page")
    listing.add_argument("--include-superseded", action="store_true",
                         help="also memories an updated fact replaced (kept for history)")
    listing.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"topic": "work"}\'')
    listing.set_defaults(func=_run(_list))

    search = sub.add_parser("search", help="search a user's memories")
    _common(search, user=True)
    search.add_argument("query", help="what to look for, as a user would ask")
    search.add_argument("--limit", type=int, default=10,
                        help="how many memories, 1 to 100 (default 10)")
    search.add_argument("--filter", help="metadata filter as JSON")
    search.set_defaults(func=_run(_search))

    add = sub.add_parser("add", help="remember a text (as given, or extracted with --infer)")
    _common(add, user=True)
    add.add_argument("text", help="the text to remember")
    add.add_argument("--infer", action="store_true", help="extract facts with the LLM")
    add.add_argument("--model", help="model for --infer")
    add.add_argument("--agent", help="the agent the memory belongs to (like X-Agent-Id)")
    add.add_argument("--session", help="the session the memory belongs to (like X-Session-Id)")
    add.add_argument("--metadata", help="JSON object")
    add.set_defaults(func=_run(_add))

    edit = sub.add_parser("edit", help="change a memory's text and/or metadata")
    _common(edit)
    edit.add_argument("id", help="memory id, e.g. from memories list")
    edit.add_argument("--text", help="the new text (re-embedded)")
    edit.add_argument("--metadata", help="JSON object, merged; null removes a key")
    edit.set_defaults(func=_run(_edit))

    for name, func, text in (("delete", _delete, "delete a memory"),
                             ("history", _history, "a memory's history")):
        command = sub.add_parser(name, help=text)
        _common(command)
        command.add_argument("id", help="memory id, e.g. from memories list")
        command.set_defaults(func=_run(func))

    users = commands.add_parser("users", help="export, import or forget a user")
    sub = users.add_subparsers(dest="users_command", required=True)
    export = sub.add_parser("export", help="a user's memories and history as JSON lines")
    _common(export, user=True)
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    export.add_argument("--vectors", action="store_true",
                        help="with each memory's vector: an import under the same model "
                             "embeds nothing (a migration)")
    export.set_defaults(func=_run(_export))
    load = sub.add_parser("import", help="import JSON lines (or an array) as exported")
    _common(load)
    load.add_argument("file")
    load.add_argument("--user", help="import into this user (default: each record's)")
    load.add_argument("--batch", type=int, default=IMPORT_BATCH, help="records per request")
    load.set_defaults(func=_run(_import))
    forget = sub.add_parser("forget", help="delete a user's memories, history and jobs")
    _common(forget, user=True)
    forget.add_argument("--yes", action="store_true", help="do not ask")
    forget.set_defaults(func=_run(_forget))
