"""Background work: extraction jobs queued after a response completes.

In-process for now: jobs live in an asyncio queue and are processed by one worker task,
so one user's jobs apply in order. A caller's API key travels inside the job object only
(memory, never disk or logs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proxy.identity import Identity

log = logging.getLogger("memproxy.jobs")


@dataclass
class ExtractionJob:
    identity: Identity
    user_texts: list[str]
    assistant_text: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    created_at: float = field(default_factory=time.time)


class JobQueue:
    def __init__(self, handler: Callable[[ExtractionJob], Awaitable[object]], maxsize: int):
        self._handler = handler
        self._queue: asyncio.Queue[ExtractionJob] = asyncio.Queue(maxsize=maxsize)
        self._task: asyncio.Task[None] | None = None
        self.processed = 0
        self.failed = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def submit(self, job: ExtractionJob) -> bool:
        try:
            self._queue.put_nowait(job)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("extraction queue full; job for one user dropped")
            return False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="memproxy-extraction")

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._handler(job)
                self.processed += 1
            except Exception as exc:
                self.failed += 1
                log.warning("extraction job failed: %s: %s", type(exc).__name__, exc)
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Wait until every queued job has been handled (tests, shutdown)."""
        await self._queue.join()

    async def stop(self, grace_seconds: float) -> None:
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout=grace_seconds)
        except asyncio.TimeoutError:
            log.warning("shutdown: %d extraction jobs not processed", self._queue.qsize())
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
