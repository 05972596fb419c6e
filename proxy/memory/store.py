"""Memories and where they live. The only module that imports chromadb.

Layout, chosen by measurement (see bench/store_scale.py and the README):
- Chroma holds every memory durably, in ``shards`` collections (cosine space); an owner's
  (tenant + user) memories all live in the shard picked by a stable hash of the owner. A
  filtered read of one owner costs in proportion to the shard, not to the whole store.
- In front of Chroma sits a bounded, in-process LRU of per-owner indexes (ids, texts,
  metadata and a unit-vector matrix). Retrieval for a cached owner is one matrix-vector
  product (10k memories × 384 dims ≈ 1 ms); a miss loads the owner from its shard once.
  Owners with more than ``cache_max_user_records`` memories are searched in Chroma directly.
Writes go to Chroma first (the embedded store's to its write journal, proxy/memory/journal.py,
which Chroma's reads wait for), then into the cached index, so the cache never holds what is
not durably written. A load that raced a write to its shard is used once, not cached.
Every change also writes a row of history (proxy/memory/history.py) in the data dir's SQLite file.
Superseded memories stay stored and listable; search leaves them out unless asked.
A memory over ``max_memory_chars`` / ``max_metadata_bytes`` is never written, whoever writes
it (the API answers 400 before it gets here; extraction's facts are dropped, logged).
Writes hold one lock from the read that decides them to the write itself, so a change racing
a delete cannot bring the memory back, and a job's writes after its owner was forgotten are
dropped (proxy/memory/forget_fence.py).
Scoring one owner's memories (cached index or Chroma) is in proxy/memory/search.py.
Loading an owner's index and keeping it in step with writes is in proxy/memory/indexes.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from proxy.config import StoreSettings
from proxy.errors import MemoryUnavailable
from proxy.gateway.identity import DEFAULT_TENANT
from proxy.memory.cache import OwnerCache, UserIndex
from proxy.memory.chroma import Shards, WritePacer, memories_from, owner_where, shard_of
from proxy.memory.forget_fence import ForgetLog
from proxy.memory.history import HistoryEvent, MemoryHistory
from proxy.memory.indexes import OwnerIndexes
from proxy.memory.journal import JOURNAL_FILENAME, WriteJournal
from proxy.memory.listing import Condition, matches, page
from proxy.memory.model import (
    Candidates,
    Memory,
    MemoryStore,
    Owner,
    ScoredMemory,
    metadata_size_problem,
    text_size_problem,
)
from proxy.memory.search import (
    collection_candidates,
    index_candidates,
    search_collection,
    search_index,
)
from proxy.memory.snapshot import Snapshots
from proxy.memory.users import UserSummary, scan_owners
from proxy.state.engine import Target, is_url
from proxy.state.owners import SharedOwners
from proxy.state.sqlite import database_path

__all__ = [
    "Candidates", "ChromaStore", "Memory", "MemoryStore", "Owner", "ScoredMemory", "shard_of",
]

log = logging.getLogger("memproxy.store")


class ChromaStore:
    def __init__(
        self, settings: StoreSettings, data_dir: Path, dimension: int, *,
        state: Target | None = None, pool_size: int = 8,
    ):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        # Telemetry off: no phoning home from a self-hosted memory store.
        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)

        self._settings = settings
        try:
            if settings.chroma_host:
                self._client = chromadb.HttpClient(
                    host=settings.chroma_host, port=settings.chroma_port,
                    settings=chroma_settings,
                )
            else:
                path = data_dir / "chroma"
                path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(
                    path=str(path), settings=chroma_settings
                )
            self.pacer = None if settings.chroma_host else WritePacer(settings.write_busy_share)
            self._shards = Shards(self._client, settings.shards, self.pacer)
            self._max_batch = max(1, int(self._client.get_max_batch_size()))
            self.history = MemoryHistory(state or database_path(data_dir), pool_size=pool_size)
            # Replicas sharing a database: cache freshness and forgets across them.
            self.replicas = (
                SharedOwners.open(state, pool_size=pool_size)
                if state is not None and is_url(state) else None
            )
        except MemoryUnavailable:
            raise
        except Exception as exc:
            raise MemoryUnavailable(f"cannot open the Chroma store: {exc}") from exc
        only_writer = not settings.chroma_host and self.replicas is None
        # Fast cold loads (proxy/memory/snapshot.py): this process is the only writer.
        self._snapshots = (
            Snapshots(data_dir / "snapshots", dimension)
            if settings.snapshots and only_writer else None
        )
        # Writes many to a Chroma call, behind the caller (proxy/memory/journal.py).
        self.journal = None
        if settings.write_behind and only_writer:
            try:
                self.journal = WriteJournal(
                    data_dir / JOURNAL_FILENAME, self._shards.direct_at,
                    max_batch=self._max_batch, dimension=dimension, refused=self._write_refused,
                    contended=self._contended,
                )
            except Exception as exc:
                raise MemoryUnavailable(f"cannot open the write journal: {exc}") from exc
            self._shards.journal = self.journal
        self._cache = OwnerCache(
            settings, self._shards.count,
            self._snapshots.evicted if self._snapshots is not None else None,
        )
        self._indexes = OwnerIndexes(
            settings, dimension, self._shards, self._max_batch, self._cache, self._snapshots,
            self.replicas,
        )
        self._writes = threading.RLock()
        self._forgets = ForgetLog(shared=self.replicas)

    def _too_large(self, memory: Memory) -> bool:
        problem = text_size_problem(memory.text, self._settings.max_memory_chars)
        if problem is None:
            problem = metadata_size_problem(memory.metadata, self._settings.max_metadata_bytes)
        if problem is not None:
            log.warning("dropped a memory that is too large: it %s", problem)
        return problem is not None

    def _contended(self) -> bool:
        """Chats are being served (the app sets the pacer's test); a CLI process has none."""
        return self.pacer is not None and self.pacer.contended()

    def _write_refused(self, shard: int, ids: list[str]) -> None:
        """The journal dropped a write Chroma refused: cached owners reload what Chroma has."""
        for owner in set(self.history.owners(ids).values()):
            self._cache.changed(owner, shard, None)

    def _refused(self, owner: Owner) -> bool:
        """Under ``_writes``: a write for an owner forgotten since the work behind it began."""
        if self._forgets.refuses(owner):
            log.info("dropped a write begun before its user was forgotten")
            return True
        return False

    # -- cache -----------------------------------------------------------------
    def _load(self, owner: Owner) -> UserIndex | None:
        """The owner's index, from cache or Chroma; None when too large to cache."""
        return self._indexes.load(owner)

    def _read(self, work: Any, *args: Any) -> Any:
        try:
            return work(*args)
        except MemoryUnavailable:
            raise
        except Exception as exc:
            raise MemoryUnavailable(f"store read failed: {exc}") from exc

    def _owner_memories(self, owner: Owner) -> list[Memory]:
        index = self._load(owner)
        if index is not None:
            return list(index.memories)
        return memories_from(self._shards.collection(owner).get(
            where=owner_where(owner), include=["documents", "metadatas"]
        ))

    # -- writes ------------------------------------------------------------------
    def add(self, memories: Sequence[Memory], vectors: np.ndarray, *, actor: str = "api") -> None:
        with self._writes:
            rows = [
                i for i, m in enumerate(memories)
                if not self._refused(m.owner) and not self._too_large(m)
            ]
            if not rows:
                return
            memories = [memories[i] for i in rows]
            vectors = np.asarray(vectors, dtype=np.float32)[rows]
            self._indexes.write_records(memories, vectors, upsert=False)
            self.history.record(
                HistoryEvent(m.id, m.tenant, m.user_id, "ADD", None, m.text, m.created_at, actor)
                for m in memories
            )

    def update(
        self,
        memory_id: str,
        *,
        text: str | None = None,
        vector: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
        actor: str = "api",
    ) -> Memory | None:
        """Change a memory's text (re-embedded: pass its ``vector``) and/or user metadata."""
        with self._writes:
            current = self.get(memory_id)
            if current is None or self._refused(current.owner):
                return None
            if text is not None and text != current.text and vector is None:
                raise ValueError("a changed text needs its new vector")
            changed = replace(
                current,
                text=current.text if text is None else text,
                metadata=current.metadata if metadata is None else dict(metadata),
                updated_at=time.time(),
            )
            if self._too_large(changed):
                return None
            self._indexes.rewrite(
                changed, vector if text is not None and text != current.text else None
            )
            self.history.record([HistoryEvent(
                memory_id, current.tenant, current.user_id, "UPDATE", current.text,
                changed.text, changed.updated_at, actor,
            )])
            return changed

    def supersede(
        self, old_id: str, new: Memory, vector: np.ndarray, *, actor: str = "api"
    ) -> Memory | None:
        """Store ``new`` as the successor of ``old_id``, which is kept, marked, out of search."""
        with self._writes:
            old = self.get(old_id)
            if old is None or old.owner != new.owner or self._refused(old.owner):
                return None
            if self._too_large(new):
                return None
            if self.get(new.id) is None:  # a replay after a crash between the two writes
                self.add([new], np.asarray(vector, dtype=np.float32).reshape(1, -1), actor=actor)
            now = time.time()
            marked = replace(old, superseded_by=new.id, valid_to=now, updated_at=now)
            self._indexes.rewrite(marked, None)
            self.history.record([HistoryEvent(
                old.id, old.tenant, old.user_id, "SUPERSEDE", old.text, new.text, now, actor
            )])
            return marked

    def delete(self, memory_id: str, *, actor: str = "api") -> Memory | None:
        """Remove a memory; its history stays (with a DELETE row). Returns what was removed."""
        with self._writes:
            memory = self.get(memory_id)
            if memory is None or self._refused(memory.owner):
                return None
            try:
                self._indexes.writing([memory.owner])
                self._shards.collection(memory.owner).delete(ids=[memory_id])
            except Exception as exc:
                raise MemoryUnavailable(f"store write failed: {exc}") from exc
            self._indexes.changed(memory.owner, lambda index: index.remove([memory_id]))
            self.history.record([HistoryEvent(
                memory_id, memory.tenant, memory.user_id, "DELETE", memory.text, None,
                time.time(), actor,
            )])
            return memory

    def delete_user(self, user_id: str, *, tenant: str = DEFAULT_TENANT) -> dict[str, int]:
        """Forget an owner entirely: memories and history. Returns the counts removed.

        Work already running for the owner (an extraction job) writes nothing afterwards.
        """
        owner = (tenant, user_id)
        with self._writes:
            self._forgets.forgot(owner)
            try:
                self._indexes.writing([owner])
                collection = self._shards.collection(owner)
                ids = collection.get(where=owner_where(owner), include=[])["ids"]
                for start in range(0, len(ids), self._max_batch):
                    collection.delete(ids=ids[start : start + self._max_batch])
                if self.journal is not None:  # forgotten in Chroma, and out of the journal
                    self.journal.flush()
            except Exception as exc:
                raise MemoryUnavailable(f"store write failed: {exc}") from exc
            self._indexes.changed(owner)
            self._cache.too_large(owner, False)
            return {"memories": len(ids), "history": self.history.delete_owner(tenant, user_id)}

    def restore(
        self, memories: Sequence[Memory], vectors: np.ndarray,
        history: Sequence[HistoryEvent] = (), *, actor: str = "import",
    ) -> None:
        """Write memories as given (ids, timestamps, supersede marks: an import).

        ``history`` rows are kept as they were; a memory without any (given or stored) gets
        an ADD row.
        An id already stored for the same owner is overwritten (importing twice is harmless).
        """
        with self._writes:
            rows = [i for i, m in enumerate(memories) if not self._too_large(m)]
            memories = [memories[i] for i in rows]
            vectors = np.asarray(vectors, dtype=np.float32)[rows]
            had_history = {event.memory_id for event in history}
            had_history |= set(self.history.owners([m.id for m in memories]))
            if memories:
                self._indexes.write_records(
                    memories, np.asarray(vectors, dtype=np.float32), upsert=True
                )
            self.history.record([
                *history,
                *(HistoryEvent(m.id, m.tenant, m.user_id, "ADD", None, m.text, m.created_at, actor)
                  for m in memories if m.id not in had_history),
            ])

    # -- reads -------------------------------------------------------------------
    def get(self, memory_id: str) -> Memory | None:
        """A memory by id, whoever owns it (callers check the owner)."""
        owner = self.history.owners([memory_id]).get(memory_id)
        cached = self._cache.find(owner, memory_id) if owner else None
        if cached is not None:
            return cached
        shards = [self._shards.of(owner)] if owner else range(self._shards.count)
        for shard in shards:  # no history row (an older store): look in every shard
            got = self._read(
                lambda s=shard: self._shards.collection_at(s).get(
                    ids=[memory_id], include=["documents", "metadatas"]
                )
            )
            if got["ids"]:
                return memories_from(got)[0]
        return None

    def search(
        self, user_id: str, vector: np.ndarray, k: int, *, tenant: str = DEFAULT_TENANT,
        filters: Sequence[Condition] = (), include_superseded: bool = False,
    ) -> list[ScoredMemory]:
        owner = (tenant, user_id)
        index = self._read(self._load, owner)
        if index is None:
            return self._read(lambda: search_collection(
                self._shards.collection(owner), owner, vector, k, filters, include_superseded
            ))
        return search_index(index, vector, k, filters, include_superseded)

    def candidates(
        self, user_id: str, vector: np.ndarray, query: str, *, tenant: str = DEFAULT_TENANT,
        filters: Sequence[Condition] = (), include_superseded: bool = False, pool: int = 200,
    ) -> Candidates:
        """Dense and BM25 scores of the owner's memories for a query (hybrid retrieval).

        Cached owners: every memory. Owners too large to cache: the ``pool`` nearest by
        vector in Chroma, keyword-scored among themselves (a keyword-only match outside
        that pool is missed there).
        """
        owner = (tenant, user_id)
        vector = np.asarray(vector, dtype=np.float32)
        index = self._read(self._load, owner)
        if index is None:
            return self._read(lambda: collection_candidates(
                self._shards.collection(owner), owner, vector, query, filters, include_superseded,
                pool, self._cache.analyzer,
            ))
        return index_candidates(index, vector, query, filters, include_superseded)

    def list_page(
        self, user_id: str, *, tenant: str = DEFAULT_TENANT, filters: Sequence[Condition] = (),
        limit: int = 100, cursor: str | None = None, include_superseded: bool = False,
    ) -> tuple[list[Memory], str | None]:
        """One page of the owner's memories, newest first, and the next page's cursor."""
        memories = self._read(self._owner_memories, (tenant, user_id))
        chosen = [
            m for m in memories
            if (include_superseded or not m.superseded_by) and matches(m, filters)
        ]
        return page(chosen, limit, cursor)

    def list_user(
        self, user_id: str, limit: int, offset: int = 0, *, tenant: str = DEFAULT_TENANT
    ) -> list[Memory]:
        memories, _ = self.list_page(user_id, tenant=tenant, limit=offset + limit)
        return memories[offset:]

    def all_memories(self, user_id: str, *, tenant: str = DEFAULT_TENANT) -> list[Memory]:
        """Every memory of the owner, superseded ones included, oldest first (export)."""
        memories = self._read(self._owner_memories, (tenant, user_id))
        return sorted(memories, key=lambda m: (m.created_at, m.id))

    def vectors_of(self, user_id: str, *, tenant: str = DEFAULT_TENANT) -> dict[str, np.ndarray]:
        """The stored unit vector of each of the owner's memories, by id (an export's)."""
        owner = (tenant, user_id)
        index = self._read(self._load, owner)
        if index is not None:
            return {m.id: index.matrix[row] for row, m in enumerate(index.memories)}
        got = self._read(lambda: self._shards.collection(owner).get(
            where=owner_where(owner), include=["embeddings"]
        ))
        return dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32),
                        strict=True))

    def count_user(self, user_id: str, *, tenant: str = DEFAULT_TENANT) -> int:
        """How many memories search can return (superseded ones are not counted)."""
        owner = (tenant, user_id)
        index = self._read(self._load, owner)
        if index is not None:
            return len(index.memories) - index.superseded
        got = self._read(lambda: self._shards.collection(owner).get(
            where=owner_where(owner), include=["metadatas"]
        ))
        return sum(1 for meta in got["metadatas"] if not (meta or {}).get("superseded_by"))

    def user_summaries(self) -> list[UserSummary]:
        """Every owner with stored memories: counts and last change (proxy/memory/users.py)."""
        return list(self._read(scan_owners, self._shards, self._max_batch))

    def cached_users(self) -> list[str]:
        """Users whose index is in memory, least recently used first."""
        return [user for _, user in self._cache.owners()]

    def close(self) -> None:
        if self._snapshots is not None:
            self._snapshots.flush(self._cache.entries())
        self._cache.clear()
        self._shards.close()
        self.history.close()
        if self.replicas is not None:
            self.replicas.close()
