"""Extraction workers: claim durable jobs (proxy/extraction/jobs.py) and run them, with the
callers' keys held in process memory only.

Workers run on the event loop; every SQLite call goes to a thread. A job that needs the
caller's key but finds none (the process that took the request is gone) is parked until the
user's next request brings one. On shutdown, in-flight jobs get ``shutdown_grace_seconds``
to finish; the rest are released, claimable at once by the next process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import socket
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio

from proxy.config import JobSettings
from proxy.errors import MemoryUnavailable
from proxy.extraction.jobs import ExtractionJob, ExtractionResult, JobStats, exchange_hash, owner_of
from proxy.extraction.queue import JobQueue
from proxy.gateway.identity import Identity
from proxy.memory.forget_fence import work_started

log = logging.getLogger("memproxy.jobs")

MAINTENANCE_SECONDS = 60.0


class JobHandler(Protocol):
    """What a worker does with a job (proxy.extraction.extractor.Extractor; fakes in tests)."""

    def needs_caller_key(self, job: ExtractionJob) -> bool: ...

    async def extract(self, job: ExtractionJob) -> ExtractionResult: ...

    async def apply(self, job: ExtractionJob, result: ExtractionResult) -> object: ...


def provider_of(model: str) -> str:
    """Which provider a key is for, by the extraction model's litellm prefix: a key seen on
    /v1/messages is an Anthropic key and must never reach the OpenAI upstream, or back."""
    prefix, slash, _ = model.partition("/")
    return prefix if slash and prefix == "anthropic" else ""


class CallerKeys:
    """Callers' API keys in process memory: by job, and each owner's latest per provider.
    Never persisted."""

    def __init__(self, max_owners: int = 100_000):
        self._by_job: dict[int, str] = {}
        self._by_owner: OrderedDict[str, str] = OrderedDict()
        self._max_owners = max_owners

    def remember(
        self, owner: str, key: str, job_id: int | None = None, model: str = ""
    ) -> None:
        slot = f"{owner}\0{provider_of(model)}"
        self._by_owner[slot] = key
        self._by_owner.move_to_end(slot)
        while len(self._by_owner) > self._max_owners:
            self._by_owner.popitem(last=False)
        if job_id is not None:
            self._by_job[job_id] = key

    def key_for(self, job_id: int | None, owner: str, model: str = "") -> str | None:
        if job_id is not None and job_id in self._by_job:
            return self._by_job[job_id]
        return self._by_owner.get(f"{owner}\0{provider_of(model)}")

    def forget(self, job_id: int | None) -> None:
        if job_id is not None:
            self._by_job.pop(job_id, None)


class AnsweredExchanges:
    """Exchanges answered to the client whose job is not stored yet, per owner (in process).

    A job row is written after the response went out, so a client asking "are my jobs done?"
    right after its answer could find none yet; this counts the exchanges on their way.
    An entry is dropped once its job is stored, or after ``ttl`` (a response whose client
    left before the job was written).
    """

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._entries: dict[int, tuple[str, float]] = {}
        self._next = itertools.count(1)
        self._ttl = ttl
        self._clock = clock

    def add(self, owner: str) -> int:
        token = next(self._next)
        self._entries[token] = (owner, self._clock() + self._ttl)
        return token

    def discard(self, token: int) -> None:
        self._entries.pop(token, None)

    def count(self, owner: str) -> int:
        now = self._clock()
        for token, (_, deadline) in list(self._entries.items()):
            if deadline < now:
                del self._entries[token]
        return sum(1 for who, _ in self._entries.values() if who == owner)


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def process_token() -> str:
    """Who holds a lease: host, pid and a per-start nonce (a container restart reuses pids)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_is_stale(holder: str, me: str) -> bool:
    """A lease held by a process on this host that no longer exists (killed, crashed)."""
    host, _, rest = holder.partition(":")
    pid_text, _, nonce = rest.partition(":")
    my_host, my_pid, my_nonce = me.split(":")
    if host != my_host or not pid_text.isdigit():
        return False  # another host: only the lease expiry can tell
    if int(pid_text) == int(my_pid):
        return nonce != my_nonce  # our pid, an earlier life
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ExtractionWorkers:
    """Submits jobs (the chat side) and runs them (``settings.workers`` concurrent tasks).

    ``handler`` None: jobs are still stored (nothing is lost) but not run — the memory store
    could not be opened; a restart with a working store picks them up.
    """

    def __init__(self, queue: JobQueue, handler: JobHandler | None, settings: JobSettings):
        self.queue = queue
        self._handler = handler
        self._settings = settings
        self.keys = CallerKeys()
        self.answered = AnsweredExchanges()
        self.token = process_token()
        self.counts: Counter[str] = Counter()
        self.db_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()  # a new job, a woken owner, shutdown
        self._stop = asyncio.Event()
        self._stopping = False
        self._waiting_owners: set[str] = set()
        self._in_flight: dict[int, ExtractionJob] = {}

    async def _db(self, fn: Any, *args: Any) -> Any:
        try:
            out = await anyio.to_thread.run_sync(fn, *args)
        except Exception as exc:
            self.db_error = f"{type(exc).__name__}: {exc}"
            raise
        self.db_error = None
        return out

    # -- the chat side ----------------------------------------------------------------------
    async def saw_caller(
        self, identity: Identity, api_key: str | None, model: str = ""
    ) -> None:
        """A successful request: keep its key in memory, wake the owner's parked jobs."""
        if api_key is None or identity.user_id is None:
            return
        owner = owner_of(identity)
        self.keys.remember(owner, api_key, model=model)
        if owner in self._waiting_owners:
            self._waiting_owners.discard(owner)
            try:
                if await self._db(self.queue.wake, owner, self.token):
                    self._wake.set()
            except Exception as exc:
                log.warning("could not wake parked jobs: %s", type(exc).__name__)

    async def submit(
        self, job: ExtractionJob, api_key: str | None, conversation: Sequence[Any] = ()
    ) -> int | None:
        """Store a job durably; returns its id, or None (a duplicate, or the database failed)."""
        job.has_caller_key = api_key is not None

        def enqueue() -> int | None:
            if conversation and not job.exchange_hash:
                job.exchange_hash = exchange_hash(job.identity, conversation)
            return self.queue.enqueue(job, self.token)

        try:
            job_id: int | None = await self._db(enqueue)
        except Exception as exc:
            # The chat already succeeded; losing this one exchange's facts is logged, counted.
            self.counts["enqueue_failures"] += 1
            log.error("could not store an extraction job: %s", redact(str(exc), api_key))
            return None
        if job_id is None:
            self.counts["duplicates"] += 1
            return None
        self.counts["enqueued"] += 1
        if api_key is not None:
            self.keys.remember(job.owner, api_key, job_id, job.model)
        self._wake.set()
        return job_id

    async def pending(self, identity: Identity) -> dict[str, int]:
        """One owner's unfinished jobs by state, ``answered`` for those not stored yet."""
        counts: dict[str, int] = await self._db(self.queue.pending_of, identity)
        return {"answered": self.answered.count(owner_of(identity)), **counts}

    async def stats(self) -> JobStats | None:
        """Counts by state for /metrics; None when the database cannot be read."""
        try:
            stats: JobStats = await self._db(self.queue.stats)
        except Exception as exc:
            log.warning("cannot read job stats: %s", exc)
            return None
        return stats

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopping and all(
            not task.done() for task in self._tasks
        )

    @property
    def healthy(self) -> bool:
        return self.running and self.db_error is None

    async def start(self) -> None:
        if self._handler is None:
            return
        released = await self._db(
            self.queue.release_stale_leases, lambda holder: lease_is_stale(holder, self.token)
        )
        if released:
            log.warning("requeued %d jobs left running by a process that is gone", released)
        self._waiting_owners = await self._db(self.queue.waiting_owners)
        self._tasks = [
            asyncio.create_task(self._work(), name=f"memproxy-extraction-{n}")
            for n in range(self._settings.workers)
        ]
        self._tasks.append(asyncio.create_task(self._maintain(), name="memproxy-jobs-maintenance"))

    async def stop(self, grace_seconds: float) -> None:
        """Finish in-flight jobs within the grace period; release the rest."""
        self._stopping = True
        self._stop.set()
        self._wake.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace_seconds)
        if self._in_flight:
            log.warning("shutdown: %d extraction jobs unfinished after %.1fs, released",
                        len(self._in_flight), grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []

    async def _maintain(self) -> None:
        while not self._stopping:
            try:
                await self._db(self.queue.maintain)
                self._waiting_owners |= await self._db(self.queue.waiting_owners)
            except Exception as exc:
                log.warning("jobs maintenance failed: %s", exc)
            await _wait(self._stop, MAINTENANCE_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        """Sleep until woken (a new job, shutdown) or ``seconds`` passed."""
        await _wait(self._wake, seconds)

    async def _claim(self) -> ExtractionJob | None:
        job: ExtractionJob | None = await self._db(self.queue.claim, self.token)
        return job

    async def _work(self) -> None:
        while not self._stopping:
            try:
                job = await self._claim()
                if job is None:
                    self._wake.clear()
                    job = await self._claim()  # a job that came in before the clear
                if job is None:
                    if not self._stopping:
                        await self._sleep(self._settings.poll_seconds)
                    continue
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database failed; keep the worker alive
                log.warning("extraction worker: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(self._settings.poll_seconds)

    async def _run(self, job: ExtractionJob) -> None:
        assert self._handler is not None and job.id is not None
        handler, job_id = self._handler, job.id
        job.api_key = self.keys.key_for(job_id, job.owner, job.model)
        if job.api_key is None and job.has_caller_key and handler.needs_caller_key(job):
            await self._db(self.queue.park, job_id, self.token)
            self._waiting_owners.add(job.owner)
            self.counts["parked"] += 1
            log.info("job %d waits for its user's next request (the caller's key is gone)",
                     job_id)
            return
        self._in_flight[job_id] = job
        heartbeat = asyncio.create_task(self._heartbeat(job_id))
        followers: list[ExtractionJob] = []
        try:
            result = job.result
            # Coalescing: the user's queued follow-ups in the same session join this call
            # (on a replay: exactly the ones the saved result merged). A retried job runs
            # alone, so one poison exchange does not hold the others back.
            if result is not None or job.attempts <= 1:
                followers = await self._db(
                    self.queue.claim_followers, job, self.token,
                    None if result is None else result.merged,
                )
            work = coalesced(job, followers)
            if result is None:
                result = await handler.extract(work)
                # Saved before it is applied: a replay applies these same facts.
                await self._db(self.queue.save_result, job_id, self.token, result)
            with work_started(work.created_at):  # forgotten since: the store drops its writes
                await handler.apply(work, result)
        except asyncio.CancelledError:
            # Shutdown: give the job back at once (blocking is fine while stopping).
            self.queue.unclaim([f.id for f in followers if f.id is not None], self.token)
            self.queue.release(job_id, self.token)
            raise
        except MemoryUnavailable as exc:
            # The store (a Chroma server) is down: the job waits in the queue, no attempt
            # spent, however long the outage lasts; nothing is lost.
            await self._db(
                self.queue.unclaim, [f.id for f in followers if f.id is not None], self.token
            )
            error = redact(f"{type(exc).__name__}: {exc}", job.api_key)
            await self._db(self.queue.release, job_id, self.token,
                           self.queue.backoff(1), error)
            self.counts["store_unavailable"] += 1
            log.warning("extraction job %d waits for the memory store: %s", job_id, error)
        except Exception as exc:
            await self._db(
                self.queue.unclaim, [f.id for f in followers if f.id is not None], self.token
            )
            error = redact(f"{type(exc).__name__}: {exc}", job.api_key)
            state = await self._db(self.queue.fail, job_id, self.token, job.attempts, error)
            self.counts["dead" if state == "dead" else "attempt_failures"] += 1
            if state == "dead":
                self.keys.forget(job_id)
            log.warning("extraction job %d attempt %d failed (%s): %s",
                        job_id, job.attempts, state, error)
        else:
            for follower in followers:  # before the head: a replay of the head finds them done
                assert follower.id is not None
                await self._db(self.queue.complete, follower.id, self.token)
                self.keys.forget(follower.id)
            self.counts["coalesced"] += len(followers)
            if not await self._db(self.queue.complete, job_id, self.token):
                log.warning("job %d finished after its lease was lost", job_id)
            self.counts["completed"] += 1 + len(followers)
            self.keys.forget(job_id)
        finally:
            heartbeat.cancel()
            self._in_flight.pop(job_id, None)

    async def _heartbeat(self, job_id: int) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_seconds / 3)
            try:
                await self._db(self.queue.renew, job_id, self.token)
            except Exception as exc:
                log.warning("could not renew the lease of job %d: %s", job_id, exc)


def coalesced(head: ExtractionJob, followers: Sequence[ExtractionJob]) -> ExtractionJob:
    """One job for one LLM call: the head's identity, id and hash; everyone's turns."""
    if not followers:
        return head
    jobs = [head, *followers]
    return dataclasses.replace(
        head,
        user_texts=[text for j in jobs for text in j.user_texts],
        assistant_text="\n\n".join(j.assistant_text for j in jobs if j.assistant_text),
        merged=[f.id for f in followers if f.id is not None],
    )


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
