"""The operator's side of the jobs table: inspection, retry, purge and housekeeping.

``JobAdmin`` owns the table's database; ``JobQueue`` (proxy/extraction/queue.py) extends it with
the producing and consuming side. ``memproxy jobs`` (list, retry, purge), the metrics, the
health check and the workers' periodic ``maintain`` use what is here. How jobs move between
states is drawn in proxy/extraction/queue.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

from proxy.config import JobSettings
from proxy.extraction.jobs import UNFINISHED, ExtractionResult, JobRow, JobStats, owner_of
from proxy.gateway.identity import Identity
from proxy.state.engine import Connection, Target, open_database


def settle_line(conn: Connection, owner: str, now: float, lock: str = "") -> None:
    """Mark the head of ``owner``'s line: its oldest unfinished job, the only one a claim may
    take. Call it after a job left the unfinished states or joined them (done, dead, enqueued,
    retried). A few index look-ups whatever the backlog; the jobs behind the head are not
    touched. A job that becomes the head is due ``now`` at the earliest: its wait in line
    does not count as time due (with replicas, its origin gets the first ``lease_seconds``).
    ``lock`` (Postgres): the dialect's transaction lock, taken on the owner so that two
    replicas settling one line at once see each other's work."""
    if lock:
        conn.execute(lock, (f"line:{owner}",))
    firsts = [
        conn.execute("SELECT min(id) FROM jobs WHERE owner = ? AND state = ?",
                     (owner, state)).fetchone()[0]
        for state in UNFINISHED
    ]
    head = min((job_id for job_id in firsts if job_id is not None), default=None)
    conn.execute(
        "UPDATE jobs SET head = 0 WHERE owner = ? AND head = 1 AND id != ?",
        (owner, head if head is not None else -1),
    )
    if head is not None:
        conn.execute(
            "UPDATE jobs SET head = 1, run_after = CASE WHEN run_after < ? THEN ? ELSE run_after"
            " END WHERE id = ? AND head = 0", (now, now, head),
        )


def fact_count(result: str | None) -> int | None:
    """How many facts a saved result holds (a done job keeps only the count)."""
    if not result:
        return None
    data = json.loads(result)
    count = data.get("fact_count")
    return int(count) if count is not None else len(ExtractionResult.from_json(result).facts)


class JobAdmin:
    """The jobs table for an operator. Blocking: call it from a worker thread.

    ``target``: the data dir's SQLite file, or the postgresql:// URL every replica shares.
    """

    def __init__(
        self, target: Target, settings: JobSettings, *, clock: Callable[[], float] = time.time,
        pool_size: int = 8,
    ):
        self.path = target
        self._settings = settings
        self._clock = clock
        self._db = open_database(target, pool_size=pool_size)
        self.dialect = self._db.dialect

    def close(self) -> None:
        self._db.close()

    # -- housekeeping, inspection ---------------------------------------------------------
    def ping(self) -> None:
        self._db.read("SELECT count(*) FROM _migrations")

    def maintain(self) -> None:
        """Purge old done and dead jobs; dead-letter jobs that waited too long for a key;
        mark the heads of lines that lack one."""
        now = self._clock()
        s = self._settings

        def work(conn: Connection) -> None:
            conn.execute(
                "DELETE FROM jobs WHERE state = 'done' AND finished_at < ?",
                (now - s.keep_done_seconds,),
            )
            conn.execute(
                "DELETE FROM jobs WHERE state = 'dead' AND coalesce(finished_at, updated_at) < ?",
                (now - s.keep_dead_seconds,),
            )
            expired = conn.execute(
                "SELECT id, owner FROM jobs WHERE state = 'waiting_key' AND updated_at < ?",
                (now - s.key_wait_seconds,),
            ).fetchall()
            for job_id, owner in expired:
                conn.execute(
                    "UPDATE jobs SET state = 'dead', finished_at = ?, updated_at = ?,"
                    " last_error = 'no API key: the user made no request within"
                    " key_wait_seconds' WHERE id = ?", (now, now, job_id),
                )
                settle_line(conn, owner, now, self.dialect.transaction_lock)
            # Lines whose head is not marked (jobs written by a replica of an older version
            # during a rolling upgrade): marked now, or their jobs would never be claimed.
            unmarked = conn.execute(
                "SELECT DISTINCT owner FROM jobs AS j WHERE j.head = 0"
                " AND j.state IN ('queued', 'running', 'waiting_key') AND NOT EXISTS ("
                "  SELECT 1 FROM jobs AS e WHERE e.owner = j.owner"
                "  AND e.state IN ('queued', 'running', 'waiting_key') AND e.id < j.id)"
            ).fetchall()
            for (owner,) in unmarked:
                settle_line(conn, owner, now, self.dialect.transaction_lock)

        self._db.write(work)

    def stats(self) -> JobStats:
        now = self._clock()
        stats = JobStats()
        rows = self._db.read(
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
        self, states: Sequence[str] = (), user_id: str | None = None, limit: int = 50
    ) -> list[JobRow]:
        """Newest first. ``failed`` selects queued jobs waiting to retry after an error."""
        where, params = ["1 = 1"], []
        wanted = [s for s in states if s != "failed"]
        either = []
        if wanted:
            either.append(f"state IN ({', '.join('?' for _ in wanted)})")
            params += wanted
        if "failed" in states:
            either.append("(state = 'queued' AND last_error IS NOT NULL)")
        if either:
            where.append(f"({' OR '.join(either)})")
        if user_id is not None:
            where.append(f"{self.dialect.json_field('identity', 'user_id')} = ?")
            params.append(user_id)
        rows = self._db.read(
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
                facts=fact_count(row["result"]),
            )
            for row in rows
        ]

    def pending_of(self, identity: Identity) -> dict[str, int]:
        """One owner's unfinished jobs by state (``failed``: queued again after an error)."""
        counts = {"queued": 0, "failed": 0, "running": 0, "waiting_key": 0}
        rows = self._db.read(
            "SELECT state, last_error IS NOT NULL AS failed, count(*) AS n FROM jobs"
            f" WHERE owner = ? AND state IN ({', '.join('?' for _ in UNFINISHED)})"
            " GROUP BY state, failed",
            (owner_of(identity), *UNFINISHED),
        )
        for row in rows:
            state = "failed" if row["state"] == "queued" and row["failed"] else row["state"]
            counts[state] += row["n"]
        return counts

    def retry(self, ids: Sequence[int] = (), *, all_dead: bool = False) -> int:
        """Queue dead (or waiting/failed) jobs again with a fresh attempt count."""
        now = self._clock()
        if not ids and not all_dead:
            return 0
        where = "state = 'dead'" if all_dead else (
            f"id IN ({', '.join('?' for _ in ids)}) AND state IN ('dead', 'queued', 'waiting_key')"
        )
        named = [] if all_dead else list(ids)

        def work(conn: Connection) -> int:
            owners = {row[0] for row in conn.execute(
                f"SELECT DISTINCT owner FROM jobs WHERE {where}", named)}
            count = conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, run_after = ?, updated_at = ?,"
                f" finished_at = NULL WHERE {where}", (now, now, *named),
            ).rowcount
            for owner in owners:  # a retried job may be older than its owner's head
                settle_line(conn, owner, now, self.dialect.transaction_lock)
            return int(count)

        return self._db.write(work)

    def purge(self, states: Sequence[str] = ("done",), older_than_seconds: float = 0.0) -> int:
        """Delete finished jobs (``done`` and/or ``dead``) older than the given age."""
        finished = [s for s in states if s in ("done", "dead")]
        if not finished:
            return 0
        cutoff = self._clock() - older_than_seconds
        return int(self._db.write(lambda conn: conn.execute(
            f"DELETE FROM jobs WHERE state IN ({', '.join('?' for _ in finished)})"
            " AND coalesce(finished_at, updated_at) <= ?", (*finished, cutoff),
        ).rowcount))

    def delete_owner(self, identity: Identity) -> int:
        """Forget every job of one owner (the user asked to be forgotten)."""
        owner = owner_of(identity)
        return int(self._db.write(
            lambda conn: conn.execute("DELETE FROM jobs WHERE owner = ?", (owner,)).rowcount
        ))
