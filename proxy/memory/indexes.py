"""Every owner's index as the store reads and writes it: read through, written through.

A read takes the owner's index from the cache (proxy/memory/cache.py), else from its snapshot
(proxy/memory/snapshot.py), else from its Chroma shard. A write goes to Chroma first (or to
its write journal, proxy/memory/journal.py), then into the cached index; the owner's
snapshot is dropped before the Chroma write and again after, and other replicas are told
(proxy/state/owners.py). What is written, under which lock, is decided by the store
(proxy/memory/store.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from proxy.config import StoreSettings
from proxy.errors import MemoryUnavailable
from proxy.memory.cache import OwnerCache, UserIndex
from proxy.memory.chroma import Shards, memories_from, owner_where
from proxy.memory.model import Memory, Owner
from proxy.memory.snapshot import Snapshots
from proxy.state.owners import SharedOwners

# Cold loads of owners in the same stripe wait for each other (a lock per stripe, not per
# owner: nothing to clean up); owners of different stripes load side by side.
LOAD_STRIPES = 64


class OwnerIndexes:
    def __init__(
        self, settings: StoreSettings, dimension: int, shards: Shards, max_batch: int,
        cache: OwnerCache, snapshots: Snapshots | None, replicas: SharedOwners | None,
    ):
        self._settings = settings
        self._dimension = dimension
        self._shards = shards
        self._max_batch = max_batch
        self._cache = cache
        self._snapshots = snapshots
        self._replicas = replicas
        self._loading = [threading.Lock() for _ in range(LOAD_STRIPES)]

    # -- reads -------------------------------------------------------------------
    def load(self, owner: Owner) -> UserIndex | None:
        """The owner's index, from cache or Chroma; None when too large to cache.

        One load per owner at a time: the chats that arrive together for an owner who is not
        cached (after a restart or an eviction) wait for the first one's load and share its
        index, instead of each reading the same snapshot or shard at once — eight such reads
        of a 10k-memory owner on two cores took each of them past the retrieval timeout.
        """
        shard = self._shards.of(owner)
        if self._replicas is not None and self._replicas.stale(owner):
            self._cache.changed(owner, shard, None)  # another replica wrote: reload
        index, too_large, writes = self._cache.lookup(owner, shard)
        if index is not None or too_large:
            return index
        with self._loading[hash(owner) % LOAD_STRIPES]:
            index, too_large, writes = self._cache.lookup(owner, shard)  # loaded meanwhile?
            if index is not None or too_large:
                return index
            return self._load_uncached(owner, shard, writes)

    def _load_uncached(self, owner: Owner, shard: int, writes: int) -> UserIndex | None:
        snapshots = self._snapshots
        generation = snapshots.generation(owner) if snapshots is not None else 0
        if snapshots is not None:
            index = snapshots.load(owner, self._cache.analyzer)
            if index is not None:
                self._cache.remember(owner, index, shard, writes)
                return index
        got = self._shards.collection_at(shard).get(
            where=owner_where(owner), include=["embeddings", "documents", "metadatas"]
        )
        ids = got["ids"]
        if len(ids) > self._settings.cache_max_user_records:
            self._cache.too_large(owner)
            return None
        embeddings = got["embeddings"]
        matrix = (
            np.asarray(embeddings, dtype=np.float32)
            if len(ids)
            else np.zeros((0, self._dimension), dtype=np.float32)
        )
        index = UserIndex.build(memories_from(got), matrix, self._cache.analyzer)
        if self._cache.remember(owner, index, shard, writes) and snapshots is not None:
            snapshots.save_later(owner, index, generation)
        return index

    # -- writes ------------------------------------------------------------------
    def writing(self, owners: Iterable[Owner]) -> None:
        """Before a Chroma write: the owners' snapshots go (a crash must not leave them)."""
        if self._snapshots is not None:
            for owner in set(owners):
                self._snapshots.drop(owner)

    def changed(self, owner: Owner, change: Callable[[UserIndex], None] | None = None) -> None:
        """After a Chroma write: invalidate racing loads; apply ``change`` to a cached index."""
        self._cache.changed(owner, self._shards.of(owner), change)
        if self._snapshots is not None:
            self._snapshots.drop(owner)  # again: a snapshot taken during the write is refused
        if self._replicas is not None:
            self._replicas.wrote(owner)  # other replicas' next read of the owner reloads

    def write_records(self, memories: Sequence[Memory], vectors: np.ndarray, upsert: bool) -> None:
        # One Chroma call per shard (split at Chroma's batch limit), not one per owner: each
        # call has a fixed cost of several ms, which dominates bulk writes of many owners.
        by_shard: dict[int, list[int]] = {}
        for i, memory in enumerate(memories):
            by_shard.setdefault(self._shards.of(memory.owner), []).append(i)
        try:
            for shard, rows in by_shard.items():
                collection = self._shards.collection_at(shard)
                write = collection.upsert if upsert else collection.add
                for start in range(0, len(rows), self._max_batch):
                    part = rows[start : start + self._max_batch]
                    chunk = [memories[i] for i in part]
                    self.writing(m.owner for m in chunk)
                    write(
                        ids=[m.id for m in chunk],
                        embeddings=vectors[part],
                        metadatas=[m.record_metadata() for m in chunk],
                    )
                    self._cache_written(chunk, vectors[part], upsert)
        except Exception as exc:
            raise MemoryUnavailable(f"store write failed: {exc}") from exc

    def _cache_written(
        self, memories: Sequence[Memory], vectors: np.ndarray, upsert: bool
    ) -> None:
        by_owner: dict[Owner, list[int]] = {}
        for i, memory in enumerate(memories):
            by_owner.setdefault(memory.owner, []).append(i)
        for owner, rows in by_owner.items():
            def change(index: UserIndex, rows: list[int] = rows) -> None:
                if not upsert:  # new ids: appended without looking for them
                    index.append([memories[i] for i in rows], vectors[rows])
                    return
                for i in rows:
                    index.put(memories[i], vectors[i])
            self.changed(owner, change)

    def rewrite(self, memory: Memory, vector: np.ndarray | None) -> None:
        """Store a changed memory (same id, same owner); its vector only when given."""
        try:
            kwargs: dict[str, Any] = {}
            if vector is not None:  # a new text: its vector, and no old text left behind
                kwargs["embeddings"] = np.asarray(vector, dtype=np.float32).reshape(1, -1)
                # A record written before the text moved to the metadata holds it as its
                # document (with the vector, so Chroma does not embed the empty one itself).
                kwargs["documents"] = [""]
            self.writing([memory.owner])
            self._shards.collection(memory.owner).update(
                ids=[memory.id], metadatas=[memory.record_metadata(for_update=True)], **kwargs
            )
        except Exception as exc:
            raise MemoryUnavailable(f"store write failed: {exc}") from exc
        self.changed(memory.owner, lambda index: index.put(memory, vector))
