"""Scale-out costs on a real Postgres: the cross-replica freshness check and job claims.

    .venv/bin/python bench/replicas.py [--threads 32] [--seconds 5]

Starts a throwaway Postgres 15 (tests/shared_servers.py; run as root it uses a system user),
then measures, with ``--threads`` concurrent callers (the c=32 of a busy replica):
- the freshness check every memory-on request pays (SharedOwners.stale: one primary-key read
  on a pooled autocommit connection), p50/p99 per call;
- job claims + completes by 3 "replicas" (separate JobQueue pools) over one backlog: jobs/s
  and duplicate hand-outs (must be 0).

Not measured here (left for a later run): end-to-end throughput of 1 vs 3 ``memproxy serve``
processes at c=32. On this 2-core machine three replicas would share the same two cores as
Postgres and the load generator, so such a run measures the sharing, not the scaling.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from shared_servers import PostgresServer  # noqa: E402

from proxy.config import JobSettings  # noqa: E402
from proxy.extraction.jobs import ExtractionJob  # noqa: E402
from proxy.extraction.queue import JobQueue  # noqa: E402
from proxy.gateway.identity import Identity  # noqa: E402
from proxy.state.owners import SharedOwners  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_freshness(url: str, threads: int, seconds: float) -> None:
    owners = SharedOwners.open(url, pool_size=8)
    for n in range(1000):
        owners.wrote(("t", f"u{n}"))
    samples: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def caller(k: int) -> None:
        mine: list[float] = []
        n = k
        while time.monotonic() < stop:
            started = time.perf_counter()
            owners.stale(("t", f"u{n % 1000}"))
            mine.append(time.perf_counter() - started)
            n += threads
        with lock:
            samples.extend(mine)

    workers = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    owners.close()
    ms = [s * 1000 for s in samples]
    print(f"freshness check, {threads} threads, pool 8: {len(ms) / seconds:,.0f} checks/s, "
          f"p50 {statistics.median(ms):.3f} ms, p99 {percentile(ms, 0.99):.3f} ms")
    single = SharedOwners.open(url, pool_size=1)
    alone = []
    for n in range(2000):
        started = time.perf_counter()
        single.stale(("t", f"u{n % 1000}"))
        alone.append((time.perf_counter() - started) * 1000)
    single.close()
    print(f"freshness check, 1 thread: p50 {statistics.median(alone):.3f} ms, "
          f"p99 {percentile(alone, 0.99):.3f} ms")


def bench_claims(url: str, jobs: int) -> None:
    settings = JobSettings(coalesce_seconds=0)
    queue = JobQueue(url, settings)
    for n in range(jobs):
        queue.enqueue(ExtractionJob(
            identity=Identity(user_id=f"user{n % 200}"), user_texts=[f"fact {n}"],
            assistant_text="ok", model="m", created_at=time.time(), exchange_hash=f"h{n}",
        ))
    claimed: list[int] = []
    lock = threading.Lock()

    def replica(name: str) -> None:
        own = JobQueue(url, settings)
        while (job := own.claim(name)) is not None:
            assert job.id is not None
            own.complete(job.id, name)
            with lock:
                claimed.append(job.id)
        own.close()

    started = time.perf_counter()
    # 3 replicas x 4 workers each
    workers = [threading.Thread(target=replica, args=(f"r{r}w{w}",))
               for r in range(3) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    duplicates = len(claimed) - len(set(claimed))
    print(f"claims: {len(claimed)} jobs by 3 replicas x 4 workers in {elapsed:.2f}s = "
          f"{len(claimed) / elapsed:,.0f} jobs/s (claim+complete, no extraction); "
          f"duplicate hand-outs: {duplicates}; missing: {jobs - len(set(claimed))}")
    queue.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="memproxy-bench-pg-"))
    root.chmod(0o755)
    server = PostgresServer(root / "pg").start()
    try:
        bench_freshness(server.new_database(), args.threads, args.seconds)
        bench_claims(server.new_database(), args.jobs)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
