"""The engine seam: one ``Database`` interface over SQLite (embedded) and Postgres (shared).

Table code (proxy/extraction/queue.py, proxy/memory/history.py, proxy/gateway/keys.py …)
writes its SQL once, in the dialect both engines share: ``?`` and ``:name`` placeholders,
``INSERT … ON CONFLICT … DO UPDATE``, ``RETURNING``, ``coalesce``, ``CASE``; times are
Python floats (the caller's clock), never the engine's ``now()``. What differs is asked of
``Database.dialect`` (JSON field access, the claim lock), in this one place, and the
Postgres side translates placeholders and the schema's types (proxy/state/postgres.py).

``open_database`` picks the engine from the target: a path is a SQLite file under the data
dir, a ``postgresql://`` URL is a shared server. ``database_target(settings)`` is the one
place that reads the setting (``state.database_url`` / ``MEMPROXY_DATABASE_URL``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from proxy.config import Settings

T = TypeVar("T")

# Where a database lives: a SQLite file, or a postgresql:// URL.
Target = Path | str


class Row(Protocol):
    """A result row: by column name or by position (sqlite3.Row, and ours on Postgres)."""

    def __getitem__(self, key: str | int) -> Any: ...


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What a ``write`` callback gets: one connection inside one transaction."""

    def execute(self, sql: str, params: Any = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    name: str  # "sqlite" | "postgres"
    # Appended to the claim's SELECT: Postgres locks the row it hands out and skips rows
    # another replica is claiming; SQLite's BEGIN IMMEDIATE already serialises writers.
    claim_lock: str
    shared: bool  # several processes on several hosts may use it at once
    # SQL taking a lock on one text key until the transaction ends ("" where every write
    # transaction is serialised already, as in SQLite).
    transaction_lock: str

    def json_field(self, column: str, key: str) -> str:
        """SQL for the text of top-level ``key`` of a JSON text column."""
        if self.name == "postgres":
            return f"({column}::jsonb ->> '{key}')"
        return f"json_extract({column}, '$.{key}')"


SQLITE = Dialect("sqlite", claim_lock="", shared=False, transaction_lock="")
POSTGRES = Dialect(
    "postgres", claim_lock=" FOR UPDATE SKIP LOCKED", shared=True,
    transaction_lock="SELECT pg_advisory_xact_lock(hashtext(?))",
)


class Database(Protocol):
    """Blocking: call it from a worker thread. Thread-safe. Every write is one transaction."""

    dialect: Dialect

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction: committed when it returns, rolled back if it raises."""
        ...

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]: ...

    def close(self) -> None: ...


def is_url(target: Target) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_database(target: Target, *, pool_size: int = 8) -> Database:
    """The migrated database at ``target`` (a SQLite path or a postgresql:// URL)."""
    if is_url(target):
        from proxy.state.postgres import PostgresDatabase

        return PostgresDatabase(str(target), pool_size=pool_size)
    from proxy.state.sqlite import SqliteDatabase

    return SqliteDatabase(Path(target))


def database_target(settings: Settings) -> Target:
    """Where this deployment keeps its state: the shared URL, else the data dir's file."""
    from proxy.state.sqlite import database_path

    url = settings.state.database_url
    return url.get_secret_value() if url is not None else database_path(settings.data_dir)


def describe_target(target: Target) -> str:
    """For logs and messages: a URL without its password."""
    if not is_url(target):
        return str(target)
    from urllib.parse import urlsplit

    parts = urlsplit(str(target))
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{host}{port}{parts.path}"
