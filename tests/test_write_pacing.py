"""Embedded Chroma's writes hold the GIL: they go one at a time, each followed by a rest as
long as itself, so the chats' retrievals get the interpreter in between."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import HashingEmbedder

from proxy.config import StoreSettings
from proxy.memory.chroma import PacedCollection, WritePacer
from proxy.memory.retrieval import Activity
from proxy.memory.store import ChromaStore, Memory


def test_paced_writes_never_overlap_and_rest_as_long_as_they_ran() -> None:
    pacer = WritePacer(busy_share=0.5)
    pacer.contended = lambda: True  # a retrieval is running throughout
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def write(seconds: float) -> str:
        started = time.monotonic()
        time.sleep(seconds)
        with lock:
            spans.append((started, time.monotonic()))
        return "done"

    threads = [threading.Thread(target=pacer.run, args=(write, 0.03)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pacer.run(write, 0.0) == "done"
    spans.sort()
    for (start, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert next_start - end >= end - start  # no overlap, and a rest of a write's length


def test_writes_rest_only_while_a_retrieval_runs() -> None:
    activity = Activity()
    pacer = WritePacer(busy_share=0.5)
    pacer.contended = activity.busy
    began = time.monotonic()
    for _ in range(5):
        pacer.run(time.sleep, 0.05)
    alone = time.monotonic() - began
    assert alone < 0.45  # five 50 ms writes, no rests (with rests: ≥ 0.45 s)
    with activity.running():
        assert activity.busy()
        began = time.monotonic()
        for _ in range(5):
            pacer.run(time.sleep, 0.05)
        assert time.monotonic() - began >= 0.45  # each rested as long as the one before
    assert not activity.busy()


def test_a_busy_share_of_one_paces_nothing_but_order() -> None:
    pacer = WritePacer(busy_share=1.0)
    pacer.contended = lambda: True
    began = time.monotonic()
    for _ in range(5):
        pacer.run(time.sleep, 0.01)
    assert time.monotonic() - began < 0.5  # no rests (five 10 ms writes)


def test_the_embedded_stores_collections_are_paced_and_still_read_and_write(
    tmp_path: Path,
) -> None:
    embedder = HashingEmbedder()
    store = ChromaStore(StoreSettings(shards=2), tmp_path, embedder.dimension)
    try:
        memory = Memory("ann", "Ann keeps bees")
        store.add([memory], embedder.embed([memory.text]))
        # Journaled writes reach Chroma through the paced collection.
        collection = store._shards.direct_at(store._shards.of(memory.owner))
        assert isinstance(collection, PacedCollection)
        store._shards.collection(memory.owner).count()  # a read waits for the journal
        assert collection.count() == 1  # reads pass through
        hits = store.search("ann", embedder.embed(["bees"])[0], 3)
        assert [hit.memory.text for hit in hits] == ["Ann keeps bees"]
        assert store.delete(memory.id)
        assert store._shards.collection(memory.owner).count() == 0
    finally:
        store.close()
