"""Long-chat trimming: the oldest turns left out, in large steps, and recalled when relevant.

Opt-in (``trimming.history_budget`` or the ``X-Memory-History-Budget`` header, in tokens).
A client that resends a whole history of 40k tokens pays for all of it on every turn; with a
budget, the forwarded request keeps the leading system prompt, the newest turns and as much of
the recent history as fits, and the turns left out are ranked against the question (keyword +
dense, as memories are) so the few that matter come back in the late memory block.

Trimming moves in steps of ``step`` tokens (half the budget by default): the cut stays where it
is while the history grows, so the forwarded prefix is byte-identical for many turns (what a
provider's prompt cache reuses), instead of sliding by one turn every turn.

A dialect describes its history as ``Turn``s (role, text, tokens, ``attached`` when the turn
must stay with the one before it: a tool result after its call); ``plan_trim`` says which
range to leave out. Nothing here calls a model.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from proxy.memory.keyword import KeywordIndex, asks_only
from proxy.memory.markup import neutralise_markup
from proxy.memory.ranking import RankingParams, rank_memories

LEADING_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Turn:
    role: str
    text: str
    tokens: int
    attached: bool = False  # must stay with the previous turn (a tool result after its call)


@dataclass(frozen=True)
class TrimPlan:
    """Turns ``start`` to ``end`` (exclusive) are left out of the forwarded request."""

    start: int = 0
    end: int = 0
    dropped_tokens: int = 0
    kept_tokens: int = 0

    @property
    def trimmed(self) -> bool:
        return self.end > self.start

    @property
    def dropped(self) -> int:
        return self.end - self.start


def plan_trim(
    turns: Sequence[Turn], budget: int, *, step: int | None = None, keep_last: int = 4
) -> TrimPlan:
    """The range of turns to leave out so the rest fits ``budget`` tokens (when it can).

    Kept always: the leading system/developer turns, the newest user turn and everything
    after it, and the ``keep_last`` turns before it. The amount left out is a multiple of
    ``step`` tokens, so the cut moves only when the history has grown by a whole step.
    """
    total = sum(turn.tokens for turn in turns)
    if budget <= 0 or total <= budget:
        return TrimPlan(kept_tokens=total)
    start = 0
    while start < len(turns) and turns[start].role in LEADING_ROLES:
        start += 1
    newest_user = max(
        (i for i, turn in enumerate(turns) if turn.role == "user" and not turn.attached),
        default=len(turns),
    )
    limit = max(start, newest_user - keep_last)
    step = step if step is not None else max(1, budget // 2)
    target = math.ceil((total - budget) / step) * step
    end, dropped = start, 0
    while end < limit and dropped < target:
        dropped += turns[end].tokens
        end += 1
    # The kept part starts at a user turn of its own: never a tool result apart from its
    # call, never an assistant answer apart from its question (some APIs require it).
    while end < limit and not _opens_exchange(turns[end]):
        dropped += turns[end].tokens
        end += 1
    while end > start and end < len(turns) and not _opens_exchange(turns[end]):
        end -= 1
        dropped -= turns[end].tokens
    if end <= start:
        return TrimPlan(kept_tokens=total)
    return TrimPlan(start, end, dropped, total - dropped)


def _opens_exchange(turn: Turn) -> bool:
    return turn.role == "user" and not turn.attached


def render_recalled(turns: Sequence[Turn]) -> str:
    """The recalled turns as lines of the late block: ``- user: …``, one line each."""
    return "\n".join(f"- {turn.role}: {neutralise_markup(turn.text)}" for turn in turns)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass
class _Indexed:
    digests: list[bytes]
    index: KeywordIndex
    asks: list[bool]  # turn i only asks (keyword.asks_only)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TurnRecall:
    """Ranks the turns left out against the query; vectors and keyword indexes are cached.

    Turn vectors are computed off the hot path (``embed_missing``, after the response) and
    looked up by a digest of the text, so a turn is embedded once however often the history
    is resent; a turn not embedded yet is ranked by its keywords alone. Keyword indexes are
    kept per conversation and extended as the left-out range grows a step at a time.
    """

    def __init__(self, vectors_kept: int = 50_000, indexes_kept: int = 256):
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._indexes: OrderedDict[str, _Indexed] = OrderedDict()
        self._vectors_kept = vectors_kept
        self._indexes_kept = indexes_kept
        self._lock = threading.Lock()

    def missing(self, turns: Sequence[Turn]) -> list[str]:
        with self._lock:
            seen: set[bytes] = set()
            texts = []
            for turn in turns:
                key = _digest(turn.text)
                if key not in self._vectors and key not in seen and turn.text.strip():
                    seen.add(key)
                    texts.append(turn.text)
            return texts

    def remember_vectors(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                self._vectors[_digest(text)] = np.asarray(vector, dtype=np.float32)
                self._vectors.move_to_end(_digest(text))
            while len(self._vectors) > self._vectors_kept:
                self._vectors.popitem(last=False)

    def _keyword_index(self, turns: Sequence[Turn], conversation: str) -> _Indexed:
        """The conversation's keyword index over ``turns``: extended when the left-out range
        grew (the cut moved on a step), built anew only when it is not an extension."""
        digests = [_digest(turn.text) for turn in turns]
        with self._lock:
            entry = self._indexes.get(conversation)
            if entry is not None:
                self._indexes.move_to_end(conversation)
        if entry is not None:
            with entry.lock:
                known = len(entry.digests)
                if known <= len(digests) and entry.digests == digests[:known]:
                    if known < len(digests):
                        entry.index.add([turn.text for turn in turns[known:]])
                        entry.asks += [asks_only(turn.text) for turn in turns[known:]]
                        entry.digests = digests
                    return entry
        entry = _Indexed(digests, KeywordIndex(), [asks_only(turn.text) for turn in turns])
        entry.index.add([turn.text for turn in turns])
        with self._lock:
            self._indexes[conversation] = entry
            while len(self._indexes) > self._indexes_kept:
                self._indexes.popitem(last=False)
        return entry

    def recall(
        self,
        dropped: Sequence[Turn],
        query: str,
        query_vector: np.ndarray | None,
        budget_tokens: int,
        *,
        conversation: str = "",
        top_k: int | None = None,
        params: RankingParams | None = None,
        present: frozenset[str] = frozenset(),
    ) -> list[int]:
        """Indexes into ``dropped`` of the turns to bring back, in conversation order.

        Ranked like memories (proxy/memory/ranking.py with ``params``, the retrieval's): the
        keyword and dense scores fused, a strong hit lifting the turns said just before and
        after it, a turn that only asks damped. Turns whose text is already in the request
        (``present``: the memories injected with it) are not brought back twice.
        """
        if not dropped or not query or budget_tokens <= 0:
            return []
        indexed = self._keyword_index(dropped, conversation)
        with indexed.lock:
            keyword = indexed.index.scores(query)
            asks = np.array(indexed.asks, dtype=bool)
        dense = np.zeros(len(dropped), dtype=np.float32)
        embedded = np.zeros(len(dropped), dtype=bool)
        if query_vector is not None:
            with self._lock:
                for i, turn in enumerate(dropped):
                    vector = self._vectors.get(_digest(turn.text))
                    if vector is not None:
                        dense[i] = float(vector @ query_vector)
                        embedded[i] = True
        evidence = (keyword > 0) | (embedded & (dense > 0.2))
        if present:
            evidence &= np.array([turn.text not in present for turn in dropped], dtype=bool)
        if not evidence.any():
            return []
        if embedded.any():  # a turn not embedded yet has no dense share: the lowest there is
            dense[~embedded] = dense[evidence & embedded].min() if (evidence & embedded).any() \
                else 0.0
        last = len(dropped) - 1
        ranked = rank_memories(
            dense, keyword, len(dropped), params or RankingParams(), eligible=evidence,
            neighbours=lambda i: [j for j in (i - 1, i + 1) if 0 <= j <= last], asks=asks,
        )
        chosen: list[int] = []
        used = 0
        for i in ranked.indices:  # the eligible turns, best first
            if top_k is not None and len(chosen) >= top_k:
                break
            cost = dropped[int(i)].tokens
            if used + cost > budget_tokens:
                continue
            chosen.append(int(i))
            used += cost
        return sorted(chosen)
