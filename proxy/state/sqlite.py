"""SQLite under the data dir: connections, the migrations applied, one locked connection.

The embedded default (one process, or the CLI next to it): WAL mode with a busy timeout.
The schema is proxy/state/migrations.py, shared with Postgres.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from proxy.state.engine import SQLITE, Connection
from proxy.state.migrations import MIGRATIONS, split_statements

__all__ = ["MIGRATIONS", "SqliteDatabase", "connect", "database_path", "migrate"]

T = TypeVar("T")

DATABASE_FILENAME = "memproxy.sqlite"


def database_path(data_dir: Path) -> Path:
    """The one SQLite file of a data dir (jobs, history, keys, owner state)."""
    return data_dir / DATABASE_FILENAME


def connect(path: Path, *, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout; autocommit (use explicit BEGIN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(
    conn: sqlite3.Connection, migrations: tuple[tuple[str, str], ...] = MIGRATIONS
) -> list[str]:
    """Apply the migrations not yet applied, in order; returns their names."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    applied: list[str] = []
    for name, script in migrations:
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Checked under the write lock: another process (the CLI, a second replica) may
            # have applied it since we looked.
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                conn.execute("COMMIT")
                continue
            for statement in split_statements(script):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time())
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


class SqliteDatabase:
    """One migrated connection to a SQLite file, shared by threads under a lock."""

    dialect = SQLITE

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._conn = connect(path)
        migrate(self._conn)

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` inside BEGIN IMMEDIATE … COMMIT; ROLLBACK if it raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = work(self._conn)  # type: ignore[arg-type]  # sqlite3 fits the protocol
                self._conn.execute("COMMIT")
                return out
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
