"""Chroma's side of the store: the layout record, the shard collections, records read back.

The layout itself is explained in proxy/memory/store.py, which opens the client and is the only
module that imports chromadb (this one works on the client it is handed). Every record's
metadata carries ``owner`` (proxy/memory/model.py ``owner_key``), so an owner's memories are one
``where`` filter in its shard.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from proxy.gateway.identity import DEFAULT_TENANT
from proxy.memory.model import Memory, Owner, owner_key

log = logging.getLogger("memproxy.store")

LAYOUT_COLLECTION = "memproxy_layout"


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
    """The store's ``count`` shard collections (cosine space), opened on first use."""

    def __init__(self, client: Any, wanted: int):
        self._client = client
        self.count = stored_shards(client, wanted)
        self._collections: dict[int, Any] = {}

    def of(self, owner: Owner) -> int:
        return shard_of(owner[1], self.count, owner[0])

    def collection_at(self, shard: int) -> Any:
        found = self._collections.get(shard)
        if found is None:
            found = self._client.get_or_create_collection(
                f"memories_{shard:04d}",
                metadata={"hnsw:space": "cosine"},
                embedding_function=None,
            )
            self._collections[shard] = found
        return found

    def collection(self, owner: Owner) -> Any:
        return self.collection_at(self.of(owner))

    def close(self) -> None:
        self._collections.clear()


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
