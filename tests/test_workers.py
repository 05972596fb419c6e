"""Extraction workers: concurrency across users, order within one, retries, dead letters,
draining on shutdown, the caller's key held in memory only, and replay after a crash."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest
from conftest import HashingEmbedder
from fake_upstream import FakeUpstream

from proxy.config import JobSettings, Settings
from proxy.extraction.extractor import Extractor, memory_id
from proxy.extraction.jobs import ExtractionJob, ExtractionResult
from proxy.extraction.queue import JobQueue
from proxy.extraction.workers import ExtractionWorkers
from proxy.gateway.identity import Identity
from proxy.memory.store import ChromaStore, Memory
from proxy.state.sqlite import database_path

pytestmark = pytest.mark.anyio

FAST = JobSettings(workers=4, max_attempts=3, retry_base_seconds=0.01, retry_max_seconds=0.05,
                   poll_seconds=0.05, lease_seconds=5)


class ScriptedHandler:
    """A JobHandler whose delays and failures a test scripts; records what it applied."""

    def __init__(self, *, needs_key: bool = False, delay: float = 0.0) -> None:
        self.needs_key = needs_key
        self.delay = delay
        self.fail_times: dict[str, int] = {}  # user text → failures before it succeeds
        self.applied: list[tuple[str | None, str]] = []
        self.keys: list[str | None] = []
        self.active = self.max_active = 0

    def needs_caller_key(self, job: ExtractionJob) -> bool:
        return self.needs_key

    async def extract(self, job: ExtractionJob) -> ExtractionResult:
        self.keys.append(job.api_key)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        text = job.user_texts[0]
        if self.fail_times.get(text, 0) > 0:
            self.fail_times[text] -= 1
            raise RuntimeError(f"provider said no to key {job.api_key}")
        return ExtractionResult(job.user_texts, "raw")

    async def apply(self, job: ExtractionJob, result: ExtractionResult) -> object:
        self.applied += [(job.identity.user_id, fact) for fact in result.facts]
        return None


def new_job(user: str, text: str) -> ExtractionJob:
    return ExtractionJob(Identity(user), [text], "ok", "m")


async def settle(queue: JobQueue, timeout: float = 10.0) -> None:
    """Wait until no job is queued, running or backing off."""
    deadline = time.monotonic() + timeout
    while True:
        stats = queue.stats()
        if stats.queued + stats.failed + stats.running == 0:
            return
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.02)


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(database_path(tmp_path), FAST)


async def test_users_run_concurrently_and_each_users_jobs_in_order(queue: JobQueue) -> None:
    handler = ScriptedHandler(delay=0.05)
    workers = ExtractionWorkers(queue, handler, FAST)
    await workers.start()
    for n in range(5):
        for user in ("ann", "bob", "cyd"):
            await workers.submit(new_job(user, f"{user}-{n}"), None)
    await settle(queue)
    await workers.stop(1.0)
    for user in ("ann", "bob", "cyd"):
        assert [t for u, t in handler.applied if u == user] == [f"{user}-{n}" for n in range(5)]
    assert handler.max_active == 3  # one per user at a time, all three users at once
    assert workers.counts["completed"] == 15


async def test_failures_retry_then_dead_letter_with_the_key_redacted(queue: JobQueue) -> None:
    handler = ScriptedHandler()
    handler.fail_times = {"flaky": 2, "broken": 99}
    workers = ExtractionWorkers(queue, handler, FAST)
    await workers.start()
    await workers.submit(new_job("ann", "flaky"), "sk-SECRET-1")
    await workers.submit(new_job("ann", "broken"), "sk-SECRET-1")
    await workers.submit(new_job("ann", "after"), "sk-SECRET-1")
    await settle(queue)
    await workers.stop(1.0)
    assert [t for _, t in handler.applied] == ["flaky", "after"]
    (dead,) = queue.list(["dead"])
    assert dead.attempts == 3 and dead.last_error == "RuntimeError: provider said no to key ***"
    assert workers.counts["attempt_failures"] == 4 and workers.counts["dead"] == 1
    queue.close()
    for path in database_path(queue.path.parent).parent.iterdir():
        assert b"sk-SECRET-1" not in path.read_bytes()


async def test_stop_lets_in_flight_jobs_finish_within_the_grace_period(queue: JobQueue) -> None:
    handler = ScriptedHandler(delay=0.3)
    workers = ExtractionWorkers(queue, handler, FAST)
    await workers.start()
    await workers.submit(new_job("ann", "quick"), None)
    await asyncio.sleep(0.1)  # claimed, in flight
    await workers.stop(2.0)
    assert handler.applied == [("ann", "quick")]
    assert queue.stats().done == 1


async def test_stop_releases_what_outlives_the_grace_period(queue: JobQueue) -> None:
    handler = ScriptedHandler(delay=30)
    workers = ExtractionWorkers(queue, handler, FAST)
    await workers.start()
    await workers.submit(new_job("ann", "slow"), None)
    await workers.submit(new_job("bob", "never started"), None)
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await workers.stop(0.3)
    assert time.monotonic() - started < 1.0
    assert handler.applied == []
    rows = queue.list()
    assert {(r.state, r.attempts) for r in rows} == {("queued", 0)}  # released, not counted

    handler.delay = 0
    again = ExtractionWorkers(queue, handler, FAST)  # the next process takes them at once
    await again.start()
    await settle(queue)
    await again.stop(1.0)
    assert sorted(handler.applied) == [("ann", "slow"), ("bob", "never started")]


async def test_a_job_needing_the_callers_key_waits_for_the_users_next_request(
    queue: JobQueue,
) -> None:
    before_restart = ExtractionWorkers(queue, None, FAST)  # stores jobs, runs none
    await before_restart.submit(new_job("ann", "needs a key"), "sk-OLD")
    await before_restart.submit(new_job("bob", "no key was sent"), None)

    handler = ScriptedHandler(needs_key=True)
    workers = ExtractionWorkers(queue, handler, FAST)  # a new process: no key in memory
    await workers.start()
    await settle(queue)
    assert handler.applied == [("bob", "no key was sent")]
    assert queue.stats().waiting_key == 1

    await workers.saw_caller(Identity("bob"), "sk-BOB")  # someone else's key: no use
    await asyncio.sleep(0.1)
    assert queue.stats().waiting_key == 1
    await workers.saw_caller(Identity("ann", session_id="new"), "sk-NEW")
    await settle(queue)
    await workers.stop(1.0)
    assert handler.applied[-1] == ("ann", "needs a key")
    assert handler.keys[-1] == "sk-NEW"
    assert workers.counts["parked"] == 1


async def test_without_a_store_jobs_are_kept_not_run(queue: JobQueue) -> None:
    workers = ExtractionWorkers(queue, None, FAST)
    await workers.start()
    assert await workers.submit(new_job("ann", "x"), None) is not None
    assert not workers.running
    assert queue.stats().queued == 1


# -- replay after a crash, with the real extractor and Chroma --------------------------------


def test_chroma_ignores_a_second_add_of_the_same_id(tmp_path: Path, settings: Settings) -> None:
    """The store contract a replay relies on: the same memory id written twice is one memory."""
    embedder = HashingEmbedder()
    store = ChromaStore(settings.store, tmp_path, embedder.dimension)
    memory = Memory("ann", "User likes tea", id="f" * 32)
    store.add([memory], embedder.embed([memory.text]))
    ChromaStore(settings.store, tmp_path, embedder.dimension).add(
        [memory], embedder.embed([memory.text])
    )
    assert store.count_user("ann") == 1
    job = ExtractionJob(Identity("ann"), ["x"], "", "m", exchange_hash="h", created_at=5.0)
    assert memory_id(job, "user likes tea") == memory_id(job, "user likes tea")
    job.created_at = 6.0  # a later job for the same exchange: new ids
    assert memory_id(job, "user likes tea") != memory_id(
        ExtractionJob(Identity("ann"), ["x"], "", "m", exchange_hash="h", created_at=5.0),
        "user likes tea",
    )


async def test_a_job_replayed_after_a_crash_adds_nothing_twice(
    tmp_path: Path, settings: Settings, upstream: FakeUpstream
) -> None:
    settings.extraction.mode = "llm"
    embedder = HashingEmbedder()
    store = ChromaStore(settings.store, tmp_path / "chroma", embedder.dimension)
    extractor = Extractor(settings, embedder, store)
    queue = JobQueue(database_path(tmp_path), FAST)
    job = new_job("ann", "I'm a potter. My kiln is electric.")
    job.exchange_hash = "exchange-1"
    queue.enqueue(job)

    # A process that died after extracting and applying, before marking the job done.
    dead_process = f"{socket.gethostname()}:{os.getpid()}:earlier-life"
    claimed = queue.claim(dead_process)
    assert claimed is not None and claimed.id is not None
    claimed.api_key = "sk-caller"
    result = await extractor.extract(claimed)
    queue.save_result(claimed.id, dead_process, result)
    first = await extractor.apply(claimed, result)
    assert len(first) == 2 and len(upstream.extraction_requests()) == 1

    workers = ExtractionWorkers(queue, extractor, FAST)
    await workers.start()  # finds the stale lease at once, replays the saved result
    await settle(queue)
    await workers.stop(1.0)
    (row,) = queue.list(["done"])
    assert row.attempts == 2 and row.facts == 2
    assert len(upstream.extraction_requests()) == 1  # the model was not asked again
    assert sorted(m.text for m in store.list_user("ann", 10)) == [
        "User is a potter", "User's kiln is electric",
    ]
    assert sorted(m.id for m in store.list_user("ann", 10)) == sorted(m.id for m in first)
