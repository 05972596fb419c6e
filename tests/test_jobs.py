"""The durable job queue (SQLite): ordering, leases, backoff, dead letters, dedupe, housekeeping."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.config import JobSettings
from proxy.extraction.jobs import ExtractionJob, ExtractionResult, exchange_hash
from proxy.extraction.queue import JobQueue
from proxy.gateway.identity import Identity
from proxy.state.sqlite import database_path


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> JobQueue:
    settings = JobSettings(max_attempts=3, retry_base_seconds=10, retry_max_seconds=25,
                           lease_seconds=30, dedupe_window_seconds=100, keep_done_seconds=50,
                           key_wait_seconds=500)
    return JobQueue(database_path(tmp_path), settings, clock=clock)


def job(user: str, text: str, *, agent: str | None = None, created_at: float = 1_000_000.0,
        digest: str = "") -> ExtractionJob:
    return ExtractionJob(Identity(user, agent_id=agent, session_id="s"), [text], "ok", "m",
                         created_at=created_at, exchange_hash=digest)


def test_a_job_round_trips_without_its_key(queue: JobQueue, tmp_path: Path) -> None:
    original = job("ann", "I like ☕ and مرحبا\x00!", agent="bot")
    original.api_key = "sk-NEVER-STORED"
    original.has_caller_key = True
    job_id = queue.enqueue(original)
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == job_id == original.id
    assert claimed.identity == original.identity
    assert claimed.user_texts == original.user_texts and claimed.has_caller_key
    assert claimed.api_key is None and claimed.attempts == 1
    queue.close()
    for path in tmp_path.iterdir():
        assert b"sk-NEVER-STORED" not in path.read_bytes()


def test_one_owner_in_order_other_owners_alongside(queue: JobQueue) -> None:
    a1, a2, b1 = job("a", "1"), job("a", "2", agent="other-agent"), job("b", "1")
    for j in (a1, a2, b1):
        queue.enqueue(j)
    first, second = queue.claim("w"), queue.claim("w")
    assert (first and first.id, second and second.id) == (a1.id, b1.id)
    assert queue.claim("w") is None  # a2 waits for a1, whatever the agent
    assert a1.id is not None and queue.complete(a1.id, "w")
    third = queue.claim("w")
    assert third is not None and third.id == a2.id


def test_failures_back_off_then_dead_letter_with_the_error(queue: JobQueue, clock: Clock) -> None:
    queue.enqueue(job("a", "x"))
    later = job("a", "y")
    queue.enqueue(later)
    delays = []
    for attempt in (1, 2):
        claimed = queue.claim("w")
        assert claimed is not None and claimed.attempts == attempt
        assert claimed.id is not None
        assert queue.fail(claimed.id, "w", claimed.attempts, f"boom {attempt}") == "queued"
        assert queue.claim("w") is None  # backing off, and the owner's next job waits too
        (row,) = [r for r in queue.list(["queued"]) if r.id == claimed.id]
        delays.append(row.run_after - clock.now)
        assert queue.stats().failed == 1
        clock.now = row.run_after
    assert 10 <= delays[0] <= 12 and 20 <= delays[1] <= 24  # base * 2^(n-1), jitter ≤ 20 %
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id is not None
    assert queue.fail(claimed.id, "w", claimed.attempts, "boom 3") == "dead"
    (dead,) = queue.list(["dead"])
    assert dead.last_error == "boom 3" and dead.attempts == 3
    nxt = queue.claim("w")  # a dead job no longer holds up its owner
    assert nxt is not None and nxt.id == later.id


def test_an_expired_lease_is_claimable_again_and_a_poison_job_dies(
    queue: JobQueue, clock: Clock
) -> None:
    queue.enqueue(job("a", "x"))
    for attempt in (1, 2, 3):
        claimed = queue.claim(f"w{attempt}")
        assert claimed is not None and claimed.attempts == attempt
        assert queue.claim("other") is None  # leased
        clock.now += 31  # the holder died: nobody renewed
    assert queue.claim("w4") is None
    (dead,) = queue.list(["dead"])
    assert "lease expired" in (dead.last_error or "")


def test_renewing_keeps_the_lease_and_a_lost_lease_cannot_complete(
    queue: JobQueue, clock: Clock
) -> None:
    queue.enqueue(job("a", "x"))
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id is not None
    clock.now += 20
    assert queue.renew(claimed.id, "w1")
    clock.now += 20
    assert queue.claim("w2") is None
    clock.now += 31
    again = queue.claim("w2")
    assert again is not None and again.id == claimed.id
    assert not queue.complete(claimed.id, "w1")  # w1 lost it: no double completion
    assert queue.complete(claimed.id, "w2")


def test_the_result_is_saved_before_it_is_applied(queue: JobQueue, clock: Clock) -> None:
    queue.enqueue(job("a", "x"))
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id is not None and claimed.result is None
    queue.save_result(claimed.id, "w", ExtractionResult(["User likes tea"], "llm"))
    clock.now += 31  # crashed before applying
    replay = queue.claim("w2")
    assert replay is not None and replay.result == ExtractionResult(["User likes tea"], "llm")


def test_the_same_exchange_is_enqueued_once_within_the_window(
    queue: JobQueue, clock: Clock
) -> None:
    ident = Identity("a", session_id="s1")
    messages = [{"role": "system", "content": "Now is 10:00"},
                {"role": "user", "content": "I like tea"}]
    digest = exchange_hash(ident, messages)
    # A retry from another session, with a fresher system prompt: the same exchange.
    assert digest == exchange_hash(Identity("a", session_id="s2"),
                                   [{"role": "system", "content": "Now is 10:01"}, messages[1]])
    assert digest != exchange_hash(Identity("b"), messages)
    assert digest != exchange_hash(Identity("a", agent_id="bot"), messages)
    assert digest != exchange_hash(ident, [*messages, {"role": "user", "content": "more"}])

    assert queue.enqueue(job("a", "I like tea", digest=digest)) is not None
    assert queue.enqueue(job("a", "I like tea", digest=digest)) is None
    clock.now += 101
    assert queue.enqueue(job("a", "I like tea", digest=digest, created_at=clock.now)) is not None


def test_a_dead_exchange_can_be_sent_again(queue: JobQueue) -> None:
    queue.enqueue(job("a", "x", digest="h"))
    queue.retry([])  # nothing named: nothing happens
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id is not None
    queue.fail(claimed.id, "w", 3, "gave up")
    assert queue.enqueue(job("a", "x", digest="h")) is not None


def test_a_new_job_waits_behind_the_owners_unfinished_ones(
    queue: JobQueue, clock: Clock
) -> None:
    def claimed_id() -> int | None:
        claimed = queue.claim("w")
        return None if claimed is None else claimed.id

    first = job("a", "1")
    queue.enqueue(first)
    assert first.id is not None and claimed_id() == first.id  # running, leased for 30 s
    queue.enqueue(job("a", "2", digest="2"))
    assert claimed_id() is None  # behind a running job
    assert queue.park(first.id, "w")
    clock.now += 100
    assert claimed_id() is None  # behind a job waiting for its key
    assert queue.wake(first.owner) == 1
    assert claimed_id() == first.id
    assert queue.fail(first.id, "w", 1, "boom") == "queued"  # backs off 10-12 s
    queue.enqueue(job("a", "3", digest="3"))
    other = job("b", "1", digest="b1")  # another owner's line is its own
    queue.enqueue(other)
    assert claimed_id() == other.id
    assert claimed_id() is None  # a's head backs off; the jobs behind it wait with it
    clock.now += 13
    assert claimed_id() == first.id
    assert queue.complete(first.id, "w")
    assert [r.user_texts for r in (queue.claim("w"),) if r] == [["2"]]


def test_a_claim_or_completion_does_not_rewrite_the_jobs_behind_it(
    queue: JobQueue, clock: Clock, tmp_path: Path
) -> None:
    """With a long backlog a claim stays a few look-ups: the queued jobs are not touched."""
    for n in range(50):
        queue.enqueue(job("a", str(n), digest=str(n)))

    def behind() -> list[tuple[object, ...]]:
        with sqlite3.connect(database_path(tmp_path)) as conn:
            return conn.execute("SELECT * FROM jobs WHERE id > 2 ORDER BY id").fetchall()

    before = behind()
    head = queue.claim("w")
    assert head is not None and head.id is not None
    clock.now += 20
    assert queue.renew(head.id, "w") and queue.complete(head.id, "w")
    (promoted,) = [row for row in queue.list(["queued"], limit=100) if row.id == head.id + 1]
    assert promoted.run_after == clock.now  # due from its turn, not from its enqueue
    second = queue.claim("w")
    assert second is not None and second.id == head.id + 1
    assert behind() == before


def test_a_retried_job_older_than_the_head_goes_first(queue: JobQueue) -> None:
    old = job("a", "old", digest="old")
    queue.enqueue(old)
    claimed = queue.claim("w")
    assert claimed is not None and old.id is not None
    assert queue.fail(old.id, "w", 3, "gave up") == "dead"
    newer = job("a", "newer", digest="newer")
    queue.enqueue(newer)
    assert queue.retry([old.id]) == 1
    again = queue.claim("w")
    assert again is not None and again.id == old.id  # the owner's order is kept
    assert queue.claim("w") is None
    assert queue.complete(old.id, "w")
    after = queue.claim("w")
    assert after is not None and after.id == newer.id


def test_housekeeping_marks_a_line_left_without_a_head(
    queue: JobQueue, tmp_path: Path
) -> None:
    """Jobs written by a replica of an older version (no head marks) are not stranded."""
    queue.enqueue(job("a", "1", digest="1"))
    queue.enqueue(job("a", "2", digest="2"))
    with sqlite3.connect(database_path(tmp_path)) as conn:
        conn.execute("UPDATE jobs SET head = 0")
    assert queue.claim("w") is None
    queue.maintain()
    claimed = queue.claim("w")
    assert claimed is not None and claimed.user_texts == ["1"]


def test_park_wake_release_and_stale_leases(queue: JobQueue) -> None:
    queue.enqueue(job("a", "x"))
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id is not None
    assert queue.park(claimed.id, "w")
    assert queue.claim("w") is None and queue.stats().waiting_key == 1
    assert queue.waiting_owners() == {claimed.owner}
    assert queue.wake(claimed.owner) == 1
    again = queue.claim("w")
    assert again is not None and again.attempts == 1  # parking is not an attempt
    assert again.id is not None and queue.release(again.id, "w")
    third = queue.claim("host:123:old")
    assert third is not None and third.attempts == 1
    assert queue.release_stale_leases(lambda holder: holder == "host:123:old") == 1
    assert queue.claim("w") is not None


def test_stats_list_retry_purge_and_forget(queue: JobQueue, clock: Clock) -> None:
    for user in ("a", "b", "c"):
        queue.enqueue(job(user, "x", created_at=clock.now))
    done = queue.claim("w")
    dead = queue.claim("w")
    assert done is not None and done.id is not None and dead is not None and dead.id is not None
    queue.complete(done.id, "w")
    queue.fail(dead.id, "w", 3, "no")
    clock.now += 5
    stats = queue.stats()
    assert (stats.queued, stats.running, stats.done, stats.dead) == (1, 0, 1, 1)
    assert stats.lag_seconds == 5
    assert [r.user_id for r in queue.list(["dead"])] == ["b"]
    assert [r.id for r in queue.list(user_id="a")] == [done.id]
    assert queue.retry(all_dead=True) == 1 and queue.stats().dead == 0

    assert queue.purge(["done"], older_than_seconds=10) == 0
    assert queue.purge(["done"]) == 1
    queue.enqueue(job("a", "y"))
    assert queue.delete_owner(Identity("a")) == 1
    clock.now += 1000
    assert queue.stats().done == 0


def test_housekeeping_purges_old_done_jobs_and_gives_up_waiting_for_a_key(
    queue: JobQueue, clock: Clock
) -> None:
    queue.enqueue(job("a", "x"))
    queue.enqueue(job("b", "x"))
    first, second = queue.claim("w"), queue.claim("w")
    assert first is not None and first.id is not None
    assert second is not None and second.id is not None
    queue.complete(first.id, "w")
    queue.park(second.id, "w")
    clock.now += 60
    queue.maintain()
    assert queue.stats().done == 0 and queue.stats().waiting_key == 1
    clock.now += 500
    queue.maintain()
    (dead,) = queue.list(["dead"])
    assert "no API key" in (dead.last_error or "")


def test_done_jobs_drop_the_conversation(queue: JobQueue, tmp_path: Path) -> None:
    queue.enqueue(job("a", "my secret diary entry"))
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id is not None
    queue.complete(claimed.id, "w")
    conn = sqlite3.connect(database_path(tmp_path))
    texts, answer = conn.execute("SELECT user_texts, assistant_text FROM jobs").fetchone()
    assert (texts, answer) == ("[]", "")
