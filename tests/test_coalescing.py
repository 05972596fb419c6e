"""Coalescing: a user's queued exchanges in one session share one reconciliation call."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import HashingEmbedder
from fake_upstream import FakeUpstream

from proxy.config import JobSettings, Settings
from proxy.extraction.extractor import Extractor
from proxy.extraction.jobs import ExtractionJob
from proxy.extraction.queue import JobQueue
from proxy.extraction.workers import ExtractionWorkers
from proxy.gateway.identity import Identity
from proxy.memory.store import ChromaStore
from proxy.metrics import Metrics
from proxy.state.sqlite import database_path

pytestmark = pytest.mark.anyio


async def test_burst_in_one_session_is_one_llm_call(
    settings: Settings, upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings.extraction.mode = "llm"
    jobs = JobSettings(workers=2, poll_seconds=0.05, coalesce_seconds=5.0)
    embedder = HashingEmbedder()
    store = ChromaStore(settings.store, tmp_path / "data", embedder.dimension)
    extractor = Extractor(settings, embedder, store)
    queue = JobQueue(database_path(tmp_path / "q"), jobs)
    workers = ExtractionWorkers(queue, extractor, jobs)
    texts = ["I play chess.", "I live in Oslo.", "I keep bees."]
    for n, text in enumerate(texts):  # queued before any worker runs: a backlog
        await workers.submit(ExtractionJob(Identity("u", session_id="s1"), [text], "ok", "m",
                                           exchange_hash=f"h{n}"), "sk-c")
    await workers.submit(ExtractionJob(Identity("u", session_id="s2"), ["I sail."], "ok", "m",
                                       exchange_hash="other"), "sk-c")
    await workers.start()
    deadline = time.monotonic() + 20
    while queue.stats().done < 4:
        assert time.monotonic() < deadline, queue.stats()
        await __import__("anyio").sleep(0.05)
    await workers.stop(1.0)

    calls = upstream.extraction_requests()
    assert len(calls) == 2  # s1's three exchanges in one call; s2 in its own
    prompt = calls[0].json["messages"][1]["content"]
    assert all(f"user: {t}" in prompt for t in texts)
    assert sorted(m.text for m in store.list_user("u", 10)) == [
        "User keeps bees", "User lives in Oslo", "User plays chess", "User sails",
    ]
    head = queue.list(["done"], limit=10)[-1]
    assert head.facts == 3
    assert workers.counts["coalesced"] == 2 and workers.counts["completed"] == 4

    metrics = Metrics()
    metrics.extraction_usage = extractor.usage
    text = metrics.render()
    assert "memproxy_extraction_exchanges_total 4" in text
    assert "memproxy_extraction_llm_calls_total 2" in text
    assert "memproxy_extraction_llm_calls_per_exchange 0.5000" in text
    assert 'memproxy_extraction_llm_tokens_total{kind="prompt"}' in text
    queue.close()
    store.close()


async def test_a_burst_arriving_while_workers_idle_waits_and_is_one_call(
    settings: Settings, upstream: FakeUpstream, tmp_path: Path
) -> None:
    import anyio

    settings.extraction.mode = "llm"
    jobs = JobSettings(poll_seconds=0.05, coalesce_seconds=5.0, coalesce_wait_seconds=0.6)
    embedder = HashingEmbedder()
    store = ChromaStore(settings.store, tmp_path / "data", embedder.dimension)
    queue = JobQueue(database_path(tmp_path / "q"), jobs)
    workers = ExtractionWorkers(queue, Extractor(settings, embedder, store), jobs)
    await workers.start()  # idle workers, polling: without the wait each job goes alone
    for n, text in enumerate(["I play chess.", "I keep bees."]):
        await workers.submit(ExtractionJob(Identity("u", session_id="s1"), [text], "ok", "m",
                                           exchange_hash=f"w{n}"), "sk-c")
        await anyio.sleep(0.2)
    deadline = time.monotonic() + 20
    while queue.stats().done < 2:
        assert time.monotonic() < deadline, queue.stats()
        await anyio.sleep(0.05)
    await workers.stop(1.0)
    assert len(upstream.extraction_requests()) == 1
    assert sorted(m.text for m in store.list_user("u", 10)) == [
        "User keeps bees", "User plays chess"]
    queue.close()
    store.close()


async def test_a_replayed_head_claims_exactly_the_jobs_it_merged(tmp_path: Path) -> None:
    jobs = JobSettings(coalesce_seconds=5.0, lease_seconds=0.01)
    queue = JobQueue(database_path(tmp_path), jobs)
    for n in range(3):
        queue.enqueue(ExtractionJob(Identity("u", session_id="s"), [f"t{n}"], "", "m",
                                    exchange_hash=f"h{n}"))
    head = queue.claim("w1")
    assert head is not None
    followers = queue.claim_followers(head, "w1")
    assert [f.user_texts for f in followers] == [["t1"], ["t2"]]
    from proxy.extraction.jobs import ExtractionResult

    queue.save_result(head.id, "w1", ExtractionResult(["x"], "llm", merged=[followers[0].id]))
    time.sleep(0.02)  # w1 dies: its leases expire
    again = queue.claim("w2")
    assert again is not None and again.id == head.id and again.result is not None
    replayed = queue.claim_followers(again, "w2", again.result.merged)
    assert [f.id for f in replayed] == [followers[0].id]
    queue.close()
