"""The in-process cache in front of Chroma: one index per owner (tenant + user), LRU-bounded.

An index holds the owner's memories, a unit-vector matrix (a dense search is one
matrix-vector product) and a BM25 keyword index over the same rows, in the same order, kept
in step on every add, update, supersede and delete (proxy/memory/keyword.py); one Analyzer (and its
stem memo) is shared by every cached owner. Writes change a cached index in place (after
Chroma has them); a load that raced a write to its shard is used once but not cached, so
the cache never holds less than Chroma does. Owners too large to cache are remembered and
searched in Chroma.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from proxy.config import StoreSettings
from proxy.memory.keyword import Analyzer, KeywordIndex, asks_only
from proxy.memory.listing import Condition, matches
from proxy.memory.model import Memory, Owner


@dataclass
class UserIndex:
    memories: list[Memory]
    matrix: np.ndarray  # (n, dim) float32, unit rows
    keyword: KeywordIndex = field(default_factory=KeywordIndex)  # row i = memories[i]
    loaded_at: float = field(default_factory=time.monotonic)
    _superseded: int | None = field(default=None, repr=False)
    _created_at: np.ndarray | None = field(default=None, repr=False)
    _asks: np.ndarray | None = field(default=None, repr=False)  # kept in step on writes
    # Rows beyond len(memories), so appends do not copy the matrix (10k × 384: 15 MB) each time.
    _spare: np.ndarray | None = field(default=None, repr=False)
    # Held while rows change and while a search reads them, so the three stay aligned.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def build(cls, memories: list[Memory], matrix: np.ndarray, analyzer: Analyzer) -> UserIndex:
        keyword = KeywordIndex(analyzer)
        keyword.add([m.text for m in memories], [m.created_at for m in memories])
        return cls(memories, matrix, keyword)

    @property
    def nbytes(self) -> int:
        # Vectors, postings, plus a rough per-memory allowance for text and metadata.
        spare = self._spare
        matrix = spare if spare is not None and self.matrix.base is spare else self.matrix
        return int(matrix.nbytes) + self.keyword.nbytes + 400 * len(self.memories)

    @property
    def created_at(self) -> np.ndarray:
        if self._created_at is None or len(self._created_at) != len(self.memories):
            self._created_at = np.array([m.created_at for m in self.memories], dtype=np.float64)
        return self._created_at

    @property
    def asks(self) -> np.ndarray:
        """Row i: memory i only asks (``keyword.asks_only``), for the ranking."""
        if self._asks is None or len(self._asks) != len(self.memories):
            self._asks = np.array([asks_only(m.text) for m in self.memories], dtype=bool)
        return self._asks

    def _changed(self) -> None:
        self._superseded = None
        self._created_at = None

    @property
    def superseded(self) -> int:
        if self._superseded is None:  # counted once per change, not per search
            self._superseded = sum(1 for m in self.memories if m.superseded_by)
        return self._superseded

    def append(self, memories: Sequence[Memory], vectors: np.ndarray) -> None:
        with self.lock:
            self._changed()
            # Whatever can fail first: the three must grow together or not at all.
            vectors = np.asarray(vectors, dtype=np.float32).reshape(len(memories), -1)
            n, extra = len(self.matrix), len(vectors)
            spare = self._spare
            if spare is None or spare.base is not None or len(spare) < n + extra \
                    or self.matrix.base is not spare:
                # Doubling, so a run of single adds copies the matrix O(log n) times.
                spare = np.empty((max(2 * n, n + extra, 64), vectors.shape[1]), np.float32)
                spare[:n] = self.matrix
            self.keyword.add([m.text for m in memories], [m.created_at for m in memories])
            spare[n : n + extra] = vectors
            self._spare = spare
            self.matrix = spare[: n + extra]  # a view: rows up to n are never moved
            if self._asks is not None and len(self._asks) == n:
                added = np.array([asks_only(m.text) for m in memories], dtype=bool)
                self._asks = np.concatenate([self._asks, added])
            self.memories.extend(memories)

    def position(self, memory_id: str) -> int | None:
        for i, memory in enumerate(self.memories):
            if memory.id == memory_id:
                return i
        return None

    def put(self, memory: Memory, vector: np.ndarray | None) -> None:
        """Replace the memory with the same id (and its vector, when given)."""
        with self.lock:
            self._changed()
            row = self.position(memory.id)
            if row is None:
                if vector is not None:
                    self.append([memory], vector.reshape(1, -1))
                return
            before = self.memories[row]
            self.memories[row] = memory
            if vector is not None:
                self.matrix[row] = vector.astype(np.float32, copy=False)
            if (before.text, before.created_at) != (memory.text, memory.created_at):
                self.keyword.replace(row, memory.text, memory.created_at)
            if self._asks is not None and before.text != memory.text:
                self._asks[row] = asks_only(memory.text)

    def remove(self, memory_ids: Iterable[str]) -> None:
        with self.lock:
            self._changed()
            gone = set(memory_ids)
            keep = [i for i, m in enumerate(self.memories) if m.id not in gone]
            self.keyword.remove(i for i, m in enumerate(self.memories) if m.id in gone)
            self.memories = [self.memories[i] for i in keep]
            self.matrix = self.matrix[keep]
            if self._asks is not None:
                self._asks = self._asks[keep]

    def eligible(
        self, filters: Sequence[Condition], include_superseded: bool
    ) -> np.ndarray | None:
        """Rows search may return; None when every row may (the common, fast case)."""
        if not filters and (include_superseded or not self.superseded):
            return None
        return np.array(
            [(include_superseded or not m.superseded_by) and matches(m, filters)
             for m in self.memories],
            dtype=bool,
        )


class OwnerCache:
    """Thread-safe. ``lookup`` → load from Chroma → ``remember`` with the write count seen."""

    def __init__(
        self, settings: StoreSettings, shards: int,
        on_evict: Callable[[Owner, UserIndex], None] | None = None,
    ):
        self._settings = settings
        self._on_evict = on_evict  # an index pushed out by the size limit
        self._indexes: OrderedDict[Owner, UserIndex] = OrderedDict()
        self._bytes = 0
        self._too_large: set[Owner] = set()  # owners searched in Chroma, never cached
        self._shard_writes = [0] * shards  # a load that saw a write begin is not cached
        self._lock = threading.RLock()
        self.analyzer = Analyzer()  # shared: its stem memo serves every owner

    def _get(self, owner: Owner) -> UserIndex | None:
        index = self._indexes.get(owner)
        if index is None:
            return None
        ttl = self._settings.cache_ttl_seconds
        if ttl and time.monotonic() - index.loaded_at > ttl:
            self._evict(owner)
            return None
        self._indexes.move_to_end(owner)
        return index

    def _evict(self, owner: Owner) -> None:
        index = self._indexes.pop(owner, None)
        if index is not None:
            self._bytes -= index.nbytes

    def lookup(self, owner: Owner, shard: int) -> tuple[UserIndex | None, bool, int]:
        """(cached index or None, whether the owner is too large, the shard's write count)."""
        with self._lock:
            return self._get(owner), owner in self._too_large, self._shard_writes[shard]

    def remember(self, owner: Owner, index: UserIndex, shard: int, writes_seen: int) -> bool:
        """Cache ``index``; False when a write landed while loading (used once, not kept)."""
        with self._lock:
            if self._shard_writes[shard] != writes_seen:
                return False  # a write landed while loading: the load may have missed it
            self._evict(owner)
            self._indexes[owner] = index
            self._bytes += index.nbytes
            limit = self._settings.cache_max_mb * 1024 * 1024
            while self._bytes > limit and len(self._indexes) > 1:
                oldest = next(iter(self._indexes))
                pushed_out = self._indexes[oldest]
                self._evict(oldest)
                if self._on_evict is not None:
                    self._on_evict(oldest, pushed_out)
            return True

    def changed(
        self, owner: Owner, shard: int, change: Callable[[UserIndex], None] | None
    ) -> None:
        """A write to ``owner`` reached Chroma: apply it to the cached index (or evict it)."""
        with self._lock:
            self._shard_writes[shard] += 1
            index = self._indexes.get(owner)
            if index is None:
                return
            if change is None:
                self._evict(owner)
                return
            self._bytes -= index.nbytes
            change(index)
            self._bytes += index.nbytes

    def find(self, owner: Owner, memory_id: str) -> Memory | None:
        with self._lock:
            index = self._get(owner)
            row = index.position(memory_id) if index is not None else None
            return index.memories[row] if index is not None and row is not None else None

    def too_large(self, owner: Owner, value: bool = True) -> None:
        with self._lock:
            if value:
                self._too_large.add(owner)
            else:
                self._too_large.discard(owner)

    def entries(self) -> list[tuple[Owner, UserIndex]]:
        with self._lock:
            return list(self._indexes.items())

    def owners(self) -> list[Owner]:
        """Cached owners, least recently used first."""
        with self._lock:
            return list(self._indexes)

    def clear(self) -> None:
        with self._lock:
            self._indexes.clear()
            self._bytes = 0
