"""A memory that only asks rarely holds the answer: it ranks below a statement on the topic.

Through the memory API (the search ranks as the chat path does), and the per-memory flag kept
in step with the cached rows as memories are added, changed and deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import HashingEmbedder
from servers import ThreadedServer
from test_session_neighbours import search, with_retrieval

from proxy.config import Settings, StoreSettings
from proxy.memory.keyword import asks_only
from proxy.memory.store import ChromaStore, Memory

TURNS = [
    "Any plans for the weekend?",
    "Weekend plans: hiking in the Alps with the kids",
    *(f"unrelated chat number {n}" for n in range(12)),
]


def test_a_statement_outranks_a_question_on_the_same_topic(
    start_proxy: Callable[..., ThreadedServer], settings: Settings, tmp_path: Path
) -> None:
    results = {}
    for penalty in (0.0, 0.3):
        # Every memory ranked, none gated: the fillers are the scale's zero.
        proxy = start_proxy(with_retrieval(settings, tmp_path / f"data-{penalty}",
                                           question_penalty=penalty, mmr_lambda=1.0,
                                           core_when_at_most=50))
        with httpx.Client(base_url=proxy.base_url, timeout=20) as client:
            for n, text in enumerate(TURNS):
                response = client.post("/v1/memories", json={
                    "user_id": "u", "text": text, "infer": False, "created_at": 1_000.0 + n,
                })
                assert response.status_code == 201, response.text
            results[penalty] = search(client, "weekend plans", limit=2)
    assert results[0.0] == [TURNS[0], TURNS[1]]
    assert results[0.3] == [TURNS[1], TURNS[0]]


def test_the_question_flags_follow_adds_updates_and_deletes(
    tmp_path: Path, hashing_embedder: HashingEmbedder
) -> None:
    embedder = hashing_embedder
    store = ChromaStore(StoreSettings(shards=2), tmp_path, embedder.dimension)

    def flags() -> list[tuple[str, bool]]:
        vector = embedder.embed(["anything"])[0]
        found = store.candidates("u", vector, "anything")
        assert found.asks is not None
        return [(m.text, bool(a)) for m, a in zip(found.memories, found.asks, strict=True)]

    def expected() -> list[tuple[str, bool]]:
        return [(m.text, asks_only(m.text)) for m in store.all_memories("u")]

    first = [Memory("u", t, created_at=float(n)) for n, t in enumerate(["Any news?", "I am fine"])]
    store.add(first, embedder.embed([m.text for m in first]))
    assert sorted(flags()) == sorted(expected()) == [("Any news?", True), ("I am fine", False)]
    more = Memory("u", "Who called?", created_at=5.0)
    store.add([more], embedder.embed([more.text]))
    store.update(first[1].id, text="How are you?",
                 vector=embedder.embed(["How are you?"])[0])
    store.delete(first[0].id)
    assert sorted(flags()) == sorted(expected()) == [("How are you?", True),
                                                     ("Who called?", True)]
    store._cache.clear()  # a cold load flags the same rows
    assert sorted(flags()) == sorted(expected())
