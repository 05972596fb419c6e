"""The audit trail of memories: one row per change (table ``memory_history``).

Events: ``ADD`` (new_text), ``UPDATE`` (old_text → new_text), ``SUPERSEDE`` (the old memory
kept, marked replaced; new_text is its successor's text), ``DELETE`` (old_text). ``actor``
says who made the change: ``api``, ``import`` or ``job:<id>`` for an extraction job.
Rows carry the owner (tenant, user), so a user's history is exported and forgotten with them,
and history is never shown across owners even for an id someone else once used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from proxy.state.engine import Row, Target, open_database

Event = Literal["ADD", "UPDATE", "SUPERSEDE", "DELETE"]
EVENTS: tuple[Event, ...] = ("ADD", "UPDATE", "SUPERSEDE", "DELETE")


@dataclass
class HistoryEvent:
    memory_id: str
    tenant: str
    user_id: str
    event: Event
    old_text: str | None
    new_text: str | None
    created_at: float
    actor: str = "api"
    id: int | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Row) -> HistoryEvent:
        return cls(
            memory_id=row["memory_id"], tenant=row["tenant"], user_id=row["user_id"],
            event=row["event"], old_text=row["old_text"], new_text=row["new_text"],
            created_at=row["created_at"], actor=row["actor"], id=row["id"],
        )


class MemoryHistory:
    """Blocking, thread-safe; in the database the job queue uses (SQLite file or Postgres)."""

    def __init__(self, target: Target, *, pool_size: int = 8):
        self._db = open_database(target, pool_size=pool_size)

    def record(self, events: Iterable[HistoryEvent]) -> None:
        rows = [
            (e.memory_id, e.tenant, e.user_id, e.event, e.old_text, e.new_text, e.created_at,
             e.actor)
            for e in events
        ]
        if not rows:
            return
        self._db.write(lambda conn: conn.executemany(
            "INSERT INTO memory_history (memory_id, tenant, user_id, event, old_text, new_text,"
            " created_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows,
        ))

    def of_memory(self, memory_id: str) -> list[HistoryEvent]:
        rows = self._db.read(
            "SELECT * FROM memory_history WHERE memory_id = ? ORDER BY id", (memory_id,)
        )
        return [HistoryEvent.from_row(r) for r in rows]

    def of_owner(self, tenant: str, user_id: str) -> list[HistoryEvent]:
        rows = self._db.read(
            "SELECT * FROM memory_history WHERE tenant = ? AND user_id = ? ORDER BY id",
            (tenant, user_id),
        )
        return [HistoryEvent.from_row(r) for r in rows]

    def owners(self, memory_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Who each id belongs (or belonged) to, from its first history row."""
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(memory_ids), 500):
            part = list(memory_ids[start : start + 500])
            rows = self._db.read(
                "SELECT memory_id, tenant, user_id FROM memory_history WHERE memory_id IN"
                f" ({', '.join('?' for _ in part)}) ORDER BY id DESC", part,
            )
            found.update({r["memory_id"]: (r["tenant"], r["user_id"]) for r in rows})
        return found

    def delete_owner(self, tenant: str, user_id: str) -> int:
        return int(self._db.write(lambda conn: conn.execute(
            "DELETE FROM memory_history WHERE tenant = ? AND user_id = ?", (tenant, user_id)
        ).rowcount))

    def ping(self) -> None:
        self._db.read("SELECT 1")

    def close(self) -> None:
        self._db.close()
