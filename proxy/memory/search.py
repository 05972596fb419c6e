"""Scoring one owner's memories against a query, for proxy/memory/store.py.

A cached owner is scored exactly, over its whole in-process index (proxy/memory/cache.py).
An owner too large to cache is searched in its Chroma collection: the nearest by vector,
widened so filters (and leaving superseded memories out) rarely leave fewer than asked;
hybrid candidates there are the ``pool`` nearest, keyword-scored among themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from proxy.memory.cache import UserIndex
from proxy.memory.chroma import memories_from, owner_where
from proxy.memory.keyword import Analyzer, KeywordIndex, asks_only
from proxy.memory.listing import Condition, matches
from proxy.memory.model import Candidates, Owner, ScoredMemory


def search_index(
    index: UserIndex, vector: np.ndarray, k: int, filters: Sequence[Condition],
    include_superseded: bool,
) -> list[ScoredMemory]:
    if not index.memories or k <= 0:
        return []
    scores = index.matrix @ vector.astype(np.float32)
    eligible = index.eligible(filters, include_superseded)
    if eligible is not None:
        scores = np.where(eligible, scores, -np.inf)
        k = min(k, int(eligible.sum()))
        if k <= 0:
            return []
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top])]
    return [ScoredMemory(index.memories[i], float(scores[i])) for i in top]


def index_candidates(
    index: UserIndex, vector: np.ndarray, query: str, filters: Sequence[Condition],
    include_superseded: bool,
) -> Candidates:
    with index.lock:
        memories = list(index.memories)
        vectors = index.matrix
        dense = vectors @ vector if len(memories) else np.zeros(0, dtype=np.float32)
        keyword = index.keyword.scores(query)
        created_at = index.created_at
        eligible = index.eligible(filters, include_superseded)
        asks = index.asks
    if eligible is None:
        eligible = np.ones(len(memories), dtype=bool)
    return Candidates(memories, dense, keyword, created_at, vectors, eligible, asks=asks)


def search_collection(
    collection: Any, owner: Owner, vector: np.ndarray, k: int, filters: Sequence[Condition],
    include_superseded: bool,
) -> list[ScoredMemory]:
    # Filters (and leaving superseded memories out) apply to a widened candidate set: exact
    # unless most of the nearest are filtered out, on owners too large to cache.
    wanted = k if include_superseded and not filters else k * 10
    got = collection.query(
        query_embeddings=[vector.astype(np.float32)],
        n_results=max(wanted, 1),
        where=owner_where(owner),
        include=["documents", "metadatas", "distances"],
    )
    hits = [
        ScoredMemory(memory, 1.0 - float(distance))
        for memory, distance in zip(memories_from(got, nested=True), got["distances"][0],
                                    strict=True)
        if (include_superseded or not memory.superseded_by) and matches(memory, filters)
    ]
    return hits[:k]


def collection_candidates(
    collection: Any, owner: Owner, vector: np.ndarray, query: str,
    filters: Sequence[Condition], include_superseded: bool, pool: int, analyzer: Analyzer,
) -> Candidates:
    got = collection.query(
        query_embeddings=[vector], n_results=max(pool, 1), where=owner_where(owner),
        include=["documents", "metadatas", "embeddings"],
    )
    memories = [
        m for m in memories_from(got, nested=True)
        if (include_superseded or not m.superseded_by) and matches(m, filters)
    ]
    wanted = {m.id for m in memories}
    rows = [i for i, memory_id in enumerate(got["ids"][0]) if memory_id in wanted]
    vectors = np.asarray(got["embeddings"][0], dtype=np.float32)[rows].reshape(
        len(rows), -1)
    keyword = KeywordIndex(analyzer)
    created = [m.created_at for m in memories]
    keyword.add([m.text for m in memories], created)
    return Candidates(
        memories, vectors @ vector if rows else np.zeros(0, dtype=np.float32),
        keyword.scores(query), np.asarray(created, dtype=np.float64), vectors,
        np.ones(len(memories), dtype=bool), complete=False,
        asks=np.array([asks_only(m.text) for m in memories], dtype=bool),
    )
