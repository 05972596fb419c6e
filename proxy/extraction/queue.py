"""The durable job queue: rows in SQLite under the data dir, claimed with a lease.

    queued ──claim──▶ running ──complete──▶ done   (conversation texts dropped, result kept)
      ▲  ▲              │
      │  │              ├─ fail, attempts < max ──▶ queued again after a backoff ("failed")
      │  │              ├─ fail, attempts = max ──▶ dead (last error kept; `memproxy jobs retry`)
      │  └── release ───┤   (shutdown: not counted as an attempt)
      │                 └─ park: needs the caller's key, none in memory ──▶ waiting_key
      └──── wake: the user's next request brought a key ◀─────────────────────┘

A running job whose lease expires (its process died) is claimable again. Only the oldest
unfinished job of an owner (tenant + user), the head of its line, can be claimed, so one
user's jobs apply in order while different users' run concurrently. Heads are marked
(``settle_line``, when a job finishes or joins a line), so a claim reads due heads from a
small index and the jobs behind them are never rewritten: with a large backlog (a busy user,
an outage) a claim, a renewal and a completion stay a few index look-ups, not a scan.

A job carries a hash of its exchange: the same exchange again within
``dedupe_window_seconds`` (a retried request, a regenerated answer) is not enqueued twice.
The extraction result is saved in the row before it is applied, so a replay applies the same
facts (with the same memory ids) instead of asking the model again.

The caller's API key is never a column: it stays in process memory
(proxy/extraction/workers.py). Replicas on a shared database: a job records its ``origin``, the
process that took the request and holds that key; a job carrying a caller's key is claimed by
its origin first, and by any replica once it has been due for ``lease_seconds`` (its origin
is gone, or busy). The user's next request, on any replica, makes that replica its origin.
The user's texts are stored with secrets redacted (proxy/extraction/secrets.py, the filter
facts go through), and a done job keeps none of them: not the texts, not the facts of its
result.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

from proxy.extraction.job_admin import JobAdmin, settle_line
from proxy.extraction.jobs import ExtractionJob, ExtractionResult, identity_from_json
from proxy.extraction.secrets import redact_secrets
from proxy.state.engine import Connection, Row


class JobQueue(JobAdmin):
    """The jobs table. Blocking: call it from a worker thread. Thread-safe.

    On Postgres several replicas claim from the same table: a claim locks the row it takes
    (``FOR UPDATE SKIP LOCKED``), so two replicas never lease one job, and the lease (renewed
    while the job runs) is what hands a dead replica's job to another.
    """

    # -- producing ------------------------------------------------------------------------
    def enqueue(self, job: ExtractionJob, origin: str | None = None) -> int | None:
        """Store the job; None when the same exchange is already queued or done."""
        now = self._clock()
        since = now - self._settings.dedupe_window_seconds
        serialise = self.dialect.transaction_lock

        def work(conn: Connection) -> int | None:
            if serialise and job.exchange_hash:  # two replicas given the same exchange at once
                conn.execute(serialise, (job.exchange_hash,))
            if job.exchange_hash and conn.execute(
                "SELECT 1 FROM jobs WHERE exchange_hash = ? AND created_at >= ?"
                " AND state != 'dead' LIMIT 1",
                (job.exchange_hash, since),
            ).fetchone():
                return None
            cursor = conn.execute(
                "INSERT INTO jobs (owner, exchange_hash, identity, user_texts, assistant_text,"
                " model, has_caller_key, created_at, run_after, updated_at, origin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    job.owner, job.exchange_hash,
                    json.dumps(dataclasses.asdict(job.identity), ensure_ascii=False),
                    json.dumps([redact_secrets(t) for t in job.user_texts], ensure_ascii=False),
                    redact_secrets(job.assistant_text),
                    job.model, int(job.has_caller_key), job.created_at,
                    now + self._settings.coalesce_wait_seconds, now, origin,
                ),
            )
            job_id = int(cursor.fetchone()[0])
            settle_line(conn, job.owner, now, self.dialect.transaction_lock)
            return job_id

        job_id = self._db.write(work)
        if job_id is not None:
            job.id = job_id
        return job_id

    # -- consuming ------------------------------------------------------------------------
    def claim(self, worker: str) -> ExtractionJob | None:
        """The oldest due job that heads its owner's queue, leased to ``worker``."""
        now = self._clock()
        lease_until = now + self._settings.lease_seconds
        max_attempts = self._settings.max_attempts
        lock = self.dialect.claim_lock
        # Replicas: another replica's job that needs its caller's key waits for that replica
        # a while (one process alone: every origin but itself is a past life, not waited for).
        affinity = (
            " AND (j.has_caller_key = 0 OR j.origin IS NULL OR j.origin = :me"
            " OR j.run_after <= :stale)" if self.dialect.shared else ""
        )
        params = {"now": now, "me": worker, "stale": now - self._settings.lease_seconds}

        def work(conn: Connection) -> ExtractionJob | None:
            while True:
                rows = [
                    conn.execute(
                        f"SELECT * FROM jobs AS j WHERE j.head = 1 AND j.state = '{state}'"
                        f" AND {due}"
                        " AND NOT EXISTS (SELECT 1 FROM jobs AS e WHERE e.owner = j.owner"
                        "  AND e.state IN ('queued', 'running', 'waiting_key') AND e.id < j.id)"
                        f" ORDER BY {order} LIMIT 1{lock}",
                        params,
                    ).fetchone()
                    for state, due, order in (
                        ("running", "j.lease_until < :now", "j.id"),
                        ("queued", f"j.run_after <= :now{affinity}", "j.run_after, j.id"),
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
                    settle_line(conn, row["owner"], now, self.dialect.transaction_lock)
                    continue
                conn.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1,"
                    " lease_owner = ?, lease_until = ?, updated_at = ? WHERE id = ?",
                    (worker, lease_until, now, row["id"]),
                )
                return self._job(row, attempts=row["attempts"] + 1)

        return self._db.write(work)

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

        def work(conn: Connection) -> list[ExtractionJob]:
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

        return self._db.write(work)

    def unclaim(self, ids: Sequence[int], worker: str) -> None:
        """Followers back to queued (their head failed); they were no attempt of their own."""
        if not ids:
            return
        now = self._clock()
        marks = ", ".join("?" for _ in ids)
        self._db.write(lambda conn: conn.execute(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
            f" run_after = ?, updated_at = ? WHERE lease_owner = ? AND id IN ({marks})",
            (now, now, worker, *ids),
        ))

    @staticmethod
    def _job(row: Row, attempts: int) -> ExtractionJob:
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
        finishes: bool = False,
    ) -> bool:
        """Run ``UPDATE jobs SET <sql>`` on a job still leased to ``worker``; ``finishes``:
        the job leaves its line (the next one becomes the head)."""

        def work(conn: Connection) -> bool:
            cursor = conn.execute(
                f"UPDATE jobs SET {sql} WHERE id = ? AND state = 'running' AND lease_owner = ?"
                " RETURNING owner",
                (*params, job_id, worker),
            )
            row = cursor.fetchone()
            if row is None:
                return False
            if finishes:
                settle_line(conn, row[0], self._clock(), self.dialect.transaction_lock)
            return True

        return self._db.write(work)

    def renew(self, job_id: int, worker: str) -> bool:
        now = self._clock()
        until = now + self._settings.lease_seconds
        return self._update_leased(job_id, worker, "lease_until = ?, updated_at = ?", (until, now))

    def save_result(self, job_id: int, worker: str, result: ExtractionResult) -> bool:
        return self._update_leased(
            job_id, worker, "result = ?, updated_at = ?", (result.to_json(), self._clock())
        )

    def complete(self, job_id: int, worker: str) -> bool:
        now = self._clock()

        def work(conn: Connection) -> bool:
            row = conn.execute(
                "SELECT result, owner FROM jobs WHERE id = ? AND state = 'running'"
                " AND lease_owner = ?",
                (job_id, worker),
            ).fetchone()
            if row is None:
                return False
            # The conversation is no longer needed, nor the result's texts (raw mode: the
            # user's own words); the hash (dedupe) stays, and how many facts the result held.
            kept = None
            if row[0]:
                saved = json.loads(row[0])
                kept = json.dumps({"facts": [], "source": saved.get("source"),
                                   "fact_count": len(saved.get("facts") or [])})
            conn.execute(
                "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL,"
                " finished_at = ?, updated_at = ?, user_texts = '[]', assistant_text = '',"
                " result = ? WHERE id = ?", (now, now, kept, job_id),
            )
            settle_line(conn, row[1], now, self.dialect.transaction_lock)
            return True

        return self._db.write(work)

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
                (error, now, now), finishes=True,
            )
            return "dead"
        retry_at = now + self.backoff(attempts)
        self._update_leased(
            job_id, worker,
            "state = 'queued', lease_owner = NULL, lease_until = NULL, last_error = ?,"
            " run_after = ?, updated_at = ?",
            (error, retry_at, now),
        )
        return "queued"

    def release(self, job_id: int, worker: str, after: float = 0.0, error: str | None = None
                ) -> bool:
        """Give a job back unfinished, due again in ``after`` seconds; the attempt does not
        count (shutdown; the memory store unreachable: the job waits, it did nothing wrong)."""
        now = self._clock()
        due = now + after
        return self._update_leased(
            job_id, worker,
            "state = 'queued', attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
            " lease_owner = NULL, lease_until = NULL, run_after = ?, updated_at = ?,"
            " last_error = coalesce(?, last_error)",
            (due, now, error),
        )

    def park(self, job_id: int, worker: str) -> bool:
        """Wait for the caller's key (the user's next request); not counted as an attempt."""
        now = self._clock()
        return self._update_leased(
            job_id, worker,
            "state = 'waiting_key', attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
            " lease_owner = NULL,"
            " lease_until = NULL, updated_at = ?",
            (now,),
        )

    def wake(self, owner: str, origin: str | None = None) -> int:
        """The owner's parked jobs queued again; ``origin``: the process now holding the key."""
        now = self._clock()
        return int(self._db.write(lambda conn: conn.execute(
            "UPDATE jobs SET state = 'queued', run_after = ?, updated_at = ?,"
            " origin = coalesce(?, origin) WHERE owner = ? AND state = 'waiting_key'",
            (now, now, origin, owner),
        ).rowcount))

    def waiting_owners(self) -> set[str]:
        rows = self._db.read("SELECT DISTINCT owner FROM jobs WHERE state = 'waiting_key'")
        return {row[0] for row in rows}

    def release_stale_leases(self, is_stale: Callable[[str], bool]) -> int:
        """Requeue running jobs whose lease holder ``is_stale`` (a dead process on this host)."""
        now = self._clock()

        def work(conn: Connection) -> int:
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
            return len(stale)

        return self._db.write(work)
