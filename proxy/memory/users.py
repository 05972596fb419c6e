"""Who has memories: one summary per owner (tenant + user), read from the store itself.

Chroma is the source of truth for what is remembered, so the users listing (``GET
/v1/users``, the console's users page) counts what the shard collections hold, reading only
their metadata, a batch at a time. That costs in proportion to the whole store (measured in
the README's console section); nothing else is kept in step with it, so it cannot drift.
``last_activity`` is the owner's latest memory change (added, updated or superseded).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from proxy.memory.chroma import Shards
from proxy.memory.model import OWNER_SEPARATOR


@dataclass
class UserSummary:
    tenant: str
    user_id: str
    memories: int = 0  # current (not superseded): what retrieval can return
    superseded: int = 0
    last_activity: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "user", "tenant": self.tenant, "user_id": self.user_id,
            "memories": self.memories, "superseded": self.superseded,
            "last_activity": self.last_activity,
        }


def summarise(
    metadatas: Iterable[dict[str, Any] | None],
    owners: dict[tuple[str, str], UserSummary] | None = None,
) -> dict[tuple[str, str], UserSummary]:
    """Stored memories' metadata → a summary per owner (added to ``owners``, when given)."""
    owners = {} if owners is None else owners
    for meta in metadatas:
        if not meta or "owner" not in meta:
            continue
        tenant, _, user_id = str(meta["owner"]).partition(OWNER_SEPARATOR)
        summary = owners.get((tenant, user_id))
        if summary is None:
            summary = owners[(tenant, user_id)] = UserSummary(tenant, user_id)
        if meta.get("superseded_by"):
            summary.superseded += 1
        else:
            summary.memories += 1
        changed = max(float(meta.get(key) or 0.0)
                      for key in ("created_at", "updated_at", "valid_to"))
        summary.last_activity = max(summary.last_activity, changed)
    return owners


def scan_owners(shards: Shards, batch: int) -> list[UserSummary]:
    """Every owner with at least one stored memory (superseded ones count), any order."""
    owners: dict[tuple[str, str], UserSummary] = {}
    for shard in range(shards.count):
        collection = shards.collection_at(shard)
        offset = 0
        while True:
            got = collection.get(include=["metadatas"], limit=batch, offset=offset)
            metadatas = got["metadatas"] or []
            summarise(metadatas, owners)
            if len(metadatas) < batch:
                break
            offset += batch
    return list(owners.values())
