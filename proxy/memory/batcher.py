"""Micro-batching: the texts of concurrent callers run through the model as one batch.

``workers`` inference threads (one by default) run the model; any thread may ``encode``.
A caller's texts wait in a priority queue: queries (a few texts) before bulk work (an import's
thousands, sent in chunks), so a large import never holds a chat's query behind it for more
than one chunk. A worker takes what is queued — up to ``max_batch`` texts, waiting at most
``window`` seconds for more when it has fewer — runs one batch and hands each caller its rows.
Under load the queue fills while a batch runs, so batches form without any waiting; a lone
query runs at once. With ``max_batch=1`` no two callers share a run (a caller's whole job is
still one run); then several workers, each on one core, serve more queries a second than one
worker spreading each short run over every core (README "Embedding on several cores").
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

QUERY_TEXTS = 4  # a job of at most this many texts is served first
BULK_CHUNK = 64  # texts per queued piece of a bulk job


class InferenceBatcher:
    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        dimension: int,
        *,
        max_batch: int = 32,
        window: float = 0.0,
        workers: int = 1,
        name: str = "memproxy-inference",
    ):
        self._encode = encode
        self._dimension = dimension
        self._max_batch = max(1, max_batch)
        self._window = max(0.0, window)
        self._queue: queue.PriorityQueue[tuple[int, int, list[str], Future[np.ndarray] | None]] = (
            queue.PriorityQueue()
        )
        self._serial = itertools.count()
        self.batches = 0  # batches run, and texts in them (for the benchmark and /metrics)
        self.texts = 0
        self._counting = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True)
            for n in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts``, computed by the inference workers; blocks until done."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        if not any(thread.is_alive() for thread in self._threads):
            raise RuntimeError("the inference threads have stopped")
        priority = 0 if len(texts) <= QUERY_TEXTS else 1
        step = len(texts) if priority == 0 else BULK_CHUNK
        futures: list[Future[np.ndarray]] = []
        for start in range(0, len(texts), step):
            future: Future[np.ndarray] = Future()
            self._queue.put((priority, next(self._serial), texts[start : start + step], future))
            futures.append(future)
        parts = [future.result() for future in futures]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        alive = [thread for thread in self._threads if thread.is_alive()]
        for _ in alive:  # one stop marker per worker, after everything queued
            self._queue.put((2, next(self._serial), [], None))
        for thread in alive:
            thread.join(timeout=10)

    def _take(self) -> list[tuple[list[str], Future[np.ndarray]]] | None:
        first = self._queue.get()
        if first[3] is None:
            return None  # this worker's stop marker
        jobs = [(first[2], first[3])]
        count = len(first[2])
        deadline = time.monotonic() + self._window
        while count < self._max_batch:
            try:
                remaining = deadline - time.monotonic()
                item = self._queue.get(timeout=remaining) if remaining > 0 else \
                    self._queue.get_nowait()
            except queue.Empty:
                break
            if item[3] is None or count + len(item[2]) > self._max_batch:
                self._queue.put(item)  # the stop marker, or a piece for the next batch
                break
            jobs.append((item[2], item[3]))
            count += len(item[2])
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            texts = [text for job_texts, _ in jobs for text in job_texts]
            try:
                vectors = self._encode(texts)
            except BaseException as exc:  # each caller sees the failure; the thread goes on
                for _, future in jobs:
                    future.set_exception(exc)
                continue
            with self._counting:
                self.batches += 1
                self.texts += len(texts)
            start = 0
            for job_texts, future in jobs:
                future.set_result(vectors[start : start + len(job_texts)])
                start += len(job_texts)
