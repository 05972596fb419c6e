"""What the forwarded request carries: the conversation's kept block, late additions, trimming.

Per request, after retrieval (proxy/gateway/flow.py), in the retrieval thread and under its
timeout (a failure forwards the client's request unchanged, ``degraded``):

1. **Placement** (``conversation.stable_block``): the memory block a conversation's first turn
   chose is kept byte-identical while its memories are unchanged (proxy/memory/conversation.py);
   memories found later go in a late block, just before the newest user turn.
2. **Trimming** (opt-in: ``conversation.history_budget`` or ``X-Memory-History-Budget``): the
   oldest turns beyond the budget are left out in whole steps (proxy/memory/trimming.py) and
   the left-out turns that match the question come back in the late block.

Nothing here calls a model; left-out turns are embedded off the hot path, once per text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.config import ConversationSettings, Settings
from proxy.errors import InvalidRequest
from proxy.gateway.forwarding import HISTORY_BUDGET_HEADER
from proxy.memory.conversation import Placement, StableBlocks, conversation_key
from proxy.memory.embedding import Embedder
from proxy.memory.model import Memory, ScoredMemory
from proxy.memory.retrieval import ranking_params
from proxy.memory.store import MemoryStore
from proxy.memory.trimming import TrimPlan, Turn, TurnRecall, plan_trim

log = logging.getLogger("memproxy.shaping")

BUDGET_HEADER = HISTORY_BUDGET_HEADER
TRIMMED_HEADER = "x-memory-trimmed"
RECALLED_HEADER = "x-memory-recalled"
# Left-out turns embedded per background job, off the hot path: a whole long conversation,
# so its next questions rank every turn by meaning too (256 a job left most of a 1,000-turn
# chat keyword-only for its first questions: REALTALK evidence coverage 63.1 %, 66+ % with
# the turns embedded; README "Fewer tokens") …
EMBED_BATCH = 4096
EMBED_PIECE = 8  # … this many per model call (queued behind any chat's query) …
EMBED_PAUSE = 0.005  # … with a breath between calls for the requests being served


def opening_texts(conversation: Sequence[Mapping[str, Any]]) -> list[str]:
    """The leading system turns and the first user turn: resent unchanged on every turn."""
    texts = []
    for message in conversation:
        texts.append(f"{message.get('role')}\0{message.get('content')}")
        if message.get("role") == "user":
            break
    return texts


def recall_room(plan: TrimPlan, budget: int, settings: ConversationSettings) -> int:
    """Tokens of left-out turns to bring back: the budget the kept history leaves, at least
    ``recall_share`` of it. The cut moves in steps, so the kept history is often well under
    its part of the budget; what it leaves goes to recalled turns (they sit late, where they
    break no cached prefix) rather than to nothing."""
    return max(int(budget * settings.recall_share), budget - plan.kept_tokens)


@dataclass
class Shaped:
    """This request's memories and history, as the dialect will write them."""

    stable: list[ScoredMemory] = field(default_factory=list)
    late: list[ScoredMemory] = field(default_factory=list)
    plan: TrimPlan = field(default_factory=TrimPlan)
    recalled: list[Turn] = field(default_factory=list)
    kept: bool = False

    @property
    def count(self) -> int:
        return len(self.stable) + len(self.late)

    def headers(self) -> list[tuple[str, str]]:
        if not self.plan.trimmed:
            return []
        return [
            (TRIMMED_HEADER, f"turns={self.plan.dropped}; tokens={self.plan.dropped_tokens}"),
            (RECALLED_HEADER, str(len(self.recalled))),
        ]


class RequestShaper:
    """Shared by every dialect's flow; thread-safe (retrieval runs in worker threads)."""

    def __init__(self, settings: Settings, store: MemoryStore | None,
                 embedder: Embedder | None):
        self._settings = settings.conversation
        # Left-out turns are ranked the way memories are (fusion, neighbour lift, damping).
        self._ranking = ranking_params(settings.retrieval, include_superseded=False)
        self._store = store
        self._embedder = embedder
        self.blocks = StableBlocks(self._settings.conversations_kept)
        self.recall = TurnRecall()
        self._embedding = threading.Lock()  # one background embedding job at a time

    def budget(self, headers: Mapping[str, str]) -> int:
        """The history budget of this request: its header, else the setting (0: off)."""
        value = headers.get(BUDGET_HEADER)
        if value is None:
            return self._settings.history_budget
        value = value.strip()
        if not value.isdigit() or len(value) > 9:
            raise InvalidRequest(
                f"{BUDGET_HEADER} must be a whole number of tokens (0 turns trimming off)",
                param=BUDGET_HEADER,
            )
        return int(value)

    def plan(self, turns: Sequence[Turn], budget: int) -> TrimPlan:
        total = sum(turn.tokens for turn in turns)
        if budget <= 0 or total <= budget:
            return TrimPlan(kept_tokens=total)
        # Once trimming, part of the budget is kept for the left-out turns that come back.
        history = int(budget * (1 - self._settings.recall_share))
        step = self._settings.trim_step or max(1, history // 2)
        return plan_trim(turns, history, step=step, keep_last=self._settings.keep_last)

    def shape(
        self, tenant: str, user_id: str, session_id: str | None,
        conversation: Sequence[Mapping[str, Any]], found: list[ScoredMemory],
        query: str, turns: Sequence[Turn], plan: TrimPlan, budget: int,
    ) -> Shaped:
        """Blocking (store look-ups, keyword ranking): run it in the retrieval thread."""
        settings = self._settings
        key = conversation_key(tenant, user_id, session_id, opening_texts(conversation))
        if settings.stable_block:
            placement = self.blocks.place(key, found, self._lookup,
                                          late_limit=settings.late_max)
        else:
            placement = Placement(list(found))
        shaped = Shaped(placement.stable, placement.late, plan, kept=placement.kept)
        if plan.trimmed:
            dropped = list(turns[plan.start:plan.end])
            vector = self._query_vector(query)
            present = frozenset(m.memory.text for m in (*placement.stable, *placement.late))
            chosen = self.recall.recall(dropped, query, vector, recall_room(plan, budget, settings),
                                        conversation=key, params=self._ranking, present=present)
            shaped.recalled = [dropped[i] for i in chosen]
            self._embed_later(dropped)
        return shaped

    def _lookup(self, ids: list[str]) -> dict[str, Memory | None]:
        store = self._store
        if store is None:
            return {}
        return {memory_id: store.get(memory_id) for memory_id in ids}

    def _query_vector(self, query: str) -> Any:
        if self._embedder is None or not query:
            return None
        # The retriever embedded this query a moment ago: the embedder's query cache answers.
        return self._embedder.embed([query])[0]

    def _embed_later(self, dropped: Sequence[Turn]) -> None:
        embedder = self._embedder
        if embedder is None or not self.recall.missing(dropped):
            return
        if not self._embedding.acquire(blocking=False):
            return  # one job at a time; the next request picks up what is left

        def work() -> None:
            try:
                texts = self.recall.missing(dropped)[:EMBED_BATCH]
                # Small pieces, one after the other: a chat's query embedding never waits
                # behind more than one piece (queries go first in the batcher's queue).
                for start in range(0, len(texts), EMBED_PIECE):
                    piece = texts[start:start + EMBED_PIECE]
                    self.recall.remember_vectors(piece, embedder.embed(piece))
                    time.sleep(EMBED_PAUSE)
            except Exception as exc:  # the keyword side still ranks them
                log.warning("embedding left-out turns failed (%s: %s)", type(exc).__name__, exc)
            finally:
                self._embedding.release()

        threading.Thread(target=work, name="memproxy-recall", daemon=True).start()
