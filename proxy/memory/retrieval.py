"""Choosing which memories go into a request: query, hybrid ranking, gating, budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from proxy.config import RetrievalSettings
from proxy.gateway.identity import DEFAULT_TENANT
from proxy.memory.embedding import Embedder
from proxy.memory.listing import Condition
from proxy.memory.model import Memory
from proxy.memory.ranking import Neighbours, RankingParams, rank_memories
from proxy.memory.store import MemoryStore, ScoredMemory
from proxy.memory.tokens import TokenCounter, estimate_tokens

__all__ = ["Retriever", "build_query", "estimate_tokens", "message_text", "ranking_params"]


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string or an array of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(p for p in parts if p)
    return ""


def build_query(messages: Sequence[Any], short_query_chars: int) -> str:
    """The last user message; with the assistant turn before it when it is too short alone."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        text = message_text(message.get("content")).strip()
        if len(text) >= short_query_chars:
            return text[-2000:]
        for j in range(i - 1, -1, -1):
            previous = messages[j]
            if isinstance(previous, dict) and previous.get("role") == "assistant":
                context = message_text(previous.get("content")).strip()[-300:]
                return f"{context}\n{text}".strip()
        return text
    return ""


# Rows searched on each side of a memory for the turns said just before and after it: the
# memories of one session are stored close together, nearly in order.
NEIGHBOUR_WINDOW = 8


def session_neighbours(memories: Sequence[Memory], created_at: np.ndarray) -> Neighbours:
    """``neighbours(i)``: the memories of i's session said just before and just after it."""

    def neighbours(i: int) -> list[int]:
        session = memories[i].session_id
        if session is None:
            return []
        at = created_at[i]
        before = after = None
        for j in range(max(0, i - NEIGHBOUR_WINDOW), min(len(memories), i + NEIGHBOUR_WINDOW + 1)):
            if j == i or memories[j].session_id != session:
                continue
            if created_at[j] < at or (created_at[j] == at and j < i):
                if before is None or created_at[j] >= created_at[before]:
                    before = j
            elif after is None or created_at[j] < created_at[after]:
                after = j
        return [j for j in (before, after) if j is not None]

    return neighbours


def ranking_params(settings: RetrievalSettings, include_superseded: bool) -> RankingParams:
    # RankingParams mirrors the fusion knobs of RetrievalSettings, field for field.
    knobs = {f.name: getattr(settings, f.name) for f in fields(RankingParams)
             if f.name != "include_superseded"}
    return RankingParams(**knobs, include_superseded=include_superseded)


class Retriever:
    """Hybrid retrieval: dense + BM25 fused (proxy/memory/ranking.py), then the token budget.

    Gating: fused scores are min-max normalised per query — relative, so no fixed threshold
    on them means "irrelevant" (the weakest memory always scores 0). Users with at most
    ``core_when_at_most`` memories get all of them ranked, none gated: they are the user's
    profile. Above that, a memory must show absolute evidence to be a candidate: a query
    term (BM25 > 0) or a cosine of at least ``min_score``.
    """

    def __init__(
        self, embedder: Embedder, store: MemoryStore, settings: RetrievalSettings,
        tokens: TokenCounter | None = None,
    ):
        self._embedder = embedder
        self._store = store
        self._settings = settings
        self.tokens = tokens or TokenCounter()

    def retrieve(
        self,
        user_id: str,
        query: str,
        *,
        tenant: str = DEFAULT_TENANT,
        limit: int | None = None,
        filters: Sequence[Condition] = (),
        include_superseded: bool = False,
        budget: bool = True,
        model: str | None = None,
    ) -> list[ScoredMemory]:
        """Blocking: embeds and searches. Run it in a worker thread.

        The chat path uses the defaults (and its ``model`` for counting tokens); the search
        API passes its ``limit`` and ``filters`` and skips the token budget, ranking the
        same way. ``score`` is the fused score (0–1, relative to the user's other memories:
        the weakest candidate scores 0); ``similarity`` the absolute cosine to the query.
        """
        settings = self._settings
        top_k = settings.top_k if limit is None else limit
        if not query or top_k <= 0:
            return []
        vector = self._embedder.embed([query])[0]
        found = self._store.candidates(
            user_id, vector, query, tenant=tenant, filters=filters,
            include_superseded=include_superseded,
            pool=max(settings.large_user_pool, settings.mmr_pool * top_k),
        )
        eligible = np.asarray(found.eligible, dtype=bool)
        available = int(eligible.sum())
        if available == 0:
            return []
        if available > settings.core_when_at_most:
            eligible = eligible & ((found.dense >= settings.min_score) | (found.keyword > 0))
            if not eligible.any():
                return []
        ranked = rank_memories(
            found.dense, found.keyword, top_k,
            ranking_params(settings, include_superseded),
            created_at=found.created_at, vectors=found.vectors, eligible=eligible,
            # Rows in store order only for a cached owner (a large owner's are the nearest).
            neighbours=session_neighbours(found.memories, found.created_at)
            if found.complete else None,
        )
        chosen = [
            ScoredMemory(found.memories[int(i)], float(score), float(found.dense[int(i)]))
            for i, score in zip(ranked.indices, ranked.scores, strict=True)
        ]
        return self._within_budget(chosen, model) if budget else chosen

    def _within_budget(
        self, ranked: Sequence[ScoredMemory], model: str | None
    ) -> list[ScoredMemory]:
        chosen: list[ScoredMemory] = []
        used = 0
        for scored in ranked:
            cost = self.tokens.count(scored.memory.text, model)
            if used + cost > self._settings.max_tokens:
                continue
            chosen.append(scored)
            used += cost
        return chosen
