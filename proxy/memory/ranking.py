"""Ranking one user's memories from a dense and a keyword score per memory.

Pure functions over arrays aligned with the user's memories (row i of every array is memory
i), so the retriever can call them on its cached index and tests on hand-made numbers:

    eligible = eligible_mask(superseded_by)              # superseded memories out
    fused = fuse(dense, keyword, params, eligible)       # min-max weighted sum (or RRF)
    fused = lift_dated(fused, created_at, days, ...)     # the days a question asks about
    fused = lift_neighbours(fused, neighbours, w, ...)   # a strong hit lifts its session
    fused = damp_questions(fused, asks, penalty)         # a memory that only asks, less
    order = order_by_score(fused, created_at, eligible)  # newer first among near-ties
    top = mmr_select(order[:pool], fused, vectors, k)    # near-duplicates pushed down

``rank_memories`` does all seven. Min-max fusion beat reciprocal rank fusion by 4–9 points of
recall@10 on a public long-conversation benchmark (docs/design.md); RRF stays as an option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np


@dataclass(frozen=True)
class RankingParams:
    fusion: Literal["weighted", "rrf"] = "weighted"
    dense_weight: float = 0.5
    keyword_weight: float = 0.5
    rrf_k: int = 60
    # Scores closer than this (on the 0–1 fused scale) count as tied; the newer memory wins.
    tie_tolerance: float = 0.005
    # MMR: relevance weight (1.0 turns the pass off); only similarity above the floor counts
    # as redundancy, so related-but-different facts are not pushed apart.
    mmr_lambda: float = 0.7
    mmr_similarity_floor: float = 0.8
    mmr_pool: int = 3  # candidates considered: mmr_pool * k
    # A memory said right before or after a strong hit in the same session gains this share
    # of the hit's score (the answer often spans two turns); 0 turns it off.
    neighbour_weight: float = 0.2
    # A question that asks about a time ("on 5 Jan 2024", "last week") lifts the memories of
    # those days by this share, and those of the days around them less, to nothing beyond
    # date_window_days; 0: off.
    date_weight: float = 0.2
    date_window_days: int = 2
    # A memory that only asks ("Any plans for the weekend?") rarely holds an answer: it keeps
    # 1 − this share of its score, after it has lifted its neighbours (the reply); 0: off.
    question_penalty: float = 0.3
    include_superseded: bool = False


class Ranked(NamedTuple):
    indices: np.ndarray  # memory positions, best first
    scores: np.ndarray  # their fused scores


def eligible_mask(
    superseded_by: Sequence[str | None], include_superseded: bool = False
) -> np.ndarray:
    """True for memories retrieval may return: not superseded, unless asked for."""
    if include_superseded:
        return np.ones(len(superseded_by), dtype=bool)
    return np.array([not marker for marker in superseded_by], dtype=bool)


def minmax(scores: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Scale to 0–1 over the eligible entries; a constant input becomes all zeros."""
    scores = np.asarray(scores, dtype=np.float32)
    out = np.zeros_like(scores)
    pool = scores if eligible is None else scores[eligible]
    if pool.size == 0:
        return out
    low, high = float(pool.min()), float(pool.max())
    if high - low <= 1e-12:
        return out
    out[:] = (scores - low) / (high - low)
    if eligible is not None:
        out[~eligible] = 0.0
    return out


def weighted_fusion(
    dense: np.ndarray,
    keyword: np.ndarray,
    dense_weight: float = 0.5,
    keyword_weight: float = 0.5,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted sum of the min-max normalised scores, divided by the weights' sum (0–1)."""
    total = dense_weight + keyword_weight
    if total <= 0:
        raise ValueError("fusion weights must not both be zero")
    fused = dense_weight * minmax(dense, eligible) + keyword_weight * minmax(keyword, eligible)
    return fused / total


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each entry by descending score (ties share no rank: stable order)."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def rrf_fusion(
    dense: np.ndarray,
    keyword: np.ndarray,
    k: int = 60,
    dense_weight: float = 1.0,
    keyword_weight: float = 1.0,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Reciprocal rank fusion; a memory no keyword matched gets no keyword share."""
    dense = np.asarray(dense, dtype=np.float64)
    keyword = np.asarray(keyword, dtype=np.float64)
    if eligible is not None:
        dense = np.where(eligible, dense, -np.inf)
        keyword = np.where(eligible, keyword, 0.0)
    fused = dense_weight / (k + _ranks(dense))
    fused += np.where(keyword > 0, keyword_weight / (k + _ranks(keyword)), 0.0)
    if eligible is not None:
        fused[~eligible] = 0.0
    return fused.astype(np.float32)


def fuse(
    dense: np.ndarray,
    keyword: np.ndarray,
    params: RankingParams,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    if params.fusion == "rrf":
        fused = rrf_fusion(
            dense, keyword, params.rrf_k, params.dense_weight, params.keyword_weight, eligible
        )
        # Onto the 0–1 scale the tie tolerance and MMR expect.
        return minmax(fused, eligible)
    return weighted_fusion(
        dense, keyword, params.dense_weight, params.keyword_weight, eligible
    )


def order_by_score(
    scores: np.ndarray,
    created_at: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    tie_tolerance: float = 0.005,
    limit: int | None = None,
) -> np.ndarray:
    """Eligible positions by descending score; within ``tie_tolerance``, newer first.

    ``limit``: only the first ``limit`` of that order (the same ones, in the same order),
    without sorting every memory: 10k memories cost a full sort each query.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positions = np.arange(len(scores)) if eligible is None else np.flatnonzero(eligible)
    if positions.size == 0:
        return positions
    wanted = scores[positions]
    if created_at is None or tie_tolerance <= 0:
        if limit is not None and limit < positions.size:
            # Every entry scoring at least the limit-th best, in position order: a stable
            # sort of them orders ties as the full sort would.
            cut = -np.partition(-wanted, limit - 1)[limit - 1]
            keep = np.flatnonzero(wanted >= cut)
            positions, wanted = positions[keep], wanted[keep]
        return positions[np.argsort(-wanted, kind="stable")][:limit]
    # Compare scores at the tolerance's resolution, then by time.
    bucket = np.round(wanted / tie_tolerance)
    if limit is not None and limit < positions.size:
        cut = -np.partition(-bucket, limit - 1)[limit - 1]
        keep = np.flatnonzero(bucket >= cut)  # whole buckets: their time order decides
        positions, bucket = positions[keep], bucket[keep]
    newest = -np.asarray(created_at, dtype=np.float64)[positions]
    return positions[np.lexsort((newest, -bucket))][:limit]


def date_proximity(
    created_at: np.ndarray, days: Sequence[int | tuple[int, int]], window: int,
    offset: float = 0.0,
) -> np.ndarray:
    """1 for a memory dated on one of ``days`` (days since 1970-01-01 in a zone ``offset``
    seconds ahead of UTC; a day, or a span of days ``(first, last)``), falling linearly to 0
    at ``window + 1`` days outside it; the nearest named day counts."""
    created_day = np.floor((np.asarray(created_at, dtype=np.float64) + offset) / 86_400.0)
    near = np.zeros(created_day.shape, dtype=np.float32)
    for day in days:
        first, last = day if isinstance(day, tuple) else (day, day)
        distance = np.maximum(first - created_day, created_day - last).clip(0, None)
        near = np.maximum(near, np.clip(1.0 - distance / (window + 1), 0.0, 1.0))
    return near


def lift_dated(
    scores: np.ndarray,
    created_at: np.ndarray,
    days: Sequence[int | tuple[int, int]],
    weight: float,
    window: int,
    eligible: np.ndarray | None = None,
    offset: float = 0.0,
) -> np.ndarray:
    """``scores`` plus ``weight`` times each memory's ``date_proximity``, rescaled onto 0–1;
    unchanged when no day is named.

    The keyword side matches only the very day's terms ("5", "jan", "2024" also match every
    other "5" and every day of January); what is said about a day is often said the day
    after ("yesterday …") or before ("tomorrow …").
    """
    scores = np.asarray(scores, dtype=np.float32)
    if weight <= 0 or not days or scores.size == 0:
        return scores
    lift = weight * date_proximity(created_at, days, window, offset)
    if eligible is not None:
        lift[~eligible] = 0.0
    return (scores + lift) / (1.0 + weight)


# "What did I do last week?": the week's memories before any other. With this weight a
# memory of the span scores at least 2/3 before the rescale, one beyond the window at most 1/3.
DATES_FIRST_WEIGHT = 2.0

Neighbours = Callable[[int], Sequence[int]]
# The best this many memories lift their neighbours: a constant, not a multiple of k, so the
# chat's top_k and a search's limit rank the same way.
STRONG_HITS = 32


def lift_neighbours(
    scores: np.ndarray,
    neighbours: Neighbours,
    weight: float,
    strong: int,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Each of the ``strong`` best memories lifts its ``neighbours(i)`` by ``weight`` times
    its own score (a neighbour keeps the largest lift); rescaled onto 0–1 again.

    Only the strong few are looked at, so the cost does not grow with the user's memories.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if weight <= 0 or strong <= 0 or scores.size == 0:
        return scores
    strong = min(strong, scores.size)
    top = np.argpartition(-scores, strong - 1)[:strong]
    lift = np.zeros_like(scores)
    for i in top:
        if scores[i] <= 0:
            continue
        for j in neighbours(int(i)):
            lift[j] = max(lift[j], weight * scores[i])
    if eligible is not None:
        lift[~eligible] = 0.0
    return (scores + lift) / (1.0 + weight)


def damp_questions(scores: np.ndarray, asks: np.ndarray, penalty: float) -> np.ndarray:
    """Scores of the memories that only ask (``asks``) times ``1 − penalty``."""
    scores = np.asarray(scores, dtype=np.float32)
    if penalty <= 0:
        return scores
    return np.where(asks, scores * (1.0 - penalty), scores).astype(np.float32)


def mmr_select(
    candidates: np.ndarray,
    scores: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lambda_: float = 0.7,
    similarity_floor: float = 0.6,
) -> np.ndarray:
    """Reorder ``candidates`` (best first) so near-duplicates do not fill the first ``k``.

    Greedy maximal marginal relevance: each step takes the candidate maximising
    ``λ·relevance − (1−λ)·redundancy``, where relevance is its score relative to the best
    candidate's and redundancy is its highest cosine similarity to one already taken,
    rescaled so that similarity at or below ``similarity_floor`` counts as none. Returns
    all candidates: the chosen ``k`` first, the rest in their original order after them.
    """
    candidates = np.asarray(candidates)
    if lambda_ >= 1.0 or len(candidates) <= 1 or k <= 1:
        return candidates
    relevance = np.asarray(scores, dtype=np.float64)[candidates]
    top = relevance.max()
    relevance = relevance / top if top > 0 else relevance
    pool = np.asarray(vectors, dtype=np.float32)[candidates]
    similarity = np.clip((pool @ pool.T - similarity_floor) / (1.0 - similarity_floor), 0, None)
    chosen = [0]
    redundancy = similarity[0].astype(np.float64)
    left = np.ones(len(candidates), dtype=bool)
    left[0] = False
    while len(chosen) < min(k, len(candidates)):
        gain = np.where(left, lambda_ * relevance - (1.0 - lambda_) * redundancy, -np.inf)
        best = int(np.argmax(gain))
        chosen.append(best)
        left[best] = False
        redundancy = np.maximum(redundancy, similarity[best])
    rest = np.flatnonzero(left)
    return candidates[np.concatenate([np.asarray(chosen), rest])]


def rank_memories(
    dense: np.ndarray,
    keyword: np.ndarray,
    k: int,
    params: RankingParams | None = None,
    *,
    created_at: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    superseded_by: Sequence[str | None] | None = None,
    eligible: np.ndarray | None = None,
    neighbours: Neighbours | None = None,
    days: Sequence[int | tuple[int, int]] = (),
    dates_first: bool = False,
    days_offset: float = 0.0,
    asks: np.ndarray | None = None,
) -> Ranked:
    """The best ``k`` memories: fused, memories of the ``days`` the question names and
    neighbours of strong hits lifted, superseded ones out, recency on ties, then MMR.

    ``dense`` is the cosine similarity of each memory to the query, ``keyword`` its BM25
    score; ``vectors`` (unit rows) enable the MMR pass; ``neighbours(i)`` (the memories said
    next to memory i) enables the lift; ``days`` (days or spans of days the question asks
    about, proxy/memory/when.py; in a zone ``days_offset`` seconds ahead of UTC) with
    ``created_at`` the date lift, by ``date_weight`` or, with
    ``dates_first`` (a question with nothing but its time to go on), so strongly that a memory
    of those days outranks every memory beyond the window; ``asks`` (True: the memory only
    asks) the question damping. ``eligible`` (a boolean mask, e.g. the caller's filters)
    narrows the pool further; normalisation runs over the pool only.
    """
    params = params or RankingParams()
    if superseded_by is not None:
        mask = eligible_mask(superseded_by, params.include_superseded)
        eligible = mask if eligible is None else mask & eligible
    fused = fuse(dense, keyword, params, eligible)
    if days and created_at is not None:
        weight = DATES_FIRST_WEIGHT if dates_first and params.date_weight > 0 \
            else params.date_weight
        fused = lift_dated(fused, created_at, days, weight, params.date_window_days, eligible,
                           days_offset)
    if neighbours is not None and params.neighbour_weight > 0:
        fused = lift_neighbours(
            fused, neighbours, params.neighbour_weight, STRONG_HITS, eligible
        )
    if asks is not None and params.question_penalty > 0:
        fused = damp_questions(fused, asks, params.question_penalty)
    mmr = vectors is not None and params.mmr_lambda < 1.0
    order = order_by_score(fused, created_at, eligible, params.tie_tolerance,
                           limit=max(k, params.mmr_pool * k) if mmr else k)
    if vectors is not None and mmr:
        pool = order[: max(k, params.mmr_pool * k)]
        order = mmr_select(
            pool, fused, vectors, k, params.mmr_lambda, params.mmr_similarity_floor
        )
    top = order[:k]
    return Ranked(top, fused[top])
