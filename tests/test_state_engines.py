"""The state engines side by side: one migration history on SQLite and on a real Postgres,
the SQL translation, and the job queue's claim, ordering and dedupe on both."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.config import JobSettings
from proxy.config_sources import load_settings
from proxy.extraction.jobs import ExtractionJob
from proxy.extraction.queue import JobQueue
from proxy.gateway.identity import Identity
from proxy.gateway.keys import KeyStore
from proxy.memory.history import HistoryEvent, MemoryHistory
from proxy.state import postgres
from proxy.state.engine import database_target, describe_target, open_database
from proxy.state.migrations import MIGRATIONS
from proxy.state.owners import SharedOwners
from proxy.state.postgres import translate
from proxy.state.sqlite import connect as sqlite_connect
from proxy.state.sqlite import database_path
from proxy.state.sqlite import migrate as sqlite_migrate

ENGINES = ("sqlite", "postgres")


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return database_path(tmp_path)
    return request.getfixturevalue("database_url")


def job(user: str, text: str, exchange: str = "") -> ExtractionJob:
    return ExtractionJob(
        identity=Identity(user_id=user), user_texts=[text], assistant_text="ok", model="m",
        created_at=time.time(), exchange_hash=exchange,
    )


def test_the_one_migration_history_applies_on_both_engines(target: Any) -> None:
    names = [name for name, _ in MIGRATIONS]
    assert names == sorted(set(names))
    db = open_database(target)
    try:
        applied = [r[0] for r in db.read("SELECT name FROM _migrations ORDER BY name")]
        assert applied == names
        # Timestamps keep sub-second precision on both (Postgres: DOUBLE PRECISION, not REAL).
        db.write(lambda c: c.execute(
            "INSERT INTO memory_history (memory_id, tenant, user_id, event, created_at, actor)"
            " VALUES (?, ?, ?, 'ADD', ?, 'api')", ("m1", "t", "u", 1_764_000_000.125)))
        assert db.read("SELECT created_at FROM memory_history")[0]["created_at"] == \
            1_764_000_000.125
    finally:
        db.close()
    again = open_database(target)  # reopening applies nothing twice
    assert len(again.read("SELECT name FROM _migrations")) == len(names)
    again.close()


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    opened: list[Any] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(open_database(database_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(opened) == 4
    rows = opened[0].read("SELECT name, count(*) FROM _migrations GROUP BY name")
    assert all(count == 1 for _, count in rows) and len(rows) == len(MIGRATIONS)
    for db in opened:
        db.close()


def test_a_failing_postgres_migration_leaves_nothing_half_done(database_url: str) -> None:
    db = open_database(database_url)
    broken = (("9999_bad", "CREATE TABLE c (x INTEGER);\nINSERT INTO nope VALUES (1);"),)
    with pytest.raises(psycopg.errors.UndefinedTable):
        postgres.migrate(db._pool, broken)  # type: ignore[attr-defined]
    assert db.read("SELECT to_regclass('c') IS NULL")[0][0]
    assert not db.read("SELECT 1 FROM _migrations WHERE name = '9999_bad'")
    db.close()


def test_translation_keeps_literals_and_casts() -> None:
    assert translate("SELECT ? , :now, 'a?b :x %', x::jsonb") == \
        "SELECT %s , %(now)s, 'a?b :x %%', x::jsonb"
    assert translate("UPDATE t SET y = 'it''s: ?' WHERE z = ?") == \
        "UPDATE t SET y = 'it''s: ?' WHERE z = %s"


def test_the_database_url_setting_selects_postgres_and_is_never_shown() -> None:
    url = "postgresql://memproxy:s3cret@db:5432/memproxy"
    settings = load_settings(None, environ={"MEMPROXY_DATABASE_URL": url})
    assert database_target(settings) == url
    assert "s3cret" not in repr(settings) and "s3cret" not in describe_target(url)
    assert database_target(load_settings(None, environ={})) == database_path(Path("data"))
    with pytest.raises(ValueError):
        load_settings(None, environ={"MEMPROXY_DATABASE_URL": "mysql://x"})


def test_queue_order_dedupe_and_trim_on_both_engines(target: Any) -> None:
    queue = JobQueue(target, JobSettings(coalesce_seconds=0))
    try:
        first = queue.enqueue(job("ann", "I keep bees", "h1"))
        assert queue.enqueue(job("ann", "I keep bees", "h1")) is None  # same exchange
        second = queue.enqueue(job("ann", "I knit", "h2"))
        other = queue.enqueue(job("bob", "I row", "h3"))
        a = queue.claim("w1")
        b = queue.claim("w2")
        assert a is not None and b is not None
        assert {a.id, b.id} == {first, other}  # ann's second job waits behind her first
        assert queue.claim("w3") is None
        assert a.id == first and queue.complete(a.id, "w1")
        c = queue.claim("w3")
        assert c is not None and c.id == second
        assert [r.user_id for r in queue.list(user_id="bob")] == ["bob"]
        assert queue.release(c.id, "w3")
        assert queue.list(states=["done"])[0].id == first
    finally:
        queue.close()


def test_the_line_heads_migration_marks_an_existing_backlog(tmp_path: Path) -> None:
    """A data dir from before 0007, with jobs queued and running: their order survives."""
    path = database_path(tmp_path)
    with sqlite_connect(path) as conn:
        before = tuple(m for m in MIGRATIONS if m[0] < "0007")
        sqlite_migrate(conn, before)
        for n, (user, state) in enumerate(
            [("ann", "done"), ("ann", "running"), ("ann", "queued"), ("bob", "queued"),
             ("bob", "queued"), ("cy", "dead")], start=1,
        ):
            conn.execute(
                "INSERT INTO jobs (owner, exchange_hash, identity, user_texts, assistant_text,"
                " model, created_at, state, run_after, updated_at, lease_until)"
                " VALUES (?, ?, ?, '[]', '', 'm', 0, ?, 0, 0, 0)",
                (user, f"h{n}", f'{{"user_id": "{user}"}}', state),
            )
        conn.commit()
    queue = JobQueue(path, JobSettings(coalesce_seconds=0))
    try:
        heads = queue._db.read("SELECT id FROM jobs WHERE head = 1 ORDER BY id")
        assert [row[0] for row in heads] == [2, 4]
        claimed = [queue.claim("w"), queue.claim("w")]
        assert sorted(job.id for job in claimed if job) == [2, 4]  # ann's lease had expired
        assert queue.claim("w") is None
    finally:
        queue.close()


def test_a_job_enqueued_while_its_owners_last_one_completes_is_not_stranded(
    database_url: str,
) -> None:
    """Two replicas: one completes an owner's only job while another enqueues the next."""
    queues = [JobQueue(database_url, JobSettings(coalesce_seconds=0)) for _ in range(2)]

    def complete_together(start: threading.Barrier, job_id: int) -> None:
        start.wait()
        queues[0].complete(job_id, "w")

    try:
        for round_ in range(25):
            queues[0].enqueue(job("ann", f"fact {round_}", f"a{round_}"))
            running = queues[0].claim("w")
            assert running is not None and running.id is not None
            start = threading.Barrier(2)
            finish = threading.Thread(target=complete_together, args=(start, running.id))
            finish.start()
            start.wait()
            queues[1].enqueue(job("ann", f"next {round_}", f"b{round_}"))
            finish.join()
            after = queues[1].claim("w2")
            assert after is not None and after.user_texts == [f"next {round_}"]
            assert queues[1].complete(after.id, "w2")  # type: ignore[arg-type]
    finally:
        for queue in queues:
            queue.close()


def test_concurrent_claims_on_postgres_never_hand_one_job_out_twice(database_url: str) -> None:
    queue = JobQueue(database_url, JobSettings(coalesce_seconds=0))
    users = [f"user{i}" for i in range(40)]
    for user in users:
        queue.enqueue(job(user, f"fact of {user}", f"x-{user}"))
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        own = JobQueue(database_url, JobSettings(coalesce_seconds=0))
        while (got := own.claim(name)) is not None:
            assert got.id is not None
            with lock:
                claimed.append(got.id)
            own.complete(got.id, name)
        own.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == len(users)
    queue.close()


def test_history_keys_and_owner_versions_on_postgres(database_url: str) -> None:
    history = MemoryHistory(database_url)
    history.record([HistoryEvent("m1", "t", "u", "ADD", None, "x", 1.5, "api")])
    assert [e.new_text for e in history.of_owner("t", "u")] == ["x"]
    assert history.owners(["m1"]) == {"m1": ("t", "u")}
    assert history.delete_owner("t", "u") == 1
    history.close()

    keys = KeyStore(database_url)
    key, token = keys.create("acme", "ann", "app")
    assert keys.lookup(token) == key
    assert keys.revoke(key.id) and keys.lookup(token) is None
    keys.close()

    a, b = SharedOwners.open(database_url), SharedOwners.open(database_url)
    owner = ("t", "u")
    assert a.stale(owner) and not a.stale(owner)  # first sight, then fresh
    a.wrote(owner)
    assert not a.stale(owner)  # its own write: still fresh
    b.wrote(owner)
    assert a.stale(owner) and not a.stale(owner)  # another replica's write: reload once
    a.forgot(owner, 123.0)
    assert b.forgotten_at(owner) == 123.0
    a.close()
    b.close()


def restart_with_idle_connections(db: postgres.PostgresDatabase, server: Any) -> None:
    """Four connections in the pool at once, idle when the server restarts: all dead."""
    barrier = threading.Barrier(4)

    def hold() -> None:
        with db._pool.connection() as conn:
            barrier.wait(10)
            conn.execute("SELECT 1")

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    server.stop()
    server.start()


@pytest.mark.parametrize("first", ["read", "write"])
def test_after_a_postgres_restart_the_first_call_gets_a_live_connection(
    database_url: str, postgres_server: Any, first: str,
) -> None:
    db = postgres.PostgresDatabase(database_url, pool_size=4)
    try:
        restart_with_idle_connections(db, postgres_server)
        # A write's BEGIN on a dead connection committed nothing: retried like a read; and the
        # one retry must not take another dead connection.
        if first == "write":
            rows = db.write(lambda conn: conn.execute("SELECT 2 AS two").fetchall())
            assert len(rows) == 1 and rows[0]["two"] == 2
        rows = db.read("SELECT 1 AS one")
        assert len(rows) == 1 and rows[0]["one"] == 1
    finally:
        db.close()
