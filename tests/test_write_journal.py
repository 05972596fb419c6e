"""The write journal (proxy/memory/journal.py): writes accepted at once, applied behind in
batches, in order, surviving a crash; reads wait for the writes before them; a write Chroma
refuses is dropped alone; a Chroma that fails is retried."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HashingEmbedder

from proxy.config import StoreSettings
from proxy.errors import MemoryUnavailable
from proxy.memory.chroma import owner_where
from proxy.memory.journal import JOURNAL_FILENAME, WriteJournal
from proxy.memory.store import ChromaStore, Memory

ROOT = Path(__file__).resolve().parent.parent
EMBEDDER = HashingEmbedder()
DIM = EMBEDDER.dimension
ENTERED = threading.Event()  # the journal's thread has made a call


class GatedCollection:
    """A stand-in for one Chroma collection: records each write call; the first call waits
    for ``gate`` (so writes pile up behind it); ``failures`` calls fail first."""

    def __init__(self, log: list[tuple[int, str, list[str]]], shard: int, gate: threading.Event,
                 failures: list[int]):
        self._log = log
        self._shard = shard
        self._gate = gate
        self._failures = failures

    def _write(self, method: str, ids: list[str], **kwargs: Any) -> None:
        ENTERED.set()
        self._gate.wait(10)
        if self._failures[0] > 0:
            self._failures[0] -= 1
            raise RuntimeError("disk I/O error")
        for key, values in kwargs.items():
            assert len(values) == len(ids), key
        self._log.append((self._shard, method, list(ids)))

    def add(self, ids: list[str], **kwargs: Any) -> None:
        self._write("add", ids, **kwargs)

    def upsert(self, ids: list[str], **kwargs: Any) -> None:
        self._write("upsert", ids, **kwargs)

    def update(self, ids: list[str], **kwargs: Any) -> None:
        self._write("update", ids, **kwargs)

    def delete(self, ids: list[str], **kwargs: Any) -> None:
        self._write("delete", ids, **kwargs)


def gated_journal(tmp_path: Path, failures: int = 0, contended: bool = False) -> tuple[
    WriteJournal, list[tuple[int, str, list[str]]], threading.Event
]:
    calls: list[tuple[int, str, list[str]]] = []
    gate = threading.Event()
    ENTERED.clear()
    count = [failures]
    collections: dict[int, GatedCollection] = {}

    def direct(shard: int) -> GatedCollection:
        return collections.setdefault(shard, GatedCollection(calls, shard, gate, count))

    journal = WriteJournal(tmp_path / JOURNAL_FILENAME, direct, max_batch=100, dimension=DIM,
                           contended=lambda: contended)
    return journal, calls, gate


def add(journal: WriteJournal, shard: int, *ids: str) -> None:
    journal.append(shard, "add", list(ids), embeddings=EMBEDDER.embed(list(ids)),
                   documents=list(ids), metadatas=[{"owner": "o"} for _ in ids])


def test_writes_queued_behind_a_slow_one_go_as_few_calls_in_order(tmp_path: Path) -> None:
    journal, calls, gate = gated_journal(tmp_path)
    try:
        add(journal, 0, "first")
        assert ENTERED.wait(5)  # the journal's thread is inside the first call, held by the gate
        add(journal, 0, "a")
        add(journal, 1, "b")
        journal.append(0, "update", ["first"], metadatas=[{"owner": "o", "n": 1}])
        add(journal, 0, "c")  # joins the call of "a": the update between touches other ids
        journal.append(0, "delete", ["c"])
        add(journal, 0, "c")  # after the delete of c: a call of its own, after it
        add(journal, 1, "d")
        assert journal.pending == 8
        gate.set()
        journal.flush()
        assert journal.pending == 0
        assert calls == [
            (0, "add", ["first"]),
            (0, "add", ["a", "c"]),
            (0, "update", ["first"]),
            (0, "delete", ["c"]),
            (0, "add", ["c"]),
            (1, "add", ["b", "d"]),
        ]
        assert journal.calls == 6 and journal.applied_writes == 8
    finally:
        gate.set()
        journal.close()
    with sqlite3.connect(tmp_path / JOURNAL_FILENAME) as db:
        assert db.execute("SELECT count(*) FROM writes").fetchone()[0] == 0  # all applied


def test_one_at_a_time_adds_share_calls_and_calls_stay_small_while_chats_are_served(
    tmp_path: Path,
) -> None:
    journal, calls, gate = gated_journal(tmp_path)
    gate.set()
    try:
        for n in range(10):  # well within the 50 ms window
            add(journal, 0, f"one {n}")
        journal.flush()
        assert len(calls) <= 3 and sum(len(ids) for _, _, ids in calls) == 10
    finally:
        journal.close()
    journal, calls, gate = gated_journal(tmp_path / "contended", contended=True)
    gate.set()
    try:
        add(journal, 2, *(f"bulk {n}" for n in range(40)))
        journal.flush()
        assert [len(ids) for _, _, ids in calls] == [16, 16, 8]
        assert [i for _, _, ids in calls for i in ids] == [f"bulk {n}" for n in range(40)]
    finally:
        journal.close()


def test_a_read_waits_for_the_writes_of_its_shard_only(tmp_path: Path) -> None:
    journal, calls, gate = gated_journal(tmp_path)
    try:
        add(journal, 3, "x")
        journal.settle(4, timeout=0.1)  # nothing written to shard 4: no wait
        with pytest.raises(MemoryUnavailable):
            journal.settle(3, timeout=0.2)  # its write is held at the gate
        threading.Timer(0.2, gate.set).start()
        began = time.monotonic()
        journal.settle(3)
        assert time.monotonic() - began >= 0.1
        assert calls == [(3, "add", ["x"])]
    finally:
        gate.set()
        journal.close()


def test_a_failing_chroma_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    journal, calls, gate = gated_journal(tmp_path, failures=2)
    gate.set()
    try:
        add(journal, 0, "a")
        add(journal, 0, "b")
        journal.flush(timeout=10)  # two failures, retried after 0.5 s and 1 s
        assert sorted(i for _, _, ids in calls for i in ids) == ["a", "b"]
        assert journal.pending == 0
    finally:
        journal.close()


def test_bad_writes_are_refused_before_they_are_journaled(tmp_path: Path) -> None:
    journal, _, gate = gated_journal(tmp_path)
    gate.set()
    try:
        with pytest.raises(ValueError):
            journal.append(0, "add", ["a"], embeddings=np.zeros((1, DIM + 1), np.float32))
        with pytest.raises(ValueError):
            journal.append(0, "add", ["a", "b"], documents=["only one"])
        with pytest.raises(ValueError):
            journal.append(0, "query", ["a"])
        assert journal.pending == 0
    finally:
        journal.close()


def test_a_write_chroma_refuses_is_dropped_alone_and_its_owner_reloaded(tmp_path: Path) -> None:
    store = ChromaStore(StoreSettings(shards=1), tmp_path, DIM)
    assert store.journal is not None
    good = Memory("ann", "Ann keeps bees")
    store.add([good], EMBEDDER.embed([good.text]))
    try:
        # Chroma refuses an empty metadata dict; the store never writes one, so append directly.
        store.journal.append(0, "add", ["bad"], embeddings=EMBEDDER.embed(["bad"]),
                             documents=["bad"], metadatas=[{}])
        other = Memory("ann", "Ann lives in Lyon")
        store.add([other], EMBEDDER.embed([other.text]))
        store.journal.flush()
        assert store.journal.refusals == 1
        texts = sorted(m.text for m in store.list_page("ann")[0])
        assert texts == ["Ann keeps bees", "Ann lives in Lyon"]
        assert store._shards.collection_at(0).get(ids=["bad"])["ids"] == []
    finally:
        store.close()


def test_writes_a_killed_process_left_in_the_journal_reach_chroma_at_the_next_start(
    tmp_path: Path,
) -> None:
    writer = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from pathlib import Path
        from conftest import HashingEmbedder
        from proxy.config import StoreSettings
        from proxy.memory.store import ChromaStore, Memory
        embedder = HashingEmbedder()
        store = ChromaStore(StoreSettings(shards=2), Path({str(tmp_path)!r}), embedder.dimension)
        for n in range(300):
            text = f"fact number {{n}}"
            store.add([Memory("u", text)], embedder.embed([text]))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", writer], cwd=ROOT, env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    with sqlite3.connect(tmp_path / JOURNAL_FILENAME) as db:
        left = db.execute("SELECT count(*) FROM writes").fetchone()[0]
    assert left > 0  # killed with writes not yet in Chroma: the case under test

    store = ChromaStore(StoreSettings(shards=2), tmp_path, DIM)
    try:
        assert store.count_user("u") == 300
        store.journal.flush()  # type: ignore[union-attr]
        chroma = store._shards.collection(("default", "u"))
        assert len(chroma.get(where=owner_where(("default", "u")), include=[])["ids"]) == 300
    finally:
        store.close()
    with sqlite3.connect(tmp_path / JOURNAL_FILENAME) as db:
        assert db.execute("SELECT count(*) FROM writes").fetchone()[0] == 0


def test_a_forgotten_users_text_leaves_the_journal_file(tmp_path: Path) -> None:
    store = ChromaStore(StoreSettings(shards=2), tmp_path, DIM)
    try:
        secret = "the vault code is 4471-ZEBRA"
        store.add([Memory("eve", secret)], EMBEDDER.embed([secret]))
        stop = threading.Event()

        def others() -> None:  # other users' writes keep coming during the forget
            n = 0
            while not stop.is_set():
                store.add([Memory(f"u{n % 7}", f"fact {n}")], EMBEDDER.embed([f"fact {n}"]))
                n += 1

        writer = threading.Thread(target=others)
        writer.start()
        try:
            time.sleep(0.3)
            store.delete_user("eve")
        finally:
            stop.set()
            writer.join()
        for path in tmp_path.glob(JOURNAL_FILENAME + "*"):
            assert secret.encode() not in path.read_bytes(), path
        assert store.count_user("eve") == 0
    finally:
        store.close()


def test_with_write_behind_off_each_write_waits_for_chroma(tmp_path: Path) -> None:
    store = ChromaStore(StoreSettings(shards=1, write_behind=False), tmp_path, DIM)
    try:
        assert store.journal is None
        memory = Memory("ann", "Ann keeps bees")
        store.add([memory], EMBEDDER.embed([memory.text]))
        assert store._shards.direct_at(0).count() == 1
        assert not (tmp_path / JOURNAL_FILENAME).exists()
    finally:
        store.close()
