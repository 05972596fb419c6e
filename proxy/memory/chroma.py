"""Chroma's side of the store: the layout record, the shard collections, records read back.

The layout itself is explained in proxy/memory/store.py, which opens the client and is the only
module that imports chromadb (this one works on the client it is handed). Every record's
metadata carries ``owner`` (proxy/memory/model.py ``owner_key``), so an owner's memories are one
``where`` filter in its shard.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from proxy.gateway.identity import DEFAULT_TENANT
from proxy.memory.journal import WRITES, JournaledCollection, WriteJournal
from proxy.memory.model import Memory, Owner, owner_key

log = logging.getLogger("memproxy.store")

LAYOUT_COLLECTION = "memproxy_layout"
T = TypeVar("T")


class WritePacer:
    """Embedded Chroma writes one at a time; while ``contended`` (a retrieval is running),
    each write is followed by a rest as long as itself.

    Chroma's Rust bindings release the GIL while they read but not while they write: an add
    holds it 7–25 ms here (140 ms at worst), and meanwhile no other thread of the process
    runs — the chats' retrievals included. Four extraction workers writing back to back made
    5 ms of ranking work take 83 ms at the median and 290 ms at p99; paced, 7.4 and 49 ms
    (bench note in README "Performance"). Writes then hold the GIL at most ``busy_share`` of
    the time and give up that much of their throughput — only while chats are waiting: with
    no retrieval running (an import at night, a script's adds) they go at full speed.
    """

    def __init__(self, busy_share: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self._rest_per_busy = (1.0 - busy_share) / busy_share
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at = 0.0
        # Set by the app to "a retrieval is running"; a process without retrievals (the CLI's
        # import) has nothing to protect, and its writes never rest.
        self.contended: Callable[[], bool] = lambda: False

    def run(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            wait = self._next_at - self._clock()
            if wait > 0 and self.contended():
                time.sleep(wait)
            started = self._clock()
            try:
                return write(*args, **kwargs)
            finally:
                ended = self._clock()
                self._next_at = ended + (ended - started) * self._rest_per_busy


class PacedCollection:
    """A Chroma collection whose writes go through a ``WritePacer``; reads go straight on."""

    def __init__(self, collection: Any, pacer: WritePacer):
        self._collection = collection
        self._pacer = pacer

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._collection, name)
        if name in WRITES:
            return lambda *args, **kwargs: self._pacer.run(attribute, *args, **kwargs)
        return attribute


def stored_shards(client: Any, wanted: int) -> int:
    """The store's shard count: as recorded when it was created, else ``wanted`` (recorded)."""
    layout = client.get_or_create_collection(
        LAYOUT_COLLECTION, metadata={"shards": wanted}, embedding_function=None
    )
    stored = int((layout.metadata or {}).get("shards", wanted))
    if stored != wanted:
        log.warning(
            "store.shards=%d in settings but the store was created with %d; using %d",
            wanted, stored, stored,
        )
    return stored


def shard_of(user_id: str, shards: int, tenant: str = DEFAULT_TENANT) -> int:
    key = user_id if tenant == DEFAULT_TENANT else f"{tenant}\x00{user_id}"
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % shards


class Shards:
    """The store's ``count`` shard collections (cosine space), opened on first use.
    ``pacer``: embedded Chroma's writes are paced (a server's are not: its client waits on a
    socket, without the GIL)."""

    def __init__(self, client: Any, wanted: int, pacer: WritePacer | None = None):
        self._client = client
        self.count = stored_shards(client, wanted)
        self._collections: dict[int, Any] = {}
        self._direct: dict[int, Any] = {}
        self._pacer = pacer
        # Set by the store: writes go through the journal (proxy/memory/journal.py).
        self.journal: WriteJournal | None = None

    def of(self, owner: Owner) -> int:
        return shard_of(owner[1], self.count, owner[0])

    def direct_at(self, shard: int) -> Any:
        """The shard's collection, written straight to Chroma (paced), not journaled."""
        found = self._direct.get(shard)
        if found is None:
            found = self._client.get_or_create_collection(
                f"memories_{shard:04d}",
                metadata={"hnsw:space": "cosine"},
                embedding_function=None,
            )
            if self._pacer is not None:
                found = PacedCollection(found, self._pacer)
            self._direct[shard] = found
        return found

    def collection_at(self, shard: int) -> Any:
        found = self._collections.get(shard)
        if found is None:
            found = self.direct_at(shard)
            if self.journal is not None:
                found = JournaledCollection(found, shard, self.journal)
            self._collections[shard] = found
        return found

    def collection(self, owner: Owner) -> Any:
        return self.collection_at(self.of(owner))

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        self._collections.clear()
        self._direct.clear()


def owner_where(owner: Owner) -> dict[str, Any]:
    return {"owner": owner_key(owner)}


def memories_from(got: dict[str, Any], nested: bool = False) -> list[Memory]:
    """The memories in a Chroma ``get`` answer (``nested``: a one-query ``query`` answer)."""
    ids, docs, metas = got["ids"], got["documents"], got["metadatas"]
    if nested:
        ids, docs, metas = ids[0], docs[0], metas[0]
    return [
        Memory.from_record(i, doc or "", dict(meta or {}))
        for i, doc, meta in zip(ids, docs, metas, strict=True)
    ]
