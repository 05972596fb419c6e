"""Per-owner state shared by replicas: a write version (cache freshness) and the last forget.

Several replicas each keep an in-process cache of owners' memory indexes
(proxy/memory/cache.py). On a shared database the row ``owner_state(tenant, user_id)``
carries:

- ``version``: bumped after every memory write of the owner, on whichever replica, *after*
  the write reached Chroma. A replica remembers the version its cached index reflects; before
  using the index it reads the current version (one primary-key probe on a pooled
  connection: the measured cost is in the README) and reloads from Chroma when they differ.
  Reading the version before loading makes the check conservative: a write racing the load
  is seen at the next check. A replica's own write moves its remembered version only when
  nobody else's write came between (the bump returned exactly one more).
- ``forgotten_at``: the owner's last forget, set before its memories are deleted. Work that
  began before it (an extraction job running on any replica) writes nothing
  (proxy/memory/forget_fence.py asks ``forgotten_at``).

When the database cannot be read the check fails open to Chroma, the source of truth: the
index is reloaded (slower, never stale), and every remembered version is dropped, so each
owner is reloaded once after the outage. A bump that fails is retried at the next successful
check; until then other replicas may serve that write's owner from their cache
(``store.cache_ttl_seconds`` bounds it).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from proxy.errors import MemoryUnavailable
from proxy.state.engine import Database, Target, open_database

log = logging.getLogger("memproxy.state")

Owner = tuple[str, str]

_BUMP = (
    "INSERT INTO owner_state (tenant, user_id, version) VALUES (?, ?, 1)"
    " ON CONFLICT (tenant, user_id) DO UPDATE SET version = owner_state.version + 1"
    " RETURNING version"
)
_FORGOT = (
    "INSERT INTO owner_state (tenant, user_id, version, forgotten_at) VALUES (?, ?, 1, ?)"
    " ON CONFLICT (tenant, user_id) DO UPDATE SET version = owner_state.version + 1,"
    " forgotten_at = excluded.forgotten_at"
)


class SharedOwners:
    """Thread-safe. Blocking (one round trip per call): call it from a worker thread."""

    def __init__(self, db: Database, max_owners: int = 1_000_000):
        self._db = db
        self._known: OrderedDict[Owner, int] = OrderedDict()  # version our cache reflects
        self._unsent: set[Owner] = set()  # bumps that failed, sent again later
        self._max = max_owners
        self._lock = threading.Lock()

    @classmethod
    def open(cls, target: Target, *, pool_size: int = 8) -> SharedOwners:
        return cls(open_database(target, pool_size=pool_size))

    # -- freshness ------------------------------------------------------------------------
    def stale(self, owner: Owner) -> bool:
        """Whether a cached index of ``owner`` may miss another replica's write (drop it)."""
        try:
            rows = self._db.read(
                "SELECT version FROM owner_state WHERE tenant = ? AND user_id = ?", owner
            )
        except Exception as exc:
            log.warning("owner versions unreadable (%s): reading memories from Chroma",
                        type(exc).__name__)
            with self._lock:
                self._known.clear()
            return True
        version = int(rows[0][0]) if rows else 0
        with self._lock:
            fresh = self._known.get(owner) == version
            self._known[owner] = version
            self._known.move_to_end(owner)
            while len(self._known) > self._max:
                self._known.popitem(last=False)
            unsent = list(self._unsent)
        if unsent:
            self._send_unsent(unsent)
        return not fresh

    def wrote(self, owner: Owner) -> None:
        """After this replica wrote ``owner``'s memories (to Chroma and its own cache)."""
        try:
            version = int(self._db.write(lambda conn: conn.execute(_BUMP, owner).fetchone()[0]))
        except Exception as exc:
            log.warning("could not publish a memory write to other replicas (%s); retried",
                        type(exc).__name__)
            with self._lock:
                self._unsent.add(owner)
                self._known.pop(owner, None)
            return
        with self._lock:
            if self._known.get(owner) == version - 1:
                self._known[owner] = version
            else:  # another replica wrote in between: our index may miss it
                self._known.pop(owner, None)

    def _send_unsent(self, owners: list[Owner]) -> None:
        for owner in owners:
            with self._lock:
                self._unsent.discard(owner)
            self.wrote(owner)

    # -- forgetting -----------------------------------------------------------------------
    def forgot(self, owner: Owner, at: float) -> None:
        """Record a forget (raises when it cannot: a forget must hold on every replica)."""
        try:
            self._db.write(lambda conn: conn.execute(_FORGOT, (*owner, at)))
        except Exception as exc:
            raise MemoryUnavailable(f"cannot record the forget for every replica: {exc}") from exc
        with self._lock:
            self._known.pop(owner, None)

    def forgotten_at(self, owner: Owner) -> float | None:
        try:
            rows = self._db.read(
                "SELECT forgotten_at FROM owner_state WHERE tenant = ? AND user_id = ?", owner
            )
        except Exception as exc:
            raise MemoryUnavailable(f"cannot read the user's forget record: {exc}") from exc
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def ping(self) -> None:
        self._db.read("SELECT 1")

    def close(self) -> None:
        self._db.close()
