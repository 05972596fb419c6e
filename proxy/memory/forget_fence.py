"""Forget sticks: work that began before its owner was forgotten writes nothing.

A worker applies a job's result inside ``work_started(job.created_at)``. The store, under its
write lock, asks ``ForgetLog.refuses(owner)`` right before every write: a write on behalf of
work that started at or before the owner's last forget is dropped. Writes outside any work
(the memory API, an import) are never refused: they come after the forget by definition.

The start time travels in a context variable because the writes happen deep in extraction
code that knows nothing of forgetting, in worker threads (anyio copies the context into
them). Forget times are kept in process memory for ``keep_seconds``: forgetting a user also
deletes their queued jobs, so only work already running can still write.

Replicas on a shared database (proxy/state/owners.py): a forget is also recorded there
(before the memories are deleted), and a write made inside work asks the shared record too,
so a job running on replica B for a user forgotten on replica A writes nothing. When the
shared record cannot be read, such a write is refused with an error (the job fails and is
retried later) rather than risk writing for a forgotten user. Writes outside work never ask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

_WORK_STARTED: ContextVar[float | None] = ContextVar("memproxy_work_started", default=None)

KEEP_SECONDS = 86_400.0  # far longer than any job runs


@contextmanager
def work_started(started_at: float) -> Iterator[None]:
    """Store writes made inside belong to work (a job) that started at ``started_at``."""
    token = _WORK_STARTED.set(started_at)
    try:
        yield
    finally:
        _WORK_STARTED.reset(token)


class SharedForgets(Protocol):
    """Forget times every replica sees (proxy.state.owners.SharedOwners)."""

    def forgot(self, owner: tuple[str, str], at: float) -> None: ...

    def forgotten_at(self, owner: tuple[str, str]) -> float | None: ...


class ForgetLog:
    """When each owner was last forgotten. Not thread-safe: the store calls it under its lock."""

    def __init__(
        self, keep_seconds: float = KEEP_SECONDS, clock: Callable[[], float] = time.time,
        shared: SharedForgets | None = None,
    ):
        self._forgotten: dict[tuple[str, str], float] = {}
        self._keep = keep_seconds
        self._clock = clock
        self._shared = shared

    def forgot(self, owner: tuple[str, str]) -> None:
        """Record a forget; with a shared record it raises when that cannot be written."""
        now = self._clock()
        if self._shared is not None:
            self._shared.forgot(owner, now)
        self._forgotten.pop(owner, None)
        self._forgotten[owner] = now
        # Oldest first (re-inserted on each forget): drop what no running work can predate.
        while self._forgotten:
            oldest, at = next(iter(self._forgotten.items()))
            if at >= now - self._keep:
                break
            del self._forgotten[oldest]

    def refuses(self, owner: tuple[str, str]) -> bool:
        """Whether a write for ``owner`` now comes from work started before its forget."""
        started = _WORK_STARTED.get()
        if started is None:
            return False
        forgotten = self._forgotten.get(owner)
        if self._shared is not None:  # a later forget on another replica counts too
            elsewhere = self._shared.forgotten_at(owner)  # raises: the write fails, retried
            if elsewhere is not None and (forgotten is None or elsewhere > forgotten):
                forgotten = elsewhere
        return forgotten is not None and started <= forgotten
