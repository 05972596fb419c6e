from __future__ import annotations

import json
from pathlib import Path

from conftest import HashingEmbedder

from proxy.config import StoreSettings
from proxy.gateway.sse import ChatStreamAssembler, encode_event
from proxy.memory.store import ChromaStore, Memory, shard_of


def test_store_persists_isolates_users_and_keeps_the_shard_count(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    store = ChromaStore(StoreSettings(shards=8), tmp_path, embedder.dimension)
    users = [f"user_{i}" for i in range(20)]
    texts = [f"{u} likes number {i}" for i, u in enumerate(users)]
    store.add(
        [Memory(u, t, agent_id="a1", session_id=None) for u, t in zip(users, texts, strict=True)],
        embedder.embed(texts),
    )
    assert len({shard_of(u, 8) for u in users}) > 1
    store.close()

    # Reopened with another shard setting: the store keeps the layout it was created with.
    reopened = ChromaStore(StoreSettings(shards=3), tmp_path, embedder.dimension)
    for user, text in zip(users, texts, strict=True):
        listed = reopened.list_user(user, 10)
        assert [m.text for m in listed] == [text]
        assert listed[0].agent_id == "a1" and listed[0].session_id is None
        hits = reopened.search(user, embedder.embed([text])[0], 5)
        assert [h.memory.user_id for h in hits] == [user]


def test_cached_user_sees_new_writes_and_large_users_use_chroma(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    store = ChromaStore(
        StoreSettings(shards=2, cache_max_user_records=3), tmp_path, embedder.dimension
    )
    first = ["alpha fact", "beta fact"]
    store.add([Memory("small", t) for t in first], embedder.embed(first))
    assert store.count_user("small") == 2  # now cached
    store.add([Memory("small", "gamma fact")], embedder.embed(["gamma fact"]))
    hits = store.search("small", embedder.embed(["gamma"])[0], 1)
    assert hits[0].memory.text == "gamma fact"

    many = [f"fact {w}" for w in ("one", "two", "three", "four", "five")]
    store.add([Memory("big", t) for t in many], embedder.embed(many))
    hits = store.search("big", embedder.embed(["four"])[0], 2)
    assert hits[0].memory.text == "fact four" and len(hits) == 2
    assert store.count_user("big") == 5
    assert hits[0].score > hits[1].score


def test_cache_is_bounded(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    store = ChromaStore(StoreSettings(shards=2, cache_max_mb=0), tmp_path, embedder.dimension)
    for user in ("a", "b", "c"):
        store.add([Memory(user, f"{user} text")], embedder.embed([f"{user} text"]))
        store.search(user, embedder.embed(["text"])[0], 1)
    # With no byte budget only the most recent user stays cached; all stay searchable.
    assert store.cached_users() == ["c"]
    assert store.search("a", embedder.embed(["a text"])[0], 1)[0].memory.text == "a text"


def test_stream_assembler_collects_choice_zero_across_split_chunks() -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 1, "delta": {"content": "IGNORED"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo ✓"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"total_tokens": 3}},
    ]
    raw = b"".join(encode_event(e) for e in events) + b": keep-alive\n\n" + encode_event("[DONE]")
    assembler = ChatStreamAssembler()
    for i in range(0, len(raw), 7):  # bytes split at arbitrary points, even mid-UTF-8
        assembler.feed(raw[i : i + 7])
    assert assembler.text == "Hello ✓"
    assert assembler.complete and assembler.done and assembler.usage == {"total_tokens": 3}

    cut = ChatStreamAssembler()
    cut.feed(encode_event(events[0]))
    assert not cut.complete and cut.text == "Hel"
    crlf = ChatStreamAssembler()
    crlf.feed(b"data: " + json.dumps(events[3]).encode() + b"\r\n\r\n")
    assert crlf.finished
