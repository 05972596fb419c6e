"""Memories and where they live. The only module that imports chromadb.

Layout, chosen by measurement (see bench/store_scale.py and the README):
- Chroma holds every memory durably, in ``shards`` collections (cosine space); a user's
  memories all live in the shard picked by a stable hash of the user id. A filtered
  read of one user costs in proportion to the shard, not to the whole store.
- In front of Chroma sits a bounded, in-process LRU of per-user indexes (ids, texts,
  metadata and a unit-vector matrix). Retrieval for a cached user is one matrix-vector
  product (10k memories × 384 dims ≈ 1 ms); a miss loads the user from its shard once.
  Users with more than ``cache_max_user_records`` memories are searched in Chroma directly.
Writes go to Chroma first, then into the cached index, so the cache never holds what
Chroma does not.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from proxy.config import StoreSettings
from proxy.errors import MemoryUnavailable

log = logging.getLogger("memproxy.store")

LAYOUT_COLLECTION = "memproxy_layout"


@dataclass
class Memory:
    user_id: str
    text: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)
    agent_id: str | None = None
    session_id: str | None = None
    source: str = "llm"

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "user_id": self.user_id,
            "created_at": self.created_at,
            "source": self.source,
        }
        # Chroma rejects None metadata values: absent means "not set".
        if self.agent_id is not None:
            meta["agent_id"] = self.agent_id
        if self.session_id is not None:
            meta["session_id"] = self.session_id
        return meta

    @classmethod
    def from_record(cls, memory_id: str, text: str, meta: dict[str, Any]) -> Memory:
        return cls(
            id=memory_id,
            user_id=str(meta["user_id"]),
            text=text,
            created_at=float(meta.get("created_at", 0.0)),
            agent_id=meta.get("agent_id"),
            session_id=meta.get("session_id"),
            source=str(meta.get("source", "llm")),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoredMemory:
    memory: Memory
    score: float


class MemoryStore(Protocol):
    def add(self, memories: Sequence[Memory], vectors: np.ndarray) -> None: ...

    def search(self, user_id: str, vector: np.ndarray, k: int) -> list[ScoredMemory]: ...

    def list_user(self, user_id: str, limit: int, offset: int = 0) -> list[Memory]: ...

    def count_user(self, user_id: str) -> int: ...

    def close(self) -> None: ...


@dataclass
class UserIndex:
    memories: list[Memory]
    matrix: np.ndarray  # (n, dim) float32, unit rows
    loaded_at: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        # Vectors plus a rough per-memory allowance for text and metadata objects.
        return int(self.matrix.nbytes) + 400 * len(self.memories)

    def append(self, memories: Sequence[Memory], vectors: np.ndarray) -> None:
        self.memories.extend(memories)
        self.matrix = np.vstack([self.matrix, vectors.astype(np.float32, copy=False)])


def shard_of(user_id: str, shards: int) -> int:
    return zlib.crc32(user_id.encode("utf-8")) % shards


def _chroma_settings() -> Any:
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


class ChromaStore:
    def __init__(self, settings: StoreSettings, data_dir: Path, dimension: int):
        import chromadb

        self._settings = settings
        self._dimension = dimension
        try:
            if settings.chroma_host:
                self._client = chromadb.HttpClient(
                    host=settings.chroma_host, port=settings.chroma_port,
                    settings=_chroma_settings(),
                )
            else:
                path = data_dir / "chroma"
                path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(
                    path=str(path), settings=_chroma_settings()
                )
            self._shards = self._check_layout(settings.shards)
            self._collections: dict[int, Any] = {}
            self._max_batch = max(1, int(self._client.get_max_batch_size()))
        except MemoryUnavailable:
            raise
        except Exception as exc:
            raise MemoryUnavailable(f"cannot open the Chroma store: {exc}") from exc
        self._cache: OrderedDict[str, UserIndex] = OrderedDict()
        self._cache_bytes = 0
        self._too_large: set[str] = set()  # users searched in Chroma, never cached
        self._lock = threading.RLock()

    def _check_layout(self, wanted: int) -> int:
        layout = self._client.get_or_create_collection(
            LAYOUT_COLLECTION, metadata={"shards": wanted}, embedding_function=None
        )
        stored = int((layout.metadata or {}).get("shards", wanted))
        if stored != wanted:
            log.warning(
                "store.shards=%d in settings but the store was created with %d; using %d",
                wanted, stored, stored,
            )
        return stored

    def _collection(self, user_id: str) -> Any:
        shard = shard_of(user_id, self._shards)
        found = self._collections.get(shard)
        if found is None:
            found = self._client.get_or_create_collection(
                f"memories_{shard:04d}",
                metadata={"hnsw:space": "cosine"},
                embedding_function=None,
            )
            self._collections[shard] = found
        return found

    # -- cache -----------------------------------------------------------------
    def _cached(self, user_id: str) -> UserIndex | None:
        index = self._cache.get(user_id)
        if index is None:
            return None
        ttl = self._settings.cache_ttl_seconds
        if ttl and time.monotonic() - index.loaded_at > ttl:
            self._evict(user_id)
            return None
        self._cache.move_to_end(user_id)
        return index

    def _evict(self, user_id: str) -> None:
        index = self._cache.pop(user_id, None)
        if index is not None:
            self._cache_bytes -= index.nbytes

    def _remember(self, user_id: str, index: UserIndex) -> None:
        self._evict(user_id)
        self._cache[user_id] = index
        self._cache_bytes += index.nbytes
        limit = self._settings.cache_max_mb * 1024 * 1024
        while self._cache_bytes > limit and len(self._cache) > 1:
            oldest = next(iter(self._cache))
            self._evict(oldest)

    def _load_user(self, user_id: str) -> UserIndex | None:
        """The user's index, from cache or Chroma; None when the user is too large to cache."""
        with self._lock:
            index = self._cached(user_id)
            if index is not None or user_id in self._too_large:
                return index
        collection = self._collection(user_id)
        got = collection.get(
            where={"user_id": user_id}, include=["embeddings", "documents", "metadatas"]
        )
        ids = got["ids"]
        if len(ids) > self._settings.cache_max_user_records:
            with self._lock:
                self._too_large.add(user_id)
            return None
        memories = [
            Memory.from_record(i, doc or "", dict(meta or {}))
            for i, doc, meta in zip(ids, got["documents"], got["metadatas"], strict=True)
        ]
        embeddings = got["embeddings"]
        matrix = (
            np.asarray(embeddings, dtype=np.float32)
            if len(ids)
            else np.zeros((0, self._dimension), dtype=np.float32)
        )
        index = UserIndex(memories, matrix)
        with self._lock:
            self._remember(user_id, index)
        return index

    # -- public API --------------------------------------------------------------
    def add(self, memories: Sequence[Memory], vectors: np.ndarray) -> None:
        if not memories:
            return
        # One Chroma call per shard (split at Chroma's batch limit), not one per user: each
        # call has a fixed cost of several ms, which dominates bulk writes of many users.
        by_shard: dict[int, list[int]] = {}
        for i, memory in enumerate(memories):
            by_shard.setdefault(shard_of(memory.user_id, self._shards), []).append(i)
        vectors = np.asarray(vectors, dtype=np.float32)
        try:
            for rows in by_shard.values():
                collection = self._collection(memories[rows[0]].user_id)
                for start in range(0, len(rows), self._max_batch):
                    part = rows[start : start + self._max_batch]
                    chunk = [memories[i] for i in part]
                    collection.add(
                        ids=[m.id for m in chunk],
                        embeddings=vectors[part],
                        documents=[m.text for m in chunk],
                        metadatas=[m.metadata() for m in chunk],
                    )
                    self._append_cached(chunk, vectors[part])
        except Exception as exc:
            raise MemoryUnavailable(f"store write failed: {exc}") from exc

    def _append_cached(self, memories: Sequence[Memory], vectors: np.ndarray) -> None:
        """Add just-written memories to the indexes of users already in the cache."""
        by_user: dict[str, list[int]] = {}
        for i, memory in enumerate(memories):
            by_user.setdefault(memory.user_id, []).append(i)
        with self._lock:
            for user_id, rows in by_user.items():
                index = self._cache.get(user_id)
                if index is not None:
                    self._cache_bytes -= index.nbytes
                    index.append([memories[i] for i in rows], vectors[rows])
                    self._cache_bytes += index.nbytes

    def search(self, user_id: str, vector: np.ndarray, k: int) -> list[ScoredMemory]:
        try:
            index = self._load_user(user_id)
            if index is None:
                return self._search_in_chroma(user_id, vector, k)
        except Exception as exc:
            raise MemoryUnavailable(f"store read failed: {exc}") from exc
        if not index.memories or k <= 0:
            return []
        scores = index.matrix @ vector.astype(np.float32)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [ScoredMemory(index.memories[i], float(scores[i])) for i in top]

    def _search_in_chroma(self, user_id: str, vector: np.ndarray, k: int) -> list[ScoredMemory]:
        got = self._collection(user_id).query(
            query_embeddings=[vector.astype(np.float32)],
            n_results=k,
            where={"user_id": user_id},
            include=["documents", "metadatas", "distances"],
        )
        return [
            ScoredMemory(Memory.from_record(i, doc or "", dict(meta or {})), 1.0 - float(dist))
            for i, doc, meta, dist in zip(
                got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0],
                strict=True,
            )
        ]

    def list_user(self, user_id: str, limit: int, offset: int = 0) -> list[Memory]:
        try:
            index = self._load_user(user_id)
            if index is not None:
                ordered = sorted(index.memories, key=lambda m: m.created_at, reverse=True)
                return ordered[offset : offset + limit]
            got = self._collection(user_id).get(
                where={"user_id": user_id}, include=["documents", "metadatas"]
            )
        except Exception as exc:
            raise MemoryUnavailable(f"store read failed: {exc}") from exc
        memories = [
            Memory.from_record(i, doc or "", dict(meta or {}))
            for i, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
        ]
        memories.sort(key=lambda m: m.created_at, reverse=True)
        return memories[offset : offset + limit]

    def count_user(self, user_id: str) -> int:
        index = self._load_user(user_id)
        if index is not None:
            return len(index.memories)
        return len(self._collection(user_id).get(where={"user_id": user_id}, include=[])["ids"])

    def cached_users(self) -> list[str]:
        """Users whose index is in memory, least recently used first."""
        with self._lock:
            return list(self._cache)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0
        self._collections.clear()
