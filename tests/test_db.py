from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.state.sqlite import MIGRATIONS, connect, migrate

STEPS = (
    ("0001_a", "CREATE TABLE a (x INTEGER);\nCREATE INDEX a_x ON a (x);"),
    ("0002_b", "ALTER TABLE a ADD COLUMN y TEXT;"),
)


def test_migrations_apply_once_in_order_and_use_wal(tmp_path: Path) -> None:
    conn = connect(tmp_path / "m.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(conn, STEPS[:1]) == ["0001_a"]
    assert migrate(conn, STEPS) == ["0002_b"]
    assert migrate(conn, STEPS) == []
    conn.execute("INSERT INTO a (x, y) VALUES (1, 'ok')")
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == ["0001_a", "0002_b"]


def test_a_failing_migration_leaves_nothing_half_done(tmp_path: Path) -> None:
    conn = connect(tmp_path / "m.sqlite")
    broken = (("0001_bad", "CREATE TABLE c (x INTEGER);\nINSERT INTO nope VALUES (1);"),)
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "c" not in tables
    assert conn.execute("SELECT count(*) FROM _migrations").fetchone()[0] == 0


def test_project_migrations_have_unique_ordered_names(tmp_path: Path) -> None:
    names = [name for name, _ in MIGRATIONS]
    assert names == sorted(set(names))
    conn = connect(tmp_path / "m.sqlite")
    assert migrate(conn) == names  # the whole schema builds on an empty database
