"""Per-owner snapshots (proxy/memory/snapshot.py): a restarted store loads an owner from its
snapshot, and never serves what Chroma no longer holds — after adds, updates, supersedes,
deletes and forgets, and with a broken file."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import HashingEmbedder

from proxy.config import StoreSettings
from proxy.memory.store import ChromaStore, Memory

OWNER = ("default", "ana")
TEXTS = ["Ana's sister lives in Lisbon.", "Ana is allergic to peanuts.",
         "Ana moved to Osaka in May 2021.", "Ana plays the cello on Sundays."]


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


def open_store(data_dir: Path, **settings: object) -> ChromaStore:
    return ChromaStore(StoreSettings(shards=4, **settings), data_dir,  # type: ignore[arg-type]
                       HashingEmbedder.dimension)


def add(store: ChromaStore, embedder: HashingEmbedder, texts: list[str]) -> list[Memory]:
    memories = [Memory(user_id="ana", text=t, created_at=time.time() + i, session_id="s1")
                for i, t in enumerate(texts)]
    store.add(memories, embedder.embed(texts))
    return memories


def snapshot_of(store: ChromaStore) -> Path:
    assert store._snapshots is not None
    return store._snapshots.path(OWNER)


def wait_for(path: Path, present: bool = True) -> None:
    deadline = time.monotonic() + 10
    while path.exists() != present and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists() == present


def searched(store: ChromaStore, embedder: HashingEmbedder, query: str) -> list[tuple]:
    found = store.candidates("ana", embedder.embed([query])[0], query)
    return sorted(zip((m.id for m in found.memories), found.dense.round(5).tolist(),
                      found.keyword.round(5).tolist(), strict=True))


def test_a_restart_loads_the_owner_from_its_snapshot_as_chroma_holds_it(
    tmp_path: Path, embedder: HashingEmbedder,
) -> None:
    store = open_store(tmp_path)
    added = add(store, embedder, TEXTS)
    from_chroma = searched(store, embedder, "sister Lisbon")  # the first read loads Chroma
    wait_for(snapshot_of(store))
    store.close()

    again = open_store(tmp_path)
    index = again._snapshots.load(OWNER, again._cache.analyzer)  # type: ignore[union-attr]
    assert index is not None and [m.id for m in index.memories] == [m.id for m in added]
    assert index.memories == [again.get(m.id) for m in added]  # every field, as stored
    assert searched(again, embedder, "sister Lisbon") == from_chroma
    again.close()


def test_every_kind_of_write_removes_the_snapshot_and_close_writes_a_fresh_one(
    tmp_path: Path, embedder: HashingEmbedder,
) -> None:
    store = open_store(tmp_path)
    added = add(store, embedder, TEXTS)
    store.count_user("ana")
    path = snapshot_of(store)
    writes = [
        lambda: add(store, embedder, ["Ana adopted a cat named Miso."]),
        lambda: store.update(added[0].id, metadata={"checked": True}),
        lambda: store.supersede(added[1].id, Memory(user_id="ana", text="Ana eats peanuts now."),
                                embedder.embed(["Ana eats peanuts now."])[0]),
        lambda: store.delete(added[2].id),
    ]
    for write in writes:
        wait_for(path)
        write()
        assert not path.exists()
        store._snapshots.save(OWNER, store._load(OWNER), store._snapshots.generation(OWNER))  # type: ignore[union-attr,arg-type]
    store.delete(added[3].id)
    assert not path.exists()
    expected = {m.id: m for m in store.all_memories("ana")}
    store.close()  # the cached owner's snapshot is written again, with every change
    assert path.exists()

    again = open_store(tmp_path)
    index = again._snapshots.load(OWNER, again._cache.analyzer)  # type: ignore[union-attr]
    assert index is not None
    assert {m.id: m for m in index.memories} == expected
    assert "Ana adopted a cat named Miso." in {m.text for m in index.memories}
    assert added[2].id not in expected and expected[added[0].id].metadata == {"checked": True}
    again.close()


def test_a_forgotten_owners_snapshot_is_gone_and_a_restart_finds_nothing(
    tmp_path: Path, embedder: HashingEmbedder,
) -> None:
    store = open_store(tmp_path)
    add(store, embedder, TEXTS)
    store.count_user("ana")
    wait_for(snapshot_of(store))
    store.delete_user("ana")
    assert not snapshot_of(store).exists()
    store.close()
    assert not snapshot_of(store).exists()
    again = open_store(tmp_path)
    assert again.count_user("ana") == 0 and again.list_user("ana", 10) == []
    again.close()


def test_a_snapshot_taken_while_a_write_runs_is_not_put_in_place(
    tmp_path: Path, embedder: HashingEmbedder,
) -> None:
    store = open_store(tmp_path)
    add(store, embedder, TEXTS)
    index = store._load(OWNER)
    snapshots = store._snapshots
    assert snapshots is not None and index is not None
    wait_for(snapshot_of(store))
    before = snapshots.generation(OWNER)  # taken before the write ...
    add(store, embedder, ["Ana started a pottery class."])
    snapshots.save(OWNER, index, before)  # ... and finished after it: refused
    assert not snapshot_of(store).exists()
    assert not list(snapshot_of(store).parent.glob("*.partial-*"))
    store.close()


def test_a_broken_or_foreign_snapshot_is_ignored(tmp_path: Path, embedder: HashingEmbedder) -> None:
    store = open_store(tmp_path)
    add(store, embedder, TEXTS)
    store.count_user("ana")
    path = snapshot_of(store)
    wait_for(path)
    store.close()
    path.write_bytes(b"not a snapshot")
    again = open_store(tmp_path)
    assert again.count_user("ana") == len(TEXTS)  # from Chroma
    again.close()

    np.savez(path, header=np.frombuffer(b'{"format": 99}', dtype=np.uint8),
             matrix=np.zeros((1, 1), dtype=np.float32))
    third = open_store(tmp_path)
    assert third.count_user("ana") == len(TEXTS)
    third.close()


def test_snapshots_can_be_turned_off(tmp_path: Path, embedder: HashingEmbedder) -> None:
    store = open_store(tmp_path, snapshots=False)
    add(store, embedder, TEXTS)
    assert store.count_user("ana") == len(TEXTS)
    store.close()
    assert not (tmp_path / "snapshots").exists()


def test_an_owner_pushed_out_of_the_cache_after_a_write_keeps_a_fresh_snapshot(
    tmp_path: Path, embedder: HashingEmbedder,
) -> None:
    store = open_store(tmp_path, cache_max_mb=0)  # each new owner pushes the last one out
    add(store, embedder, TEXTS)
    store.count_user("ana")
    wait_for(snapshot_of(store))
    add(store, embedder, ["Ana bought a sailing boat."])
    assert not snapshot_of(store).exists()
    store.add([Memory(user_id="ben", text="Ben runs.")], embedder.embed(["Ben runs."]))
    store.count_user("ben")  # ana is pushed out
    wait_for(snapshot_of(store))
    index = store._snapshots.load(OWNER, store._cache.analyzer)  # type: ignore[union-attr]
    assert index is not None and "Ana bought a sailing boat." in {m.text for m in index.memories}
    store.close()


def test_an_owner_without_memories_loads_from_its_snapshot_too(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.count_user("nobody") == 0  # the readiness probe's and warm-up's user
    path = store._snapshots.path(("default", "nobody"))  # type: ignore[union-attr]
    wait_for(path)
    store.close()
    again = open_store(tmp_path)
    index = again._snapshots.load(("default", "nobody"), again._cache.analyzer)  # type: ignore[union-attr]
    assert index is not None and index.matrix.shape == (0, HashingEmbedder.dimension)
    assert again.count_user("nobody") == 0
    again.close()


def test_appends_into_spare_rows_keep_vectors_and_search_exact(
    tmp_path: Path, embedder: HashingEmbedder,
) -> None:
    store = open_store(tmp_path)
    texts = [f"Ana noted fact number {i} about {city}." for i, city in
             enumerate(["Lisbon", "Osaka", "Oslo", "Lima"] * 25)]
    add(store, embedder, texts[:1])
    store.count_user("ana")  # cached: the rest are appended one by one
    for text in texts[1:]:
        add(store, embedder, [text])
    store.delete(store.all_memories("ana")[3].id)  # a removal between appends
    add(store, embedder, ["Ana noted one more fact about Quito."])
    index = store._load(OWNER)
    assert index is not None
    expected = embedder.embed([m.text for m in index.memories])
    np.testing.assert_allclose(index.matrix, expected, atol=1e-6)
    best = store.search("ana", embedder.embed(["fact about Quito"])[0], 1)
    assert best[0].memory.text == "Ana noted one more fact about Quito."
    store.close()


@pytest.mark.parametrize("snapshots", [True, False], ids=["from-snapshot", "from-chroma"])
def test_chats_arriving_together_for_an_uncached_owner_share_one_load(
    tmp_path: Path, embedder: HashingEmbedder, snapshots: bool,
) -> None:
    """After a restart, eight retrievals for the same owner at once: one reads the snapshot
    (or Chroma), the others wait for it and get the very same index, instead of each reading
    it again (eight reads of a large owner on two cores took them all past the timeout)."""
    store = open_store(tmp_path, snapshots=snapshots)
    texts = [f"Ana noted fact number {i} about topic {i % 97}." for i in range(3000)]
    for start in range(0, len(texts), 1000):
        add(store, embedder, texts[start:start + 1000])
    store.count_user("ana")  # cached, so close writes the snapshot
    store.close()

    again = open_store(tmp_path, snapshots=snapshots)
    together = threading.Barrier(8)

    def load() -> object:
        together.wait(timeout=10)
        return again._load(OWNER)

    with ThreadPoolExecutor(8) as pool:
        indexes = list(pool.map(lambda _: load(), range(8)))
    assert indexes[0] is not None and len(indexes[0].memories) == 3000  # type: ignore[attr-defined]
    assert all(index is indexes[0] for index in indexes)
    again.close()
