"""The store's management side: tenants, get/update/supersede/delete, history, lists, filters."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HashingEmbedder

from proxy.config import StoreSettings
from proxy.memory.listing import parse_filters
from proxy.memory.store import ChromaStore, Memory, shard_of

EMBEDDER = HashingEmbedder()


def vectors(*texts: str):  # type: ignore[no-untyped-def]
    return EMBEDDER.embed(list(texts))


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = ChromaStore(StoreSettings(shards=4), tmp_path, EMBEDDER.dimension)
    yield opened
    opened.close()


def add(store: ChromaStore, text: str, tenant: str = "default", **kw: object) -> Memory:
    memory = Memory("u", text, tenant=tenant, **kw)  # type: ignore[arg-type]
    store.add([memory], vectors(text))
    return memory


def test_tenants_namespace_users(store: ChromaStore) -> None:
    a = add(store, "likes tea", tenant="A")
    add(store, "likes coffee", tenant="B")
    query = vectors("likes")[0]
    assert [h.memory.text for h in store.search("u", query, 5, tenant="A")] == ["likes tea"]
    assert [h.memory.text for h in store.search("u", query, 5, tenant="B")] == ["likes coffee"]
    assert store.search("u", query, 5) == []  # the default tenant's u has nothing
    assert store.count_user("u", tenant="A") == 1
    assert store.get(a.id) == a
    assert shard_of("u", 64) == shard_of("u", 64, "default")


@pytest.mark.parametrize("warm", [False, True])
def test_update_supersede_delete_keep_cache_and_history(store: ChromaStore, warm: bool) -> None:
    first = add(store, "lives in Berlin")
    other = add(store, "works as a baker")
    if warm:
        assert store.count_user("u") == 2  # the owner's index is now cached
    changed = store.update(first.id, text="lives in Berlin Mitte",
                           vector=vectors("lives in Berlin Mitte")[0], metadata={"k": 1})
    assert changed is not None and changed.updated_at >= first.created_at
    assert store.search("u", vectors("Mitte")[0], 1)[0].memory.text == "lives in Berlin Mitte"
    assert store.get(first.id).metadata == {"k": 1}  # type: ignore[union-attr]

    moved = Memory("u", "moved to Paris")
    marked = store.supersede(first.id, moved, vectors("moved to Paris")[0], actor="job:7")
    assert marked is not None and marked.superseded_by == moved.id and marked.valid_to
    hits = store.search("u", vectors("lives in Berlin Mitte")[0], 5)
    assert first.id not in [h.memory.id for h in hits]  # out of retrieval by default
    with_old = store.search("u", vectors("lives in Berlin Mitte")[0], 5, include_superseded=True)
    assert with_old[0].memory.id == first.id
    assert store.count_user("u") == 2
    listed, _ = store.list_page("u")
    assert first.id not in [m.id for m in listed]
    listed, _ = store.list_page("u", include_superseded=True)
    assert first.id in [m.id for m in listed]

    assert store.delete(other.id) is not None
    assert store.get(other.id) is None and store.delete(other.id) is None
    events = store.history.of_memory(first.id)
    assert [(e.event, e.old_text, e.new_text, e.actor) for e in events] == [
        ("ADD", None, "lives in Berlin", "api"),
        ("UPDATE", "lives in Berlin", "lives in Berlin Mitte", "api"),
        ("SUPERSEDE", "lives in Berlin Mitte", "moved to Paris", "job:7"),
    ]
    assert [e.event for e in store.history.of_memory(other.id)] == ["ADD", "DELETE"]
    assert [m.text for m in store.list_user("u", 10)] == ["moved to Paris"]


def test_pages_and_filters(store: ChromaStore) -> None:
    made = [
        add(store, f"fact {i}", created_at=1000.0 + i, agent_id="a" if i % 2 else None,
            metadata={"topic": "work" if i < 5 else "home", "n": i})
        for i in range(10)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        chunk, cursor = store.list_page("u", limit=3, cursor=cursor)
        seen += [m.id for m in chunk]
        if cursor is None:
            break
    assert seen == [m.id for m in reversed(made)]

    def texts(raw: dict) -> list[str]:  # type: ignore[type-arg]
        return [m.text for m in store.list_page("u", filters=parse_filters(raw))[0]]

    assert texts({"topic": "home", "agent_id": "a"}) == ["fact 9", "fact 7", "fact 5"]
    assert texts({"metadata.n": {"$in": [1, 2]}}) == ["fact 2", "fact 1"]
    assert texts({"created_at": {"$gte": 1008, "$lt": "1970-01-01T00:16:49Z"}}) == ["fact 8"]
    assert texts({"metadata": {"n": {"$gt": 7}}, "topic": {"$ne": "work"}}) == ["fact 9", "fact 8"]
    hits = store.search("u", vectors("fact")[0], 10, filters=parse_filters({"topic": "work"}))
    assert sorted(h.memory.text for h in hits) == [f"fact {i}" for i in range(5)]


def test_delete_user_removes_memories_and_history_of_that_owner_only(store: ChromaStore) -> None:
    add(store, "mine", tenant="A")
    add(store, "also mine", tenant="A")
    kept = add(store, "same user id, other tenant", tenant="B")
    assert store.count_user("u", tenant="A") == 2
    assert store.delete_user("u", tenant="A") == {"memories": 2, "history": 2}
    assert store.count_user("u", tenant="A") == 0
    assert store.get(kept.id) == kept and len(store.history.of_memory(kept.id)) == 1


def test_restore_reproduces_ids_marks_and_history(store: ChromaStore, tmp_path: Path) -> None:
    old = add(store, "old fact")
    new = Memory("u", "new fact")
    store.supersede(old.id, new, vectors("new fact")[0])
    memories = store.all_memories("u")
    history = store.history.of_owner("default", "u")

    other = ChromaStore(StoreSettings(shards=2), tmp_path / "other", EMBEDDER.dimension)
    other.restore(memories, vectors(*[m.text for m in memories]), history)
    assert other.all_memories("u") == memories
    assert [e.event for e in other.history.of_memory(old.id)] == ["ADD", "SUPERSEDE"]
    other.restore(memories, vectors(*[m.text for m in memories]))  # twice: no duplicates
    assert len(other.all_memories("u")) == 2
    other.close()


def test_cleared_fields_stay_cleared_when_read_back_from_chroma(tmp_path: Path) -> None:
    store = ChromaStore(StoreSettings(shards=2), tmp_path, EMBEDDER.dimension)
    memory = Memory("u", "has a dog", metadata={"pet": "dog"}, agent_id="a")
    store.add([memory], vectors("has a dog"))
    store.update(memory.id, metadata={})
    store.close()
    cold = ChromaStore(StoreSettings(shards=2), tmp_path, EMBEDDER.dimension)
    [read] = cold.all_memories("u")
    assert read.metadata == {} and read.agent_id == "a" and read.updated_at > read.created_at
    cold.close()


def test_a_time_the_index_cannot_date_leaves_the_cached_index_aligned(store: ChromaStore) -> None:
    # Written by an older version (times are range-checked at the API now): the keyword
    # index cannot render its date, and the cached rows must stay aligned anyway.
    first = add(store, "lives in Berlin")
    assert store.count_user("u") == 1  # cached
    add(store, "far future", created_at=1.7976931348623155e308)
    changed = store.update(first.id, text="lives in Paris", vector=vectors("lives in Paris")[0])
    assert changed is not None and changed.text == "lives in Paris"
    assert sorted(m.text for m in store.all_memories("u")) == ["far future", "lives in Paris"]
    assert store.search("u", vectors("Paris")[0], 1)[0].memory.text == "lives in Paris"


def test_records_from_before_the_text_moved_into_the_metadata_still_read_and_update(
    tmp_path: Path,
) -> None:
    """A record's text used to be its Chroma document (full-text indexed by Chroma on every
    write); it is metadata now. A data dir written before reads and updates the same."""
    settings = StoreSettings(shards=4, write_behind=False, snapshots=False)
    store = ChromaStore(settings, tmp_path, EMBEDDER.dimension)
    old = Memory("u", "likes green tea", created_at=1_700_000_000.0)
    meta = old.record_metadata()
    del meta["text"]
    store._shards.collection(old.owner).add(  # the old layout, written as Chroma held it
        ids=[old.id], embeddings=vectors(old.text), documents=[old.text], metadatas=[meta])
    store.close()

    store = ChromaStore(settings, tmp_path, EMBEDDER.dimension)
    new = add(store, "likes black coffee")
    assert store.get(old.id) == old
    assert [m.text for m in store.list_user("u", 10)] == ["likes black coffee", "likes green tea"]
    assert store.search("u", vectors("likes green tea")[0], 1)[0].memory.id == old.id
    collection = store._shards.collection(old.owner)
    raw = collection.get(ids=[new.id], include=["documents", "metadatas"])
    assert raw["documents"] == [None] and raw["metadatas"][0]["text"] == "likes black coffee"

    changed = store.update(old.id, text="likes jasmine tea", vector=vectors("likes jasmine tea")[0])
    assert changed is not None and store.get(old.id).text == "likes jasmine tea"
    raw = collection.get(ids=[old.id], include=["documents", "metadatas"])
    assert raw["documents"] == [""]  # the old text is not left behind in the record
    assert raw["metadatas"][0]["text"] == "likes jasmine tea"
    store.close()
