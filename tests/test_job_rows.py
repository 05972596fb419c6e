"""What job rows keep of the user: secrets redacted from the start, no text once done, dead
jobs gone after jobs.keep_dead_seconds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from test_jobs import Clock, job

from proxy.config import JobSettings
from proxy.extraction.jobs import ExtractionResult
from proxy.extraction.queue import JobQueue
from proxy.state.sqlite import database_path

SECRET_TEXT = "my password hunter2 and card 4111 1111 1111 1111, key sk-proj-abcdefghijklmnop1234"


def queue_at(tmp_path: Path, clock: Clock, **settings: float) -> JobQueue:
    return JobQueue(database_path(tmp_path),
                    JobSettings(max_attempts=1, keep_done_seconds=1e9, **settings), clock=clock)


def file_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())


def test_user_text_is_stored_with_secrets_redacted(tmp_path: Path) -> None:
    clock = Clock()
    queue = queue_at(tmp_path, clock)
    queued = job("ann", SECRET_TEXT)
    queued.assistant_text = "Noted: hunter2"  # an echo is redacted only by the filter's rules
    queue.enqueue(queued)
    claimed = queue.claim("w")
    assert claimed is not None
    [text] = claimed.user_texts
    assert "hunter2" not in text and "4111" not in text and "sk-proj" not in text
    assert text.startswith("my password [redacted]")
    queue.close()
    stored = file_bytes(tmp_path)
    for secret in (b"hunter2 and", b"4111 1111", b"sk-proj-abcdefghijklmnop1234"):
        assert secret not in stored


def test_a_done_job_keeps_no_user_text(tmp_path: Path) -> None:
    clock = Clock()
    queue = queue_at(tmp_path, clock)
    queue.enqueue(job("ann", "I keep bees in Oslo"))
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id is not None
    assert queue.save_result(claimed.id, "w", ExtractionResult(
        ["I keep bees in Oslo"], "raw", [{"op": "add", "id": None, "text": "I keep bees"}]))
    assert queue.complete(claimed.id, "w")
    [row] = queue.list()
    assert row.state == "done" and row.facts == 1  # still counted
    with sqlite3.connect(database_path(tmp_path)) as conn:
        texts = conn.execute("SELECT user_texts, assistant_text, result FROM jobs").fetchone()
    assert "bees" not in " ".join(str(t) for t in texts), texts
    queue.close()


def test_dead_jobs_expire_after_keep_dead_seconds(tmp_path: Path) -> None:
    clock = Clock()
    queue = queue_at(tmp_path, clock, keep_dead_seconds=100)
    queue.enqueue(job("ann", "I keep bees"))
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id is not None
    assert queue.fail(claimed.id, "w", claimed.attempts, "boom") == "dead"
    clock.now += 99
    queue.maintain()
    assert [r.state for r in queue.list()] == ["dead"]  # still there to retry
    clock.now += 2
    queue.maintain()
    assert queue.list() == []
    queue.close()
