"""The durable job queue: rows in SQLite under the data dir, claimed with a lease.

    queued ──claim──▶ running ──complete──▶ done   (conversation texts dropped, result kept)
      ▲  ▲              │
      │  │              ├─ fail, attempts < max ──▶ queued again after a backoff ("failed")
      │  │              ├─ fail, attempts = max ──▶ dead (last error kept; `memproxy jobs retry`)
      │  └── release ───┤   (shutdown: not counted as an attempt)
      │                 └─ park: needs the caller's key, none in memory ──▶ waiting_key
      └──── wake: the user's next request brought a key ◀─────────────────────┘

A running job whose lease expires (its process died) is claimable again. Only the oldest
unfinished job of an owner (tenant + user) can be claimed, so one user's jobs apply in order
while different users' run concurrently. The jobs behind an owner's head carry the head's
``run_after`` (its lease, its backoff), so a claim only looks at jobs that can run: with a
large backlog during an outage a claim stays an index look-up, not a scan.

A job carries a hash of its exchange: the same exchange again within
``dedupe_window_seconds`` (a retried request, a regenerated answer) is not enqueued twice.
The extraction result is saved in the row before it is applied, so a replay applies the same
facts (with the same memory ids) instead of asking the model again.

The caller's API key is never a column: it stays in process memory (proxy/workers.py).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from proxy.config import JobSettings
from proxy.db import connect, migrate
from proxy.identity import Identity
from proxy.jobs import (
    UNFINISHED,
    ExtractionJob,
    ExtractionResult,
    JobRow,
    JobStats,
    identity_from_json,
    owner_of,
)


def _hold_followers(conn: sqlite3.Connection, job_id: int, until: float) -> None:
    """The owner's queued jobs behind ``job_id`` become due at ``until`` (or at once)."""
    conn.execute(
        "UPDATE jobs SET run_after = ? WHERE owner = (SELECT owner FROM jobs WHERE id = ?)"
        " AND state = 'queued' AND id > ?",
        (until, job_id, job_id),
    )


class JobQueue:
    """The jobs table. Blocking (sqlite3): call it from a worker thread. Thread-safe."""

    def __init__(
        self, path: Path, settings: JobSettings, *, clock: Callable[[], float] = time.time
    ):
        self.path = path
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = connect(path)
        migrate(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = work(self._conn)
                self._conn.execute("COMMIT")
                return out
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- producing ------------------------------------------------------------------------
    def enqueue(self, job: ExtractionJob) -> int | None:
        """Store the job; None when the same exchange is already queued or done."""
        now = self._clock()
        since = now - self._settings.dedupe_window_seconds

        def work(conn: sqlite3.Connection) -> int | None:
            if job.exchange_hash and conn.execute(
                "SELECT 1 FROM jobs WHERE exchange_hash = ? AND created_at >= ?"
                " AND state != 'dead' LIMIT 1",
                (job.exchange_hash, since),
            ).fetchone():
                return None
            (ahead,) = conn.execute(
                "SELECT max(CASE state WHEN 'running' THEN lease_until"
                " WHEN 'waiting_key' THEN :hold ELSE run_after END) FROM jobs"
                " WHERE owner = :owner AND state IN ('queued', 'running', 'waiting_key')",
                {"owner": job.owner, "hold": now + self._settings.key_wait_seconds},
            ).fetchone()
            cursor = conn.execute(
                "INSERT INTO jobs (owner, exchange_hash, identity, user_texts, assistant_text,"
                " model, has_caller_key, created_at, run_after, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.owner, job.exchange_hash,
                    json.dumps(dataclasses.asdict(job.identity), ensure_ascii=False),
                    json.dumps(job.user_texts, ensure_ascii=False), job.assistant_text,
                    job.model, int(job.has_caller_key), job.created_at,
                    max(now + self._settings.coalesce_wait_seconds, ahead or now), now,
                ),
            )
            return int(cursor.lastrowid or 0)

        job_id: int | None = self._write(work)
        if job_id is not None:
            job.id = job_id
        return job_id

    # -- consuming ------------------------------------------------------------------------
    def claim(self, worker: str) -> ExtractionJob | None:
        """The oldest due job that heads its owner's queue, leased to ``worker``."""
        now = self._clock()
        lease_until = now + self._settings.lease_seconds
        max_attempts = self._settings.max_attempts

        def work(conn: sqlite3.Connection) -> ExtractionJob | None:
            while True:
                rows = [
                    conn.execute(
                        f"SELECT * FROM jobs AS j WHERE j.state = '{state}' AND {due}"
                        " AND NOT EXISTS (SELECT 1 FROM jobs AS e WHERE e.owner = j.owner"
                        "  AND e.state IN ('queued', 'running', 'waiting_key') AND e.id < j.id)"
                        f" ORDER BY {order} LIMIT 1",
                        {"now": now},
                    ).fetchone()
                    for state, due, order in (
                        ("running", "j.lease_until < :now", "j.id"),
                        ("queued", "j.run_after <= :now", "j.run_after, j.id"),
                    )
                ]
                found = [row for row in rows if row is not None]
                if not found:
                    return None
                row = min(found, key=lambda r: r["id"])
                if row["state"] == "running" and row["attempts"] >= max_attempts:
                    # Its process died on every attempt: a poison job, not a lost one.
                    conn.execute(
                        "UPDATE jobs SET state = 'dead', lease_owner = NULL, lease_until = NULL,"
                        " last_error = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                        (f"worker lost {row['attempts']} times (lease expired)", now, now,
                         row["id"]),
                    )
                    continue
                conn.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1,"
                    " lease_owner = ?, lease_until = ?, updated_at = ? WHERE id = ?",
                    (worker, lease_until, now, row["id"]),
                )
                _hold_followers(conn, row["id"], lease_until)
                return self._job(row, attempts=row["attempts"] + 1)

        job: ExtractionJob | None = self._write(work)
        return job

    def claim_followers(
        self, head: ExtractionJob, worker: str, ids: Sequence[int] | None = None
    ) -> list[ExtractionJob]:
        """Coalescing: lease the owner's queued jobs right behind ``head`` (same session,
        agent and model, created within ``coalesce_seconds`` of it) to ``worker`` as well.

        ``ids``: exactly these (a replay of a saved result that merged them). Followers are
        not attempts of their own; ``complete`` them (before the head) or ``unclaim`` them.
        """
        window = self._settings.coalesce_seconds
        if head.id is None or (ids is None and window <= 0) or (ids is not None and not ids):
            return []

        def work(conn: sqlite3.Connection) -> list[ExtractionJob]:
            lease = conn.execute(
                "SELECT lease_until FROM jobs WHERE id = ? AND lease_owner = ?",
                (head.id, worker),
            ).fetchone()
            if lease is None:
                return []
            if ids is not None:
                marks = ", ".join("?" for _ in ids)
                rows = conn.execute(
                    f"SELECT * FROM jobs WHERE id IN ({marks}) AND state IN"
                    " ('queued', 'running') ORDER BY id", tuple(ids),
                ).fetchall()
            else:
                rows = []
                for row in conn.execute(
                    "SELECT * FROM jobs WHERE owner = ? AND id > ? AND state IN"
                    " ('queued', 'running', 'waiting_key') ORDER BY id LIMIT 50",
                    (head.owner, head.id),
                ):
                    identity = json.loads(row["identity"])
                    if (
                        row["state"] != "queued" or row["model"] != head.model
                        or row["created_at"] > head.created_at + window
                        or identity.get("session_id") != head.identity.session_id
                        or identity.get("agent_id") != head.identity.agent_id
                    ):
                        break  # only a contiguous run: the owner's order stays
                    rows.append(row)
            for row in rows:
                conn.execute(
                    "UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?,"
                    " updated_at = ? WHERE id = ?", (worker, lease[0], self._clock(), row["id"]),
                )
            return [self._job(row, attempts=row["attempts"]) for row in rows]

        followers: list[ExtractionJob] = self._write(work)
        return followers

    def unclaim(self, ids: Sequence[int], worker: str) -> None:
        """Followers back to queued (their head failed); they were no attempt of their own."""
        if not ids:
            return
        now = self._clock()
        marks = ", ".join("?" for _ in ids)
        self._write(lambda conn: conn.execute(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
            f" run_after = ?, updated_at = ? WHERE lease_owner = ? AND id IN ({marks})",
            (now, now, worker, *ids),
        ))

    @staticmethod
    def _job(row: sqlite3.Row, attempts: int) -> ExtractionJob:
        return ExtractionJob(
            identity=identity_from_json(row["identity"]),
            user_texts=json.loads(row["user_texts"]),
            assistant_text=row["assistant_text"],
            model=row["model"],
            created_at=row["created_at"],
            exchange_hash=row["exchange_hash"],
            has_caller_key=bool(row["has_caller_key"]),
            id=row["id"],
            attempts=attempts,
            result=ExtractionResult.from_json(row["result"]) if row["result"] else None,
        )

    def _update_leased(
        self, job_id: int, worker: str, sql: str, params: Sequence[Any],
        hold_followers_until: float | None = None,
    ) -> bool:
        """Run ``UPDATE jobs SET <sql>`` on a job still leased to ``worker``."""

        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"UPDATE jobs SET {sql} WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (*params, job_id, worker),
            )
            if cursor.rowcount != 1:
                return False
            if hold_followers_until is not None:
                _hold_followers(conn, job_id, hold_followers_until)
            return True

        changed: bool = self._write(work)
        return changed

    def renew(self, job_id: int, worker: str) -> bool:
        now = self._clock()
        until = now + self._settings.lease_seconds
        return self._update_leased(
            job_id, worker, "lease_until = ?, updated_at = ?", (until, now), until
        )

    def save_result(self, job_id: int, worker: str, result: ExtractionResult) -> bool:
        return self._update_leased(
            job_id, worker, "result = ?, updated_at = ?", (result.to_json(), self._clock())
        )

    def complete(self, job_id: int, worker: str) -> bool:
        now = self._clock()
        # The conversation is no longer needed; the hash (dedupe) and the result stay.
        return self._update_leased(
            job_id, worker,
            "state = 'done', lease_owner = NULL, lease_until = NULL, finished_at = ?,"
            " updated_at = ?, user_texts = '[]', assistant_text = ''",
            (now, now), now,
        )

    def backoff(self, attempts: int) -> float:
        s = self._settings
        delay = min(s.retry_max_seconds, s.retry_base_seconds * 2 ** max(attempts - 1, 0))
        return delay * random.uniform(1.0, 1.2)  # jitter: retries after an outage spread out

    def fail(self, job_id: int, worker: str, attempts: int, error: str) -> str:
        """Record a failed attempt; returns the job's new state (queued or dead)."""
        now = self._clock()
        error = error[:2000]
        if attempts >= self._settings.max_attempts:
            self._update_leased(
                job_id, worker,
                "state = 'dead', lease_owner = NULL, lease_until = NULL, last_error = ?,"
                " finished_at = ?, updated_at = ?",
                (error, now, now), now,
            )
            return "dead"
        retry_at = now + self.backoff(attempts)
        self._update_leased(
            job_id, worker,
            "state = 'queued', lease_owner = NULL, lease_until = NULL, last_error = ?,"
            " run_after = ?, updated_at = ?",
            (error, retry_at, now), retry_at,
        )
        return "queued"

    def release(self, job_id: int, worker: str) -> bool:
        """Give a job back unfinished (shutdown); the attempt does not count."""
        now = self._clock()
        return self._update_leased(
            job_id, worker,
            "state = 'queued', attempts = max(attempts - 1, 0), lease_owner = NULL,"
            " lease_until = NULL, run_after = ?, updated_at = ?",
            (now, now), now,
        )

    def park(self, job_id: int, worker: str) -> bool:
        """Wait for the caller's key (the user's next request); not counted as an attempt."""
        now = self._clock()
        return self._update_leased(
            job_id, worker,
            "state = 'waiting_key', attempts = max(attempts - 1, 0), lease_owner = NULL,"
            " lease_until = NULL, updated_at = ?",
            (now,), now + self._settings.key_wait_seconds,
        )

    def wake(self, owner: str) -> int:
        now = self._clock()
        def work(conn: sqlite3.Connection) -> int:
            woken = conn.execute(
                "UPDATE jobs SET state = 'queued', run_after = ?, updated_at = ?"
                " WHERE owner = ? AND state = 'waiting_key'", (now, now, owner),
            ).rowcount
            if woken:  # their followers were held for the key too
                conn.execute("UPDATE jobs SET run_after = ? WHERE owner = ? AND state = 'queued'",
                             (now, owner))
            return int(woken)

        woken: int = self._write(work)
        return woken

    def waiting_owners(self) -> set[str]:
        rows = self._read("SELECT DISTINCT owner FROM jobs WHERE state = 'waiting_key'")
        return {row[0] for row in rows}

    def release_stale_leases(self, is_stale: Callable[[str], bool]) -> int:
        """Requeue running jobs whose lease holder ``is_stale`` (a dead process on this host)."""
        now = self._clock()

        def work(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT id, lease_owner FROM jobs WHERE state = 'running'"
            ).fetchall()
            stale = [row["id"] for row in rows if row["lease_owner"] and is_stale(
                row["lease_owner"])]
            for job_id in stale:
                conn.execute(
                    "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                    " run_after = ?, updated_at = ? WHERE id = ?", (now, now, job_id),
                )
                _hold_followers(conn, job_id, now)
            return len(stale)

        released: int = self._write(work)
        return released

    # -- housekeeping, inspection ---------------------------------------------------------
    def ping(self) -> None:
        self._read("SELECT count(*) FROM _migrations")

    def maintain(self) -> None:
        """Purge old finished jobs; dead-letter jobs that waited too long for a key."""
        now = self._clock()
        s = self._settings

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM jobs WHERE state = 'done' AND finished_at < ?",
                (now - s.keep_done_seconds,),
            )
            expired = [row[0] for row in conn.execute(
                "SELECT id FROM jobs WHERE state = 'waiting_key' AND updated_at < ?",
                (now - s.key_wait_seconds,),
            )]
            for job_id in expired:
                conn.execute(
                    "UPDATE jobs SET state = 'dead', finished_at = ?, updated_at = ?,"
                    " last_error = 'no API key: the user made no request within"
                    " key_wait_seconds' WHERE id = ?", (now, now, job_id),
                )
                _hold_followers(conn, job_id, now)

        self._write(work)

    def stats(self) -> JobStats:
        now = self._clock()
        stats = JobStats()
        rows = self._read(
            "SELECT state, last_error IS NOT NULL AS failed, count(*) AS n,"
            " min(created_at) AS oldest FROM jobs GROUP BY state, failed"
        )
        oldest = now
        for row in rows:
            state = "failed" if row["state"] == "queued" and row["failed"] else row["state"]
            setattr(stats, state, getattr(stats, state) + row["n"])
            if row["state"] in UNFINISHED:
                oldest = min(oldest, row["oldest"])
        stats.lag_seconds = max(0.0, now - oldest)
        return stats

    def list(
        self, states: Iterable[str] = (), user_id: str | None = None, limit: int = 50
    ) -> list[JobRow]:
        where, params = ["1 = 1"], []
        wanted = list(states)
        if wanted:
            where.append(f"state IN ({', '.join('?' for _ in wanted)})")
            params += wanted
        if user_id is not None:
            where.append("json_extract(identity, '$.user_id') = ?")
            params.append(user_id)
        rows = self._read(
            f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [
            JobRow(
                id=row["id"], state=row["state"],
                user_id=json.loads(row["identity"]).get("user_id"),
                attempts=row["attempts"], created_at=row["created_at"],
                run_after=row["run_after"], finished_at=row["finished_at"],
                last_error=row["last_error"],
                facts=len(ExtractionResult.from_json(row["result"]).facts)
                if row["result"] else None,
            )
            for row in rows
        ]

    def retry(self, ids: Sequence[int] = (), *, all_dead: bool = False) -> int:
        """Queue dead (or waiting/failed) jobs again with a fresh attempt count."""
        now = self._clock()
        if not ids and not all_dead:
            return 0
        where = "state = 'dead'" if all_dead else (
            f"id IN ({', '.join('?' for _ in ids)}) AND state IN ('dead', 'queued', 'waiting_key')"
        )
        return int(self._write(lambda conn: conn.execute(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_after = ?, updated_at = ?,"
            f" finished_at = NULL WHERE {where}", (now, now, *([] if all_dead else ids)),
        ).rowcount))

    def purge(self, states: Sequence[str] = ("done",), older_than_seconds: float = 0.0) -> int:
        """Delete finished jobs (``done`` and/or ``dead``) older than the given age."""
        finished = [s for s in states if s in ("done", "dead")]
        if not finished:
            return 0
        cutoff = self._clock() - older_than_seconds
        return int(self._write(lambda conn: conn.execute(
            f"DELETE FROM jobs WHERE state IN ({', '.join('?' for _ in finished)})"
            " AND coalesce(finished_at, updated_at) <= ?", (*finished, cutoff),
        ).rowcount))

    def delete_owner(self, identity: Identity) -> int:
        """Forget every job of one owner (the user asked to be forgotten)."""
        owner = owner_of(identity)
        return int(self._write(
            lambda conn: conn.execute("DELETE FROM jobs WHERE owner = ?", (owner,)).rowcount
        ))
