"""Hybrid ranking through the live Retriever and store (Chroma real on tmp_path).

The embedder here knows concepts, not spellings: "drive" and "Tesla" share a direction, an
unknown token such as a code name has none. So dense alone misses exact tokens, keyword
alone misses paraphrases, and the hybrid gets both.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from proxy.config import RetrievalSettings, StoreSettings
from proxy.memory.retrieval import Retriever
from proxy.memory.store import ChromaStore, Memory

CONCEPTS = {
    "car": ("drive", "car", "tesla", "vehicle", "commute", "model"),
    "food": ("eat", "food", "vegan", "dinner", "cook", "pasta", "lunch"),
    "work": ("work", "job", "engineer", "employer", "office", "company", "project"),
    "pet": ("dog", "cat", "pet", "tofu"),
}


class ConceptEmbedder:
    dimension = 64

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, 63] = 0.3  # every text shares a little: cosine never exactly 0
            for word in re.findall(r"\w+", text.lower()):
                for n, words in enumerate(CONCEPTS.values()):
                    if word in words:
                        out[row, n] += 1.0
                # Other words: a faint, spelling-specific direction.
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=2).digest())
                out[row, 8 + bucket % 50] += 0.05
            out[row] /= np.linalg.norm(out[row])
        return out


FACTS = [
    "User drives a Tesla Model 3 to the office",
    "User is vegan and cooks pasta for dinner",
    "User works as a data engineer at a logistics company",
    "User's dog is called Tofu",
    "User's work project is code-named Zebrafish",
    "User's employer moved the office to the harbour",
    "User commutes by car on Mondays",
]


@pytest.fixture
def store(tmp_path: Path) -> ChromaStore:
    embedder = ConceptEmbedder()
    store = ChromaStore(StoreSettings(shards=2), tmp_path, embedder.dimension)
    memories = [Memory("u", text, created_at=1_700_000_000 + i) for i, text in enumerate(FACTS)]
    store.add(memories, embedder.embed(FACTS))
    return store


def retriever(store: ChromaStore, **settings: object) -> Retriever:
    return Retriever(ConceptEmbedder(), store, RetrievalSettings(**settings))  # type: ignore[arg-type]


def texts(found: list) -> list[str]:
    return [hit.memory.text for hit in found]


def test_exact_token_dense_misses_is_found_by_the_hybrid(store: ChromaStore) -> None:
    query = "what was Zebrafish about again?"
    dense_top = store.search("u", ConceptEmbedder().embed([query])[0], 1)[0].memory.text
    assert dense_top != "User's work project is code-named Zebrafish"  # dense alone fails
    found = retriever(store, top_k=3, core_when_at_most=0).retrieve("u", query)
    assert texts(found)[0] == "User's work project is code-named Zebrafish"


def test_paraphrase_keyword_misses_is_found_by_the_hybrid(store: ChromaStore) -> None:
    query = "which vehicle do I have?"
    scored = store.candidates("u", ConceptEmbedder().embed([query])[0], query)
    tesla = FACTS.index("User drives a Tesla Model 3 to the office")
    assert scored.keyword[tesla] == 0  # keyword alone cannot find it
    found = retriever(store, top_k=2, core_when_at_most=0).retrieve("u", query)
    assert "User drives a Tesla Model 3 to the office" in texts(found)
    # Gating above the core: the food fact has neither a query term nor enough cosine.
    gated = retriever(store, top_k=8, core_when_at_most=0, min_score=0.5).retrieve("u", query)
    assert "User is vegan and cooks pasta for dinner" not in texts(gated)
    # Few memories (the core): all ranked, none gated.
    core = retriever(store, top_k=8, core_when_at_most=20, min_score=0.99).retrieve("u", query)
    assert len(core) == len(FACTS) and texts(core)[0] in texts(found)


def test_keyword_index_follows_update_supersede_and_delete(store: ChromaStore) -> None:
    embedder = ConceptEmbedder()
    r = retriever(store, top_k=3, core_when_at_most=0)
    dog = store.list_page("u", limit=100)[0]
    tofu = next(m for m in dog if "Tofu" in m.text)
    store.update(tofu.id, text="User's dog is called Miso", vector=embedder.embed(["Miso"])[0])
    assert "User's dog is called Miso" in texts(r.retrieve("u", "Miso"))
    assert all("Tofu" not in t for t in texts(r.retrieve("u", "Tofu")))

    car = next(m for m in dog if "Tesla" in m.text)
    new = Memory("u", "User drives a Volvo XC40 now")
    store.supersede(car.id, new, embedder.embed([new.text])[0])
    assert texts(r.retrieve("u", "Tesla"))[:1] != ["User drives a Tesla Model 3 to the office"]
    with_old = r.retrieve("u", "Tesla", include_superseded=True, budget=False)
    assert texts(with_old)[0] == "User drives a Tesla Model 3 to the office"

    store.delete(new.id)
    assert "User drives a Volvo XC40 now" not in texts(r.retrieve("u", "Volvo XC40"))
    # A cold load (cache cleared) indexes the same rows.
    store._cache.clear()
    assert texts(r.retrieve("u", "Miso"))[0] == "User's dog is called Miso"


def test_newer_memory_wins_a_tie_and_limit_filters_apply(tmp_path: Path) -> None:
    embedder = ConceptEmbedder()
    store = ChromaStore(StoreSettings(shards=2), tmp_path, embedder.dimension)
    same = ["User likes hiking", "User likes hiking"]
    store.add([Memory("u", same[0], id="old", created_at=1.0, session_id="a"),
               Memory("u", same[1], id="new", created_at=2.0, session_id="b")],
              embedder.embed(same))
    found = retriever(store, mmr_lambda=1.0).retrieve("u", "hiking")
    assert [hit.memory.id for hit in found] == ["new", "old"]
    from proxy.memory.listing import parse_filters

    only_a = retriever(store).retrieve("u", "hiking", filters=parse_filters({"session_id": "a"}))
    assert [hit.memory.id for hit in only_a] == ["old"]
    assert len(retriever(store).retrieve("u", "hiking", limit=1)) == 1


def test_users_too_large_to_cache_fall_back_to_nearest_rows_fused(tmp_path: Path) -> None:
    embedder = ConceptEmbedder()
    store = ChromaStore(StoreSettings(shards=2, cache_max_user_records=3), tmp_path,
                        embedder.dimension)
    store.add([Memory("u", t, created_at=float(i)) for i, t in enumerate(FACTS)],
              embedder.embed(FACTS))
    found = retriever(store, top_k=2, core_when_at_most=0).retrieve("u", "Zebrafish project")
    assert texts(found)[0] == "User's work project is code-named Zebrafish"
    assert store.cached_users() == []


def test_budget_uses_the_models_tokenizer_only_once_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from conftest import wait_until

    from proxy.memory.tokens import TokenCounter, estimate_tokens

    counter = TokenCounter()
    monkeypatch.delitem(sys.modules, "litellm", raising=False)
    text = "User drives a Tesla Model 3 to the office"
    assert counter.count(text, "gpt-4o") == estimate_tokens(text)  # litellm not imported
    calls: list[str] = []
    fake = types.SimpleNamespace(token_counter=lambda model, text: calls.append(model) or 3)
    monkeypatch.setitem(sys.modules, "litellm", fake)
    assert counter.count(text, "gpt-4o") == estimate_tokens(text)  # warming, off this call
    wait_until(lambda: counter.uses_tokenizer("gpt-4o"), timeout=5)
    assert counter.count(text, "gpt-4o") == 3 + TokenCounter.LINE_OVERHEAD
    assert counter.count(text, None) == estimate_tokens(text)
