"""``memproxy jobs list|retry|purge`` on the data dir's SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli.main import main
from proxy.config import JobSettings
from proxy.extraction.jobs import ExtractionJob, ExtractionResult
from proxy.extraction.queue import JobQueue
from proxy.gateway.identity import Identity
from proxy.state.sqlite import database_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["jobs", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    """A queue in ./data (the default data dir; tests run in tmp_path): done, dead, queued."""
    queue = JobQueue(database_path(tmp_path / "data"), JobSettings())
    for user in ("ann", "bob", "cyd"):
        queue.enqueue(ExtractionJob(Identity(user), ["hi"], "hello", "m"))
    done, dead = queue.claim("w"), queue.claim("w")
    assert done is not None and done.id and dead is not None and dead.id
    queue.save_result(done.id, "w", ExtractionResult(["User says hi"], "raw"))
    queue.complete(done.id, "w")
    queue.fail(dead.id, "w", 99, "RateLimitError: slow down")
    return queue


def test_without_a_database_there_are_no_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list")
    assert code == 0 and out == "no jobs\n" and "no data dir found" in err
    assert not Path("data").exists()  # looking never creates one


def test_list_failed_selects_jobs_backing_off_after_an_error(
    queue: JobQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    (cyd,) = queue.list(user_id="cyd")
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == cyd.id
    assert queue.fail(cyd.id, "w", 1, "APIConnectionError: down") == "queued"
    _, out, _ = run(capsys, "list", "--state", "failed", "--json")
    assert [(r["user_id"], r["last_error"]) for r in json.loads(out)] == [
        ("cyd", "APIConnectionError: down")]
    _, out, _ = run(capsys, "list", "--state", "failed", "--state", "dead", "--json")
    assert [r["user_id"] for r in json.loads(out)] == ["cyd", "bob"]


def test_list_shows_state_attempts_facts_and_the_last_error(
    queue: JobQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "state", "tries"]
    assert [line.split()[1] for line in lines[1:]] == ["queued", "dead", "done"]
    assert "bob  [RateLimitError: slow down]" in out
    assert lines[3].split()[-2:] == ["1", "ann"]  # one fact saved

    _, out, _ = run(capsys, "list", "--state", "dead", "--json")
    (row,) = json.loads(out)
    assert (row["user_id"], row["attempts"], row["last_error"]) == (
        "bob", 1, "RateLimitError: slow down")
    _, out, _ = run(capsys, "list", "--user", "cyd", "--json")
    assert [r["state"] for r in json.loads(out)] == ["queued"]


def test_retry_requeues_dead_jobs_and_purge_deletes_finished_ones(
    queue: JobQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "retry")[0] == 2  # neither ids nor --dead
    assert run(capsys, "retry", "--dead")[1] == "1 job queued again\n"
    (bob,) = queue.list(user_id="bob")
    assert (bob.state, bob.attempts) == ("queued", 0)
    assert run(capsys, "retry", str(bob.id))[1] == "1 job queued again\n"

    assert run(capsys, "purge", "--older-than", "3600")[1] == "0 jobs deleted\n"
    assert run(capsys, "purge")[1] == "1 job deleted\n"
    assert [r.user_id for r in queue.list()] == ["cyd", "bob"]


def test_the_entry_point_reads_the_configured_data_dir(tmp_path: Path, queue: JobQueue) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "jobs", "list", "--config", str(config),
         "--state", "done"],
        capture_output=True, text=True, timeout=60, cwd="/", env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()[1:]] == ["done"]
