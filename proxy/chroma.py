"""Chroma's side of the store: client settings, the layout record, records read back.

The layout itself is explained in proxy/store.py, which opens the client and is the only
module that imports chromadb (this one works on the client it is handed). Every record's
metadata carries ``owner`` (proxy/memory.py ``owner_key``), so an owner's memories are one
``where`` filter in its shard.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.memory import Memory, Owner, owner_key

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
