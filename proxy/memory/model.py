"""A memory: one remembered fact of one owner (tenant + user), its stored form, and the
store seam (``MemoryStore``; proxy/memory/store.py holds the Chroma implementation).

In Chroma a memory is a vector and flat scalar metadata: its text, the owner, agent and
session, timestamps, the supersede marks and the user metadata as one JSON text (Chroma
metadata values must be scalars; filters on user metadata run in Python over the owner's
memories, see proxy/memory/listing.py). Records written before the text moved into the
metadata hold it as their Chroma document, and read the same.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from proxy.gateway.identity import DEFAULT_TENANT
from proxy.memory.history import HistoryEvent, MemoryHistory
from proxy.memory.listing import Condition

if TYPE_CHECKING:
    from proxy.memory.users import UserSummary

Owner = tuple[str, str]  # (tenant, user_id): whose memories
# Ids never hold control characters (identity.check_id), so this cannot occur in a tenant.
OWNER_SEPARATOR = "\x1f"


def _finite_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def text_size_problem(text: str, max_chars: int) -> str | None:
    """Why ``text`` is too long to be a memory (store.max_memory_chars), or None."""
    if len(text) > max_chars:
        return f"is {len(text)} characters long; a memory holds at most {max_chars}"
    return None


def metadata_size_problem(metadata: dict[str, Any], max_bytes: int) -> str | None:
    """Why ``metadata`` is too large (store.max_metadata_bytes, as UTF-8 JSON), or None."""
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return f"is {size} bytes as JSON; at most {max_bytes} bytes are kept"
    return None


def owner_key(owner: Owner) -> str:
    """The owner as one metadata value: Chroma filters on one key ~3× faster than on two."""
    return f"{owner[0]}{OWNER_SEPARATOR}{owner[1]}"


@dataclass
class Memory:
    user_id: str
    text: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)
    agent_id: str | None = None
    session_id: str | None = None
    source: str = "llm"  # llm | raw | api | import
    tenant: str = DEFAULT_TENANT
    updated_at: float = 0.0  # 0: same as created_at
    metadata: dict[str, Any] = field(default_factory=dict)  # the user's own, JSON values
    superseded_by: str | None = None  # the id of the memory that replaced this one
    valid_to: float | None = None  # when it was superseded

    def __post_init__(self) -> None:
        # Microseconds: what Chroma's metadata keeps exactly, so a memory read back from the
        # store equals the one written (cursors and exports compare timestamps).
        self.created_at = round(self.created_at, 6)
        self.updated_at = round(self.updated_at or self.created_at, 6)
        if self.valid_to is not None:
            self.valid_to = round(self.valid_to, 6)

    @property
    def owner(self) -> Owner:
        return (self.tenant, self.user_id)

    def record_metadata(self, *, for_update: bool = False) -> dict[str, Any]:
        """The Chroma metadata: scalars only, only what is set (each key costs on every read).

        ``for_update``: unset keys as None, which Chroma's update (a merge) deletes.
        """
        meta: dict[str, Any] = {
            "owner": owner_key(self.owner),  # the one key reads filter on
            "created_at": self.created_at,
            "source": self.source,
            # The text, not as Chroma's document: a document is full-text indexed on every
            # write (our keyword search is our own), which cost ~45 % of a bulk add.
            "text": self.text,
        }
        optional = {
            "updated_at": self.updated_at if self.updated_at != self.created_at else None,
            "metadata": json.dumps(self.metadata, ensure_ascii=False, sort_keys=True)
            if self.metadata else None,
            "superseded_by": self.superseded_by,
            "valid_to": self.valid_to,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
        }
        # Chroma rejects None values on add: absent means "not set".
        meta.update({k: v for k, v in optional.items() if v is not None or for_update})
        return meta

    @classmethod
    def from_record(cls, memory_id: str, document: str, meta: dict[str, Any]) -> Memory:
        """A record as Chroma holds it: the text in the metadata, or, for records written
        before that, in the document."""
        tenant, _, user_id = str(meta["owner"]).partition(OWNER_SEPARATOR)
        text = meta["text"] if isinstance(meta.get("text"), str) else document
        try:
            # A NaN or Infinity stored before they were refused reads back as null, so the
            # record (and its owner's lists and exports) stays valid JSON.
            user_metadata = json.loads(meta.get("metadata") or "{}",
                                       parse_constant=lambda _: None, parse_float=_finite_or_none)
        except ValueError:
            user_metadata = {}
        created_at = float(meta.get("created_at", 0.0))
        valid_to = meta.get("valid_to")
        return cls(
            id=memory_id,
            user_id=user_id,
            text=text,
            created_at=created_at,
            agent_id=meta.get("agent_id"),
            session_id=meta.get("session_id"),
            source=str(meta.get("source", "llm")),
            tenant=tenant,
            updated_at=float(meta.get("updated_at") or created_at),
            metadata=user_metadata if isinstance(user_metadata, dict) else {},
            superseded_by=meta.get("superseded_by") or None,
            valid_to=float(valid_to) if valid_to is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The API's shape of a memory."""
        return {
            "id": self.id,
            "object": "memory",
            "memory": self.text,
            "tenant": self.tenant,
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "source": self.source,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "superseded_by": self.superseded_by,
            "valid_to": self.valid_to,
        }


@dataclass
class ScoredMemory:
    memory: Memory
    score: float  # the ranking's fused score: 0–1, relative to the user's other candidates
    similarity: float | None = None  # cosine of memory and query: absolute, comparable


@dataclass
class Candidates:
    """An owner's memories scored for one query, row-aligned, for proxy/memory/ranking.py."""

    memories: Sequence[Memory]
    dense: np.ndarray  # cosine similarity to the query
    keyword: np.ndarray  # BM25 score (0: no query term)
    created_at: np.ndarray
    vectors: np.ndarray  # unit rows (MMR)
    eligible: np.ndarray  # rows the caller may get back (filters, superseded)
    complete: bool = True  # False: the nearest rows of an owner too large to cache
    asks: np.ndarray | None = None  # True: the memory only asks (keyword.asks_only)


class MemoryStore(Protocol):
    """What the proxy needs of a store; ChromaStore is the implementation (see its methods)."""

    history: MemoryHistory

    def add(
        self, memories: Sequence[Memory], vectors: np.ndarray, *, actor: str = "api"
    ) -> None: ...

    def search(
        self, user_id: str, vector: np.ndarray, k: int, *, tenant: str = DEFAULT_TENANT,
        filters: Sequence[Condition] = (), include_superseded: bool = False,
    ) -> list[ScoredMemory]: ...

    def candidates(
        self, user_id: str, vector: np.ndarray, query: str, *, tenant: str = DEFAULT_TENANT,
        filters: Sequence[Condition] = (), include_superseded: bool = False, pool: int = 200,
    ) -> Candidates: ...

    def list_user(
        self, user_id: str, limit: int, offset: int = 0, *, tenant: str = DEFAULT_TENANT
    ) -> list[Memory]: ...

    def count_user(self, user_id: str, *, tenant: str = DEFAULT_TENANT) -> int: ...

    def get(self, memory_id: str) -> Memory | None: ...

    def update(
        self, memory_id: str, *, text: str | None = None, vector: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None, actor: str = "api",
    ) -> Memory | None: ...

    def supersede(
        self, old_id: str, new: Memory, vector: np.ndarray, *, actor: str = "api"
    ) -> Memory | None: ...

    def delete(self, memory_id: str, *, actor: str = "api") -> Memory | None: ...

    def delete_user(self, user_id: str, *, tenant: str = DEFAULT_TENANT) -> dict[str, int]: ...

    def restore(
        self, memories: Sequence[Memory], vectors: np.ndarray,
        history: Sequence[HistoryEvent] = (), *, actor: str = "import",
    ) -> None: ...

    def list_page(
        self, user_id: str, *, tenant: str = DEFAULT_TENANT, filters: Sequence[Condition] = (),
        limit: int = 100, cursor: str | None = None, include_superseded: bool = False,
    ) -> tuple[list[Memory], str | None]: ...

    def all_memories(self, user_id: str, *, tenant: str = DEFAULT_TENANT) -> list[Memory]: ...

    def vectors_of(
        self, user_id: str, *, tenant: str = DEFAULT_TENANT
    ) -> dict[str, np.ndarray]: ...

    def user_summaries(self) -> list[UserSummary]: ...

    def close(self) -> None: ...
