"""The write journal: embedded Chroma's writes accepted at once, applied behind, in batches.

An embedded Chroma write holds the interpreter while it runs (proxy/memory/chroma.py
``WritePacer``) and costs ~4 ms plus ~1 ms a record at 10k records: 5 ms for one record, 17 ms
for sixteen in one call. So a write of a shard's collection (add, upsert, update, delete) is
not sent to Chroma by the caller:

- It is appended to a SQLite file (``data_dir/chroma-journal.sqlite``: WAL, ``synchronous =
  NORMAL``, the state database's own durability) and to a queue in memory, and the caller
  goes on; the store then puts the change in its cached index (proxy/memory/indexes.py).
- One thread applies the queue in order, in rounds: a round starts when 16 records wait, the
  oldest has waited 50 ms, or a reader waits. Each shard's writes of one kind go as one Chroma
  call (a write joins an earlier call when no write between them touches its ids), at most 16
  records a call while chats are served, through the pacer; then the rows applied leave the
  file (``secure_delete``: their text is overwritten, a forgotten user's included).
- A read of a shard's collection first waits until the writes appended to that shard before
  it are applied (``settle``): a reader never sees Chroma behind what the store wrote.
- After a crash, what the file still holds is applied at the next start, before any read:
  every write is idempotent when repeated in order (Chroma ignores an ``add`` of an id it holds).
- A write Chroma refuses as such (a 4xx error, a ValueError) is dropped and logged, and
  ``refused`` is told its ids (the store reloads the owner); any other failure is retried with
  back-off, and reads of the shard wait meanwhile (then fail: ``MemoryUnavailable``).
Only for the embedded Chroma with no shared database (one process writes the data dir).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from proxy.errors import MemoryUnavailable

log = logging.getLogger("memproxy.store")

WRITES = ("add", "upsert", "update", "delete")
JOURNAL_FILENAME = "chroma-journal.sqlite"
ROUND_RECORDS = 4096  # records applied per round at most (a reader waits for its round)
# A round starts once this many records wait, or the oldest has waited WINDOW seconds, or a
# reader waits: one-at-a-time adds then share calls instead of each paying Chroma's fixed cost.
GATHER_RECORDS = 16
WINDOW = 0.05
# Records per Chroma call while ``contended`` (chats are being served): a call holds the
# interpreter ~4 ms + ~1 ms a record at 10k records, so 16 hold it about as long as one
# unbatched add used to at worst; otherwise up to Chroma's batch limit.
CONTENDED_CALL = 16
SETTLE_TIMEOUT = 30.0  # longest wait of a read for the writes before it
MAX_BACKOFF = 30.0


@dataclass
class _Write:
    seq: int
    shard: int
    method: str
    ids: list[str]
    kwargs: dict[str, Any]  # metadatas, documents, embeddings (an array) as Chroma takes them


@dataclass
class _Call:
    shard: int
    method: str
    keys: frozenset[str]
    writes: list[_Write] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    def arguments(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ids": [i for w in self.writes for i in w.ids]}
        for key in self.keys:
            if key == "embeddings":
                out[key] = np.concatenate([w.kwargs[key] for w in self.writes])
            else:
                out[key] = [v for w in self.writes for v in w.kwargs[key]]
        return out


def _encode(kwargs: dict[str, Any]) -> tuple[str, bytes | None]:
    body = {k: v for k, v in kwargs.items() if k != "embeddings"}
    vectors = kwargs.get("embeddings")
    return json.dumps(body), None if vectors is None else vectors.tobytes()


def _pieces(write: _Write, size: int) -> list[_Write]:
    """A write of more than ``size`` records as several (its ids are distinct)."""
    if len(write.ids) <= size or len(set(write.ids)) != len(write.ids):
        return [write]
    return [
        _Write(write.seq, write.shard, write.method, write.ids[start : start + size],
               {k: v[start : start + size] for k, v in write.kwargs.items()})
        for start in range(0, len(write.ids), size)
    ]


def _refusal(exc: BaseException) -> bool:
    """Chroma refused the write itself (bad input), as opposed to failing to do it."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return 400 <= int(code()) < 500
        except Exception:
            return False
    return isinstance(exc, (ValueError, TypeError))


class WriteJournal:
    """Thread-safe. ``direct(shard)`` is the shard's collection written without the journal."""

    def __init__(
        self, path: Path, direct: Callable[[int], Any], *, max_batch: int,
        dimension: int, refused: Callable[[int, list[str]], None] = lambda shard, ids: None,
        contended: Callable[[], bool] = lambda: False, max_pending: int = 20_000,
    ):
        self._direct = direct
        self._max_batch = max(1, max_batch)
        self._dimension = dimension
        self._refused = refused
        self._max_pending = max_pending
        self._contended = contended
        self._readers = 0  # reads waiting in ``settle``: a round starts at once
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS writes (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " shard INTEGER NOT NULL,"
            " method TEXT NOT NULL, body TEXT NOT NULL, vectors BLOB)"
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: list[_Write] = []
        self._pending_records = 0
        self._last_of_shard: dict[int, int] = {}
        self._applied = 0  # every write with seq <= this is in Chroma (or refused)
        self._taken: list[_Write] = []  # the round being applied
        self._closing = False
        self._failure: str | None = None
        self.calls = 0  # Chroma calls made, and writes in them (for the benchmark and tests)
        self.applied_writes = 0
        self.refusals = 0
        left = self._reload()
        if left:
            log.warning("applying %d writes journaled before the last stop", left)
        self._thread = threading.Thread(target=self._run, name="memproxy-journal", daemon=True)
        self._thread.start()

    def _reload(self) -> int:
        rows = self._db.execute(
            "SELECT seq, shard, method, body, vectors FROM writes ORDER BY seq"
        ).fetchall()
        for seq, shard, method, body, vectors in rows:
            kwargs = json.loads(body)
            ids = kwargs.pop("ids")
            if vectors is not None:
                kwargs["embeddings"] = np.frombuffer(vectors, dtype=np.float32).reshape(
                    len(ids), -1
                )
            self._queue.append(_Write(seq, shard, method, ids, kwargs))
            self._pending_records += len(ids)
            self._last_of_shard[shard] = seq
        self._applied = rows[0][0] - 1 if rows else 0
        return len(rows)

    # -- the callers' side ---------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records appended and not yet applied."""
        with self._lock:
            return self._pending_records

    def append(self, shard: int, method: str, ids: Sequence[str], **kwargs: Any) -> None:
        """Journal one write of ``shard``'s collection; it reaches Chroma behind the caller."""
        if method not in WRITES:
            raise ValueError(f"not a write: {method}")
        ids = [str(i) for i in ids]
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        for key, values in kwargs.items():
            if len(values) != len(ids):
                raise ValueError(f"{len(values)} {key} for {len(ids)} ids")
        if "embeddings" in kwargs:
            vectors = np.ascontiguousarray(kwargs["embeddings"], dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != self._dimension:
                raise ValueError(f"embeddings of shape {vectors.shape}, not (n, {self._dimension})")
            kwargs["embeddings"] = vectors
        body, blob = _encode({"ids": ids, **kwargs})
        with self._changed:
            if self._closing:
                raise MemoryUnavailable("the store is closing")
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while self._pending_records >= self._max_pending:  # Chroma is far behind
                if not self._changed.wait(deadline - time.monotonic()):
                    raise MemoryUnavailable(
                        f"{self._pending_records} writes wait for Chroma: {self._failure}"
                    )
            try:
                seq = self._db.execute(
                    "INSERT INTO writes (shard, method, body, vectors) VALUES (?, ?, ?, ?)",
                    (shard, method, body, blob),
                ).lastrowid
            except sqlite3.Error as exc:
                raise MemoryUnavailable(f"cannot journal a write: {exc}") from exc
            assert seq is not None
            self._queue.append(_Write(seq, shard, method, ids, kwargs))
            self._pending_records += len(ids)
            self._last_of_shard[shard] = seq
            if len(self._queue) == 1 or self._pending_records >= GATHER_RECORDS:
                self._changed.notify_all()

    def settle(self, shard: int, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until every write appended to ``shard`` so far is in Chroma."""
        with self._changed:
            target = self._last_of_shard.get(shard, 0)
            if self._applied >= target:
                return
            deadline = time.monotonic() + timeout
            self._readers += 1
            self._changed.notify_all()
            try:
                while self._applied < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._thread.is_alive():
                        raise MemoryUnavailable(
                            f"writes to the store are not applied: {self._failure or 'closed'}"
                        )
                    self._changed.wait(remaining)
            finally:
                self._readers -= 1

    def flush(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until every write appended so far is in Chroma; then empty the file's
        write-ahead log too: the rows applied were overwritten (``secure_delete``), and no
        older copy of them stays in the log (a forget's guarantee, under load as well)."""
        with self._lock:
            shards = list(self._last_of_shard)
        for shard in shards:
            self.settle(shard, timeout)
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("could not truncate the journal's log: %s", exc)

    def close(self, timeout: float = 60.0) -> None:
        """Apply what is queued, then stop; what could not be applied stays in the file."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout)
        with self._lock:
            left = len(self._queue) + len(self._taken)
            self._db.close()
        if left:
            log.error("%d journaled writes not applied yet; the next start applies them", left)

    # -- the applying thread ---------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._changed.wait()
                if not self._queue:
                    return  # closing, nothing left
                gather_until = time.monotonic() + WINDOW
                while (self._pending_records < GATHER_RECORDS and not self._readers
                       and not self._closing):
                    remaining = gather_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                records = 0
                take = 0
                for write in self._queue:
                    if take and records + len(write.ids) > ROUND_RECORDS:
                        break
                    records += len(write.ids)
                    take += 1
                self._taken, self._queue = self._queue[:take], self._queue[take:]
            try:
                self._apply(self._taken)
            except Exception as exc:
                with self._changed:
                    self._failure = f"{type(exc).__name__}: {exc}"
                    self._queue = self._taken + self._queue
                    self._taken = []
                    closing = self._closing
                log.error("journaled writes failed (retrying in %.1f s): %s", backoff,
                          self._failure)
                if closing and backoff >= MAX_BACKOFF:
                    return
                time.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            backoff = 0.5
            last = self._taken[-1].seq
            with self._changed:
                records = sum(len(w.ids) for w in self._taken)
                try:
                    self._db.execute("DELETE FROM writes WHERE seq <= ?", (last,))
                except sqlite3.Error as exc:  # applied again after a restart: harmless
                    log.warning("could not clear applied journal rows: %s", exc)
                self._applied = last
                self._pending_records -= records
                self.applied_writes += len(self._taken)
                self._taken = []
                self._failure = None
                self._changed.notify_all()

    def _apply(self, writes: list[_Write]) -> None:
        limit = min(self._max_batch, CONTENDED_CALL) if self._contended() else self._max_batch
        for call in self._calls(writes, limit):
            collection = self._direct(call.shard)
            if self._send(collection, call) is not None:
                self._apply_one_by_one(collection, call)

    def _send(self, collection: Any, call: _Call) -> Exception | None:
        """Make the call; Chroma's refusal is returned, any other failure raised."""
        try:
            getattr(collection, call.method)(**call.arguments())
        except Exception as exc:
            if not _refusal(exc):
                raise
            return exc
        self.calls += 1
        return None

    def _apply_one_by_one(self, collection: Any, call: _Call) -> None:
        """A refused call: each write on its own, so one bad write does not sink the others."""
        for write in call.writes:
            refusal = self._send(
                collection, _Call(call.shard, call.method, call.keys, [write], set(write.ids))
            )
            if refusal is not None:
                self.refusals += 1
                log.error("Chroma refused a journaled %s of %d records (%s: %s); dropped",
                          call.method, len(write.ids), type(refusal).__name__, refusal)
                self._refused(call.shard, write.ids)

    def _calls(self, writes: list[_Write], limit: int) -> list[_Call]:
        """The writes as Chroma calls: per shard in order, a write joining the latest call of
        its kind unless a call after that one touches one of its ids."""
        by_shard: dict[int, list[_Call]] = {}
        for write in (piece for whole in writes for piece in _pieces(whole, limit)):
            calls = by_shard.setdefault(write.shard, [])
            keys = frozenset(write.kwargs)
            target = None
            for call in reversed(calls):
                if (call.method == write.method and call.keys == keys
                        and len(call.ids) + len(write.ids) <= limit
                        and call.ids.isdisjoint(write.ids)):
                    target = call
                    break
                if not call.ids.isdisjoint(write.ids):
                    break
            if target is None or len(set(write.ids)) != len(write.ids):
                target = _Call(write.shard, write.method, keys)
                calls.append(target)
            target.writes.append(write)
            target.ids.update(write.ids)
        return [call for calls in by_shard.values() for call in calls]


class JournaledCollection:
    """A shard's collection whose writes go through the journal and whose reads settle first."""

    def __init__(self, collection: Any, shard: int, journal: WriteJournal):
        self._collection = collection
        self._shard = shard
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        if name in WRITES:
            return lambda ids, **kwargs: self._journal.append(self._shard, name, ids, **kwargs)
        attribute = getattr(self._collection, name)
        if not callable(attribute):
            return attribute

        def read(*args: Any, **kwargs: Any) -> Any:
            self._journal.settle(self._shard)
            return attribute(*args, **kwargs)
        return read
