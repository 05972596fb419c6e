"""The schema of every durable table, as ordered, named migrations shared by both engines.

Each migration runs once, in order, inside a transaction, and is recorded in ``_migrations``
(SQLite: proxy/state/sqlite.py; Postgres: proxy/state/postgres.py). Append new migrations at
the end; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

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

# Per owner (tenant + user), for replicas sharing one database (proxy/state/owners.py):
# ``version`` counts the owner's memory writes (a replica's cached index is fresh while its
# version matches), ``forgotten_at`` is the owner's last forget (work begun before it
# writes nothing, on any replica).
_OWNER_STATE = """
CREATE TABLE owner_state (
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    forgotten_at REAL,
    PRIMARY KEY (tenant, user_id)
);
"""

# The process that took the request (and holds the caller's key in memory): with replicas,
# a job that needs that key goes to that replica first (proxy/extraction/queue.py).
_JOB_ORIGIN = """
ALTER TABLE jobs ADD COLUMN origin TEXT;
"""

# Where a new job of an owner goes in line: the latest due time of its queued jobs, read from
# this index in one step instead of by visiting each of them (a busy user's backlog made every
# enqueue cost as much as the backlog was long).
_JOBS_BY_OWNER_DUE = """
CREATE INDEX jobs_by_owner_due ON jobs (owner, state, run_after);
"""

# The head of each owner's line (its oldest unfinished job) is marked, so a claim reads the
# due heads from a small index and nothing else: the jobs behind a head are not touched when it
# is claimed, renewed or finished (holding them by rewriting their due time cost a write per
# queued job of the owner, on every claim, renewal and completion).
_JOB_LINE_HEADS = """
ALTER TABLE jobs ADD COLUMN head INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET head = 1 WHERE state IN ('queued', 'running', 'waiting_key') AND NOT EXISTS (
    SELECT 1 FROM jobs AS e WHERE e.owner = jobs.owner
    AND e.state IN ('queued', 'running', 'waiting_key') AND e.id < jobs.id);
CREATE INDEX jobs_heads_due ON jobs (state, run_after, id) WHERE head = 1;
CREATE INDEX jobs_head_of_owner ON jobs (owner) WHERE head = 1;
"""

# (name, SQL script). Append only. One history for both engines: the scripts are written
# in the SQL both accept; proxy/state/postgres.py maps SQLite's storage types on the way.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("0001_jobs", _JOBS),
    ("0002_memory_history", _MEMORY_HISTORY),
    ("0003_api_keys", _API_KEYS),
    ("0004_owner_state", _OWNER_STATE),
    ("0005_job_origin", _JOB_ORIGIN),
    ("0006_jobs_by_owner_due", _JOBS_BY_OWNER_DUE),
    ("0007_job_line_heads", _JOB_LINE_HEADS),
)


def split_statements(script: str) -> list[str]:
    """Complete statements of a script (executescript() would COMMIT our transaction)."""
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
