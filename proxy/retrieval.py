"""Choosing which memories go into a request: query, ranking, threshold, budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from proxy.config import RetrievalSettings
from proxy.embedding import Embedder
from proxy.identity import DEFAULT_TENANT
from proxy.listing import Condition
from proxy.store import MemoryStore, ScoredMemory


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


def estimate_tokens(text: str) -> int:
    # ~4 characters per token for English; bullets and dates add a few.
    return math.ceil(len(text) / 4) + 6


class Retriever:
    def __init__(self, embedder: Embedder, store: MemoryStore, settings: RetrievalSettings):
        self._embedder = embedder
        self._store = store
        self._settings = settings

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
    ) -> list[ScoredMemory]:
        """Blocking: embeds and searches. Run it in a worker thread.

        The chat path uses the defaults; the search API passes its ``limit`` and ``filters``
        and skips the token budget, ranking the same way.
        """
        if not query:
            return []
        settings = self._settings
        top_k = settings.top_k if limit is None else limit
        vector = self._embedder.embed([query])[0]
        total = self._store.count_user(user_id, tenant=tenant)
        if total == 0:
            return []

        def search(k: int) -> list[ScoredMemory]:
            return self._store.search(
                user_id, vector, k, tenant=tenant, filters=filters,
                include_superseded=include_superseded,
            )

        if total <= settings.core_when_at_most:
            # Few memories: they are the user's profile. Similarity ranks them but does not
            # gate them (MiniLM scores "what stack am I using?" vs the stack fact ~0.1).
            candidates = search(total)
        else:
            hits = search(top_k)
            candidates = [h for h in hits if h.score >= settings.min_score]
        ranked = candidates[: max(top_k, 0) or len(candidates)]
        return self._within_budget(ranked) if budget else ranked

    def _within_budget(self, ranked: Sequence[ScoredMemory]) -> list[ScoredMemory]:
        chosen: list[ScoredMemory] = []
        used = 0
        for scored in ranked:
            cost = estimate_tokens(scored.memory.text)
            if used + cost > self._settings.max_tokens:
                continue
            chosen.append(scored)
            used += cost
        return chosen
