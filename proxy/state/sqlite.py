"""SQLite under the data dir: connections and ordered, named schema migrations.

Every durable table (jobs, memory history, keys …) is created by a migration listed in
``MIGRATIONS``, in one place so the order is plain; each runs once, in order, inside a
transaction, and is recorded in ``_migrations``. Append new migrations at the end; never
edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DATABASE_FILENAME = "memproxy.sqlite"

# Extraction jobs (proxy/extraction/jobs.py). One row per finished exchange; no API key, ever.
_JOBS = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    exchange_hash TEXT NOT NULL,
    identity TEXT NOT NULL,
    user_texts TEXT NOT NULL,
    assistant_text TEXT NOT NULL,
    model TEXT NOT NULL,
    has_caller_key INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'waiting_key', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run_after REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    result TEXT,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX jobs_by_state ON jobs (state, run_after, id);
CREATE INDEX jobs_by_owner ON jobs (owner, state, id);
CREATE INDEX jobs_by_exchange ON jobs (exchange_hash, created_at);
"""

# Memory history (proxy/memory/history.py): one row per change of a memory, with its owner.
_MEMORY_HISTORY = """
CREATE TABLE memory_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    memory_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('ADD', 'UPDATE', 'SUPERSEDE', 'DELETE')),
    old_text TEXT,
    new_text TEXT,
    created_at REAL NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX memory_history_by_memory ON memory_history (memory_id, id);
CREATE INDEX memory_history_by_owner ON memory_history (tenant, user_id, id);
"""

# Proxy keys (proxy/gateway/keys.py): only a SHA-256 of each key is stored, never the key.
_API_KEYS = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user_id TEXT,
    name TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at);
"""

# (name, SQL script). Append only.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("0001_jobs", _JOBS),
    ("0002_memory_history", _MEMORY_HISTORY),
    ("0003_api_keys", _API_KEYS),
)


def database_path(data_dir: Path) -> Path:
    """The one SQLite file of a data dir (jobs, and the tables later migrations add)."""
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
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, strftime('%s','now'))",
                (name,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


class Database:
    """One migrated connection to a SQLite file, shared by threads under a lock.

    Blocking (sqlite3): call it from a worker thread. Every write is one transaction.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._conn = connect(path)
        migrate(self._conn)

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside BEGIN IMMEDIATE … COMMIT; ROLLBACK if it raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = work(self._conn)
                self._conn.execute("COMMIT")
                return out
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; split complete statements instead.
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]}")
    return statements
