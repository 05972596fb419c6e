"""A bounded in-memory ring of recent injections: what the retriever chose for chat requests.

One record per chat retrieval (``proxy/memory/retrieval.py``): when, whose, which model, the
chosen memories' ids with their scores and token costs — the message text only when
``retrieval.recent_injections_text`` allows it. Nothing is written to disk; each replica
keeps its own ring of ``retrieval.recent_injections`` records (0: none are kept).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class InjectedMemory:
    id: str
    similarity: float  # cosine to the query (the search API's ``score``)
    score: float  # the fused rank score (the search API's ``rank_score``)
    tokens: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.similarity, 6),
                "rank_score": round(self.score, 6), "tokens": self.tokens}


@dataclass(frozen=True)
class InjectionRecord:
    at: float
    tenant: str
    user_id: str
    model: str | None
    memories: tuple[InjectedMemory, ...]
    used_tokens: int
    max_tokens: int
    candidates: int  # memories ranked before top_k and the budget
    duration_ms: float
    # Took longer than retrieval.timeout_ms: the chat was forwarded without these.
    late: bool = False
    query: str | None = None  # only with retrieval.recent_injections_text
    # Milliseconds per step (embed, candidates, rank): where a slow retrieval's time went.
    phases_ms: dict[str, float] = field(default_factory=dict, compare=False)
    seq: int = field(default=0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "memory.injection", "seq": self.seq, "at": self.at,
            "tenant": self.tenant, "user_id": self.user_id, "model": self.model,
            "injected": [m.to_json() for m in self.memories],
            "used_tokens": self.used_tokens, "max_tokens": self.max_tokens,
            "candidates": self.candidates, "duration_ms": round(self.duration_ms, 3),
            "late": self.late, "query": self.query,
            "phases_ms": {name: round(ms, 3) for name, ms in self.phases_ms.items()},
        }


class RecentInjections:
    """Thread-safe; the oldest record drops out when ``size`` are held."""

    def __init__(self, size: int, keep_text: bool = False,
                 clock: Callable[[], float] = time.time):
        self.size = size
        self.keep_text = keep_text
        self._clock = clock
        self._records: deque[InjectionRecord] = deque(maxlen=max(size, 1))
        self._seq = 0
        self._lock = threading.Lock()

    def record(self, record: InjectionRecord) -> None:
        if self.size <= 0:
            return
        if not self.keep_text and record.query is not None:
            record = replace(record, query=None)
        with self._lock:
            self._seq += 1
            self._records.append(replace(record, seq=self._seq))

    def now(self) -> float:
        return self._clock()

    def list(
        self, allows: Callable[[str, str], bool], *, tenant: str | None = None,
        user_id: str | None = None, limit: int = 50,
    ) -> list[InjectionRecord]:
        """Newest first: the records ``allows(tenant, user)`` lets the caller see."""
        with self._lock:
            records = list(self._records)
        chosen = [
            r for r in reversed(records)
            if allows(r.tenant, r.user_id)
            and (tenant is None or r.tenant == tenant)
            and (user_id is None or r.user_id == user_id)
        ]
        return chosen[:limit]

    def forget(self, tenant: str, user_id: str) -> None:
        """A forgotten user leaves no trace here either."""
        with self._lock:
            kept = [r for r in self._records if (r.tenant, r.user_id) != (tenant, user_id)]
            self._records.clear()
            self._records.extend(kept)


