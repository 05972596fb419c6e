"""Per-owner snapshots: a compact copy of a cached index in the data dir, for fast cold loads.

Loading an owner from Chroma costs ~650 ms at 10k memories (Chroma's filtered ``get`` with
embeddings, then records → memories, then the BM25 index); the snapshot — vectors as one
float32 array, the memories' fields and each memory's keyword term counts as JSON — loads in
a fraction of that (bench/overhead.py, README). Chroma stays the source of truth:

- A snapshot is written after a load from Chroma that was cached (in the background), when
  the cache's size limit pushes out an owner whose snapshot a write removed, and at close for
  every such owner still cached.
- Every write to an owner removes its snapshot *before* Chroma is written (a crash between
  the two leaves no stale snapshot) and again after the cached index has the change; a
  snapshot being written meanwhile is not put in place (``generation``). Forgetting an owner
  removes it the same way.
- Only with the embedded Chroma and no shared database: another replica's writes could not
  remove a snapshot on this disk.
A file that cannot be read, or was written for another layout of ``Memory``, is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from proxy.memory.cache import UserIndex
from proxy.memory.keyword import Analyzer, KeywordIndex
from proxy.memory.model import Memory, Owner, owner_key

log = logging.getLogger("memproxy.store")

FORMAT = 1
FIELDS = tuple(f.name for f in fields(Memory))


def _parse(encoded: bytes) -> Any:
    try:
        return orjson.loads(encoded)  # ~4x json's speed on a 10k-memory header
    except orjson.JSONDecodeError:  # a lone surrogate ("\ud800"), which orjson refuses
        return json.loads(encoded.decode("utf-8"))


class Snapshots:
    """Thread-safe. ``root`` is ``<data_dir>/snapshots``."""

    def __init__(self, root: Path, dimension: int):
        self._root = root
        self._dimension = dimension
        self._generation: dict[Owner, int] = {}
        self._dirty: set[Owner] = set()  # a write removed the snapshot of a cached owner
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="memproxy-snapshot")

    def path(self, owner: Owner) -> Path:
        digest = hashlib.sha256(owner_key(owner).encode("utf-8", "surrogatepass")).hexdigest()
        return self._root / digest[:2] / f"{digest}.npz"

    def generation(self, owner: Owner) -> int:
        with self._lock:
            return self._generation.get(owner, 0)

    def drop(self, owner: Owner) -> None:
        """Before and after every write of ``owner``: its snapshot is gone."""
        with self._lock:
            self._generation[owner] = self._generation.get(owner, 0) + 1
            self._dirty.add(owner)
            try:
                self.path(owner).unlink()
            except FileNotFoundError:
                pass

    def load(self, owner: Owner, analyzer: Analyzer) -> UserIndex | None:
        path = self.path(owner)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = _parse(bytes(data["header"]))
                matrix = np.ascontiguousarray(data["matrix"], dtype=np.float32)
            if (header.get("format") != FORMAT or tuple(header.get("fields", ())) != FIELDS
                    or header.get("owner") != list(owner)):
                return None
            rows = header["memories"]
            terms, lengths = header["terms"], header["lengths"]
            if not (len(rows) == len(terms) == len(lengths) == len(matrix)) or (
                    len(matrix) and matrix.shape[1] != self._dimension):
                return None
            memories = [Memory(*row) for row in rows]
            keyword = KeywordIndex.from_counts(analyzer, terms, lengths)
            matrix = matrix.reshape(len(memories), self._dimension)
        except FileNotFoundError:
            return None
        except Exception as exc:  # unreadable or foreign: Chroma answers instead
            log.warning("ignored the snapshot %s (%s: %s)", path.name, type(exc).__name__, exc)
            return None
        return UserIndex(memories, matrix, keyword)

    def evicted(self, owner: Owner, index: UserIndex) -> None:
        """The cache let ``index`` go: keep it as the snapshot if a write removed that."""
        with self._lock:
            if owner not in self._dirty:
                return
            generation = self._generation.get(owner, 0)
        self.save_later(owner, index, generation)

    def save_later(self, owner: Owner, index: UserIndex, generation: int) -> None:
        self._writer.submit(self._save_quietly, owner, index, generation)

    def _save_quietly(self, owner: Owner, index: UserIndex, generation: int) -> None:
        try:
            self.save(owner, index, generation)
        except Exception as exc:  # a full disk: the next cold load reads Chroma, no harm
            log.warning("could not write a snapshot (%s: %s)", type(exc).__name__, exc)

    def save(self, owner: Owner, index: UserIndex, generation: int) -> None:
        """Write ``index`` as ``owner``'s snapshot, unless a write came after ``generation``."""
        with index.lock:  # rows are replaced, never changed in place, except the matrix's
            memories = list(index.memories)
            terms, lengths = index.keyword.term_counts()
            matrix = np.array(index.matrix, dtype=np.float32)
        header: dict[str, Any] = {
            "format": FORMAT, "fields": FIELDS, "owner": list(owner),
            "memories": [[getattr(m, name) for name in FIELDS] for m in memories],
            "terms": terms, "lengths": lengths,
        }
        path = self.path(owner)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.partial-{os.getpid()}-{threading.get_ident()}.npz")
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8", "surrogatepass")
        with open(partial, "wb") as out:
            np.savez(out, header=np.frombuffer(encoded, dtype=np.uint8), matrix=matrix)
        with self._lock:
            if self._generation.get(owner, 0) != generation:
                partial.unlink(missing_ok=True)
                return
            os.replace(partial, path)
            self._dirty.discard(owner)

    def flush(self, cached: list[tuple[Owner, UserIndex]]) -> None:
        """At close: every cached owner whose snapshot a write removed gets a new one."""
        self._writer.shutdown(wait=True)
        for owner, index in cached:
            with self._lock:
                wanted = owner in self._dirty
            if wanted:
                self._save_quietly(owner, index, self.generation(owner))
