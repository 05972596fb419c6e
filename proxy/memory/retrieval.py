"""Choosing which memories go into a request: query, hybrid ranking, gating, budget.

``Retriever.retrieve`` is what a chat request (and the search API) gets; ``explain`` runs the
very same steps and also says why each candidate was or was not chosen (the memory API's
``POST /v1/memories/explain``). With the budget applied (the chat path) each choice is
recorded in a bounded ring of recent injections (proxy/memory/recent.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from proxy.config import RetrievalSettings
from proxy.gateway.identity import DEFAULT_TENANT
from proxy.memory.embedding import Embedder
from proxy.memory.listing import Condition
from proxy.memory.model import Candidates, Memory
from proxy.memory.ranking import (
    Neighbours,
    Ranked,
    RankingParams,
    date_proximity,
    rank_memories,
)
from proxy.memory.recent import InjectedMemory, InjectionRecord, RecentInjections
from proxy.memory.store import MemoryStore, ScoredMemory
from proxy.memory.tokens import TokenCounter, estimate_tokens
from proxy.memory.when import Clock, TimeAsked, read_time

__all__ = [
    "CandidateTrace", "Explanation", "Retriever", "build_query", "estimate_tokens",
    "message_text", "ranking_params",
]


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


Outcome = Literal["injected", "over_budget", "near_duplicate", "below_top_k", "gated"]


@dataclass
class CandidateTrace:
    """One of the user's memories as retrieval saw it for one query."""

    memory: Memory
    dense: float  # cosine to the query (the search API's ``score``)
    keyword: float  # BM25 (0: no query term)
    fused: float | None  # the rank score (the search API's ``rank_score``); None: gated out
    outcome: Outcome
    reason: str
    tokens: int | None = None  # its cost against the budget, when the budget looked at it


@dataclass
class Explanation:
    query: str
    chosen: list[ScoredMemory]  # exactly what a chat request would inject, in order
    candidates: list[CandidateTrace]  # chosen first, then by rank score, then the gated out
    memories: int  # the user's memories looked at (superseded and filtered ones left out)
    gating: bool  # above core_when_at_most: a memory needs a query term or min_score
    used_tokens: int
    max_tokens: int
    top_k: int
    exact_tokens: bool  # the model's tokenizer counted (else the ~4 chars a token estimate)
    complete: bool  # False: a user too large to cache, only the nearest rows were fused
    time_asked: TimeAsked  # the days the question asks about


@dataclass
class _Ranking:
    found: Candidates
    pool: np.ndarray  # rows retrieval may return (filters, superseded)
    eligible: np.ndarray  # the pool after gating
    gating: bool
    ranked: Ranked
    top_k: int
    asked: TimeAsked  # the days the query asks about
    # Milliseconds per step: the query embedding, the store's candidates (a cold owner's
    # load included), the ranking. Recorded with the injection: why a retrieval was slow.
    phases: dict[str, float]

    def chosen(self) -> list[ScoredMemory]:
        """The ranked top_k (before the budget), best first."""
        found, ranked = self.found, self.ranked
        return [ScoredMemory(found.memories[int(i)], float(score), float(found.dense[int(i)]))
                for i, score in zip(ranked.indices, ranked.scores, strict=True)]


class Activity:
    """How many retrievals run now (thread-safe): embedded Chroma's writes rest while any does
    (proxy/memory/chroma.py ``WritePacer``)."""

    def __init__(self) -> None:
        self._running = 0
        self._lock = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def busy(self) -> bool:
        return self._running > 0


class Retriever:
    """Hybrid retrieval: dense + BM25 fused (proxy/memory/ranking.py), then the token budget.

    Gating: fused scores are min-max normalised per query — relative, so no fixed threshold
    on them means "irrelevant" (the weakest memory always scores 0). Users with at most
    ``core_when_at_most`` memories get all of them ranked, none gated: they are the user's
    profile. Above that, a memory must show absolute evidence to be a candidate: a query
    term (BM25 > 0), a cosine of at least ``min_score``, or a date within the days the
    question asks about (proxy/memory/when.py: "on 5 Jan 2024", "last week").
    """

    def __init__(
        self, embedder: Embedder, store: MemoryStore, settings: RetrievalSettings,
        tokens: TokenCounter | None = None, recent: RecentInjections | None = None,
    ):
        self._embedder = embedder
        self._store = store
        self._settings = settings
        self.tokens = tokens or TokenCounter()
        self.recent = recent or RecentInjections(
            settings.recent_injections, settings.recent_injections_text
        )
        self.activity = Activity()

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
        phases: dict[str, float] | None = None,
        asked: TimeAsked | None = None,
    ) -> list[ScoredMemory]:
        """Blocking: embeds and searches. Run it in a worker thread.

        The chat path uses the defaults (and its ``model`` for counting tokens); the search
        API passes its ``limit`` and ``filters`` and skips the token budget, ranking the
        same way. ``score`` is the fused score (0–1, relative to the user's other memories:
        the weakest candidate scores 0); ``similarity`` the absolute cosine to the query.
        With the budget (a chat request) for a user with memories, the choice is recorded in
        ``recent`` (the ring of recent injections). ``phases``, when given, receives the
        milliseconds each step took. ``asked``: the times the query asks about, when the
        caller has read them already (``read_time``; else read against today, in
        ``retrieval.timezone``).
        """
        started = time.perf_counter()
        with self.activity.running():
            ranking = self._rank(user_id, query, tenant, limit, filters, include_superseded,
                                 phases, asked)
        chosen = [] if ranking is None else ranking.chosen()
        if not budget:
            return chosen
        decisions = self._budget(chosen, model)
        kept = [scored for scored, _, within in decisions if within]
        if ranking is not None:  # a user with memories (not a new user, not the warm-up)
            self._record(user_id, tenant, model, query, decisions, ranking, started)
        return kept

    def explain(
        self, user_id: str, query: str, *, tenant: str = DEFAULT_TENANT,
        model: str | None = None, max_candidates: int = 50,
    ) -> Explanation:
        """What ``retrieve`` would choose for a chat request, and why (nothing is recorded).

        The chosen memories come from the same ranking call as ``retrieve``'s; every other
        candidate's rank score from the same ranking over the whole pool (no MMR: it only
        reorders), so a score shown here is the one ``POST /v1/memories/search`` reports.
        """
        settings = self._settings
        ranking = self._rank(user_id, query, DEFAULT_TENANT if tenant is None else tenant,
                             None, (), False)
        exact = bool(model) and self.tokens.uses_tokenizer(model or "")
        if ranking is None:
            return Explanation(query, [], [], 0, False, 0, settings.max_tokens, settings.top_k,
                               exact, True, self.read_time(query))
        chosen = ranking.chosen()
        decisions = self._budget(chosen, model)
        kept = [scored for scored, _, within in decisions if within]
        used = sum(cost for _, cost, within in decisions if within)
        traces = self._traces(ranking, decisions, used)[: max(max_candidates, len(chosen))]
        found = ranking.found
        return Explanation(
            query, kept, traces, int(ranking.pool.sum()), ranking.gating, used,
            settings.max_tokens, ranking.top_k, exact, found.complete, ranking.asked,
        )

    def clock(self) -> Clock:
        """Now, in the days of ``retrieval.timezone``."""
        return Clock.at(self._settings.timezone)

    def read_time(self, query: str) -> TimeAsked:
        return read_time(query, self.clock())

    # -- the steps ------------------------------------------------------------------------
    def _rank(
        self, user_id: str, query: str, tenant: str, limit: int | None,
        filters: Sequence[Condition], include_superseded: bool,
        phases: dict[str, float] | None = None, asked: TimeAsked | None = None,
    ) -> _Ranking | None:
        """``phases`` (filled as the steps run) gets the milliseconds of each."""
        settings = self._settings
        phases = {} if phases is None else phases
        top_k = settings.top_k if limit is None else limit
        if not query or top_k <= 0:
            return None
        began = time.perf_counter()
        vector = self._embedder.embed([query])[0]
        embedded = time.perf_counter()
        found = self._store.candidates(
            user_id, vector, query, tenant=tenant, filters=filters,
            include_superseded=include_superseded,
            pool=max(settings.large_user_pool, settings.mmr_pool * top_k),
        )
        searched = time.perf_counter()
        phases.update(embed=(embedded - began) * 1000, candidates=(searched - embedded) * 1000)
        pool = np.asarray(found.eligible, dtype=bool)
        available = int(pool.sum())
        if available == 0:
            return None
        eligible = pool
        gating = available > settings.core_when_at_most
        if asked is None:
            asked = self.read_time(query)
        if gating:
            evidence = (found.dense >= settings.min_score) | (found.keyword > 0)
            if asked.spans:  # a memory of the very days asked about is evidence too
                evidence |= date_proximity(found.created_at, asked.days(), 0, asked.offset) > 0
            eligible = pool & evidence
        ranked = self._ranked(found, eligible, top_k, include_superseded, asked, mmr=True)
        phases["rank"] = (time.perf_counter() - searched) * 1000
        return _Ranking(found, pool, eligible, gating, ranked, top_k, asked, phases)

    def _ranked(
        self, found: Candidates, eligible: np.ndarray, k: int, include_superseded: bool,
        asked: TimeAsked, *, mmr: bool,
    ) -> Ranked:
        if not eligible.any():
            return Ranked(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        return rank_memories(
            found.dense, found.keyword, k,
            ranking_params(self._settings, include_superseded),
            created_at=found.created_at, vectors=found.vectors if mmr else None,
            eligible=eligible,
            # Rows in store order only for a cached owner (a large owner's are the nearest).
            neighbours=session_neighbours(found.memories, found.created_at)
            if found.complete else None,
            days=asked.days(), dates_first=asked.only_time, days_offset=asked.offset,
            asks=found.asks,
        )

    def _budget(
        self, ranked: Sequence[ScoredMemory], model: str | None
    ) -> list[tuple[ScoredMemory, int, bool]]:
        """Each ranked memory, its token cost and whether it fits the budget (in order)."""
        decisions = []
        used = 0
        for scored in ranked:
            cost = self.tokens.count(scored.memory.text, model)
            within = used + cost <= self._settings.max_tokens
            if within:
                used += cost
            decisions.append((scored, cost, within))
        return decisions

    def _record(
        self, user_id: str, tenant: str, model: str | None, query: str,
        decisions: Sequence[tuple[ScoredMemory, int, bool]], ranking: _Ranking,
        started: float,
    ) -> None:
        recent = self.recent
        if recent.size <= 0:
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        injected = tuple(
            InjectedMemory(s.memory.id, s.similarity or 0.0, s.score, cost)
            for s, cost, within in decisions if within
        )
        recent.record(InjectionRecord(
            at=recent.now(), tenant=tenant, user_id=user_id, model=model, memories=injected,
            used_tokens=sum(m.tokens for m in injected), max_tokens=self._settings.max_tokens,
            candidates=int(ranking.eligible.sum()),
            duration_ms=elapsed_ms, late=elapsed_ms > self._settings.timeout_ms,
            phases_ms=dict(ranking.phases),
            query=query if recent.keep_text else None,
        ))

    def _traces(
        self, ranking: _Ranking, decisions: Sequence[tuple[ScoredMemory, int, bool]],
        used: int,
    ) -> list[CandidateTrace]:
        found, settings = ranking.found, self._settings
        whole = self._ranked(found, ranking.eligible, int(ranking.eligible.sum()), False,
                             ranking.asked, mmr=False)
        fused = {int(i): float(s) for i, s in zip(whole.indices, whole.scores, strict=True)}
        position = {int(i): p for p, i in enumerate(whole.indices)}
        chosen = [int(i) for i in ranking.ranked.indices]
        chosen_set = set(chosen)

        def trace(i: int, outcome: Outcome, reason: str, tokens: int | None = None
                  ) -> CandidateTrace:
            return CandidateTrace(found.memories[i], float(found.dense[i]),
                                  float(found.keyword[i]), fused.get(i), outcome, reason, tokens)

        traces = []
        for i, (_, cost, within) in zip(chosen, decisions, strict=True):
            if within:
                traces.append(trace(i, "injected", f"rank {position[i] + 1}; {cost} tokens",
                                    cost))
            else:
                traces.append(trace(i, "over_budget", f"{cost} tokens would pass max_tokens "
                                    f"{settings.max_tokens} ({used} used)", cost))
        for i in (int(i) for i in whole.indices):
            if i in chosen_set:
                continue
            if position[i] < ranking.top_k:
                twin = max(chosen, key=lambda j: float(found.vectors[j] @ found.vectors[i]),
                           default=None)
                cosine = float(found.vectors[twin] @ found.vectors[i]) if twin is not None else 0
                traces.append(trace(i, "near_duplicate", f"rank {position[i] + 1}, pushed out "
                                    f"by MMR: cosine {cosine:.3f} to a chosen memory"))
            else:
                traces.append(trace(i, "below_top_k",
                                    f"rank {position[i] + 1}; top_k is {ranking.top_k}"))
        gated = np.flatnonzero(ranking.pool & ~ranking.eligible)
        for i in sorted((int(i) for i in gated), key=lambda i: -float(found.dense[i])):
            traces.append(trace(i, "gated", f"cosine {float(found.dense[i]):.3f} < min_score "
                                f"{settings.min_score}, no query term, not of a day asked "
                                f"about (the user has more "
                                f"than core_when_at_most={settings.core_when_at_most})"))
        return traces
