"""Scale-out on a real Postgres: the freshness check, job claims, and 1 vs 3 replicas end to end.

    .venv/bin/python bench/replicas.py [--threads 32] [--seconds 5] [--jobs 2000]
        [--requests 2000] [--concurrency 32] [--users 50] [--extraction llm|raw]
        [--drain-timeout 600] [--no-e2e]

Starts a throwaway Postgres 15 (tests/shared_servers.py; run as root it uses a system user),
then measures, with ``--threads`` concurrent callers (the c=32 of a busy replica):
- the freshness check every memory-on request pays (SharedOwners.stale: one primary-key read
  on a pooled autocommit connection), p50/p99 per call;
- job claims + completes by 3 "replicas" (separate JobQueue pools) over one backlog: jobs/s
  and duplicate hand-outs (must be 0).

End to end (``--e2e``, the default): a ``chroma run`` server, the tests' fake upstream
(bench/_serve_fake.py) and ``memproxy serve`` processes (real ONNX embedder, memory on,
extraction on, jobs.coalesce_seconds 0) on that Postgres. Two configurations, each with a fresh
database and its own users: 1 replica, then 3 replicas behind a round-robin client (the load
balancer). Each: warm-up (every user once on every replica, its jobs drained), the fake upstream
called directly (the baseline of "added" latency), then ``--requests`` chat completions at
``--concurrency``, each a distinct first-person statement of one of ``--users`` users, so
every exchange makes an extraction job. Reported: req/s, p50/p99 and added p50/p99,
X-Memory-Status counts, jobs done and jobs/s (load start to the last job done, read from the
jobs table; the wait for them is bounded by ``--drain-timeout``), duplicate applies from the
memory_history table (must be 0), per-replica /metrics deltas, and the CPU each process tree
(/proc) spent per request served and per extraction job.

On a 2-core machine the replicas, Postgres, Chroma, the fake upstream and this load generator
share the same cores: the 3-replica run measures the cost of sharing, not scaling. Scaling to
N machines is projected on paper from the measured per-request CPU costs, and printed as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _results import (
    REPO_ROOT,
    RESULTS_DIR,
    fmt,
    machine,
    markdown_table,
    percentiles,
    write_results,
)
from _servers import free_port, spawn_fake_upstream, stop, wait_ready
from overhead import CACHE_DIR, fact_texts, uvloop_run

sys.path.insert(0, str(REPO_ROOT / "tests"))

from shared_servers import ChromaServer, PostgresServer  # noqa: E402

from proxy.config import JobSettings  # noqa: E402
from proxy.extraction.jobs import ExtractionJob  # noqa: E402
from proxy.extraction.queue import JobQueue  # noqa: E402
from proxy.gateway.identity import Identity  # noqa: E402
from proxy.state.owners import SharedOwners  # noqa: E402

CORES = os.cpu_count() or 1
CHAT = "/v1/chat/completions"
Request = tuple[str, dict[str, str], bytes]  # url, headers, body


# -- the freshness check and job claims, in this process ------------------------------------
def bench_freshness(url: str, threads: int, seconds: float) -> dict[str, float]:
    owners = SharedOwners.open(url, pool_size=8)
    for n in range(1000):
        owners.wrote(("t", f"u{n}"))
    samples: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def caller(k: int) -> None:
        mine: list[float] = []
        n = k
        while time.monotonic() < stop_at:
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
    result = {"threads": threads, "checks_per_s": len(ms) / seconds,
              "p50_ms": percentiles(ms)["p50"], "p99_ms": percentiles(ms)["p99"]}
    print(f"freshness check, {threads} threads, pool 8: {result['checks_per_s']:,.0f} checks/s, "
          f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms")
    single = SharedOwners.open(url, pool_size=1)
    alone = []
    for n in range(2000):
        started = time.perf_counter()
        single.stale(("t", f"u{n % 1000}"))
        alone.append((time.perf_counter() - started) * 1000)
    single.close()
    result |= {"alone_p50_ms": percentiles(alone)["p50"],
               "alone_p99_ms": percentiles(alone)["p99"]}
    print(f"freshness check, 1 thread: p50 {result['alone_p50_ms']:.3f} ms, "
          f"p99 {result['alone_p99_ms']:.3f} ms")
    return result


def bench_claims(url: str, jobs: int) -> dict[str, float]:
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
    return {"jobs": len(claimed), "jobs_per_s": len(claimed) / elapsed,
            "duplicates": duplicates, "missing": jobs - len(set(claimed))}


# -- end to end: processes --------------------------------------------------------------------
def start_fake_upstream() -> tuple[subprocess.Popen[bytes], str]:
    process, url = spawn_fake_upstream(RESULTS_DIR / "replicas-fake.log")
    wait_ready(url + "/v1/models", process, 60)
    return process, url


def replica_env(database_url: str, chroma: ChromaServer, fake_url: str, data_dir: Path,
                port: int, extraction: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMPROXY_")}
    return env | {
        "MEMPROXY_UPSTREAM_URL": f"{fake_url}/v1",
        "MEMPROXY_DATA_DIR": str(data_dir),
        "MEMPROXY_DATABASE_URL": database_url,
        "MEMPROXY_STORE__CHROMA_HOST": chroma.host,
        "MEMPROXY_STORE__CHROMA_PORT": str(chroma.port),
        "MEMPROXY_EMBEDDING__MODELS_DIR": str(CACHE_DIR / "models"),  # exported once, shared
        "MEMPROXY_EXTRACTION_MODE": extraction,
        "MEMPROXY_JOBS__COALESCE_SECONDS": "0",  # one job, one LLM call: jobs/s means exchanges
        "MEMPROXY_JOBS__POLL_SECONDS": "0.1",
        "MEMPROXY_HOST": "127.0.0.1",
        "MEMPROXY_PORT": str(port),
        "MEMPROXY_SERVER__LOG_LEVEL": "warning",
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def export_model() -> None:
    """The ONNX export every replica loads (once; a no-op when bench/results/.cache has it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMPROXY_")}
    env |= {"MEMPROXY_EMBEDDING__MODELS_DIR": str(CACHE_DIR / "models"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "proxy", "export-model"], cwd=REPO_ROOT, env=env,
                   check=True, capture_output=True)


def start_replicas(count: int, database_url: str, chroma: ChromaServer, fake_url: str,
                   root: Path, extraction: str) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    for n in range(count):
        port = free_port()
        env = replica_env(database_url, chroma, fake_url, root / f"r{count}-{n}", port, extraction)
        with open(RESULTS_DIR / f"replicas-{count}r-{n}.log", "wb") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve"], cwd=REPO_ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT,
            ))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for process, url in zip(processes, urls, strict=True):
            wait_ready(url + "/readyz", process, 180)
    except BaseException:
        stop(processes)
        raise
    return processes, urls


def pids_with_argument(needle: str) -> list[int]:
    """Processes whose command line holds ``needle`` (a server's unique temp path)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "cmdline").read_text(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system, reaped children included) of each group's process trees."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    spent: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:  # after "(comm)": state ppid ... utime stime cutime cstime at 11..14
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry.name)] = int(fields[1])
        spent[int(entry.name)] = sum(int(f) for f in fields[11:15]) / tick
    children: dict[int, list[int]] = defaultdict(list)
    for pid, ppid in parent.items():
        children[ppid].append(pid)
    totals = {}
    for name, roots in groups.items():
        tree: set[int] = set()
        pending = list(roots)
        while pending:
            pid = pending.pop()
            if pid in spent and pid not in tree:
                tree.add(pid)
                pending += children[pid]
        totals[name] = sum(spent[pid] for pid in tree)
    return totals


# -- end to end: load -------------------------------------------------------------------------
@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        rps = len(self.latencies_ms) / self.wall_s if self.wall_s else None
        return {**percentiles(self.latencies_ms), "rps": rps, "wall_s": self.wall_s,
                "memory_status": dict(self.statuses), "errors": self.errors}


def first_person(fact: str) -> str:
    """overhead.fact_texts' "User …" facts as the user would say them (the fake turns them back)."""
    if fact.startswith("User's "):
        return "My " + fact.removeprefix("User's ")
    if fact.startswith("User is "):
        return "I am " + fact.removeprefix("User is ")
    verb, rest = fact.removeprefix("User ").split(" ", 1)
    verb = "have" if verb == "has" else verb.removesuffix("s")
    return f"I {verb} {rest}"


def chat_request(base_url: str, user: str | None, text: str) -> Request:
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    if user is not None:
        headers["X-User-Id"] = user
    body = {"model": "fake-model", "messages": [{"role": "user", "content": text}]}
    return base_url + CHAT, headers, json.dumps(body).encode()


def statement_texts(count: int, users: int) -> list[tuple[int, str]]:
    """(user index, statement) for request 0..count-1: users in turn, each fact said once."""
    per_user = -(-count // users)
    facts = [fact_texts(per_user, seed=u) for u in range(users)]
    return [(i % users, first_person(facts[i % users][i // users])) for i in range(count)]


async def drive(session: aiohttp.ClientSession, requests: list[Request],
                concurrency: int) -> LoadResult:
    result = LoadResult()
    pending = iter(requests)

    async def worker() -> None:
        for url, headers, body in pending:
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        result.errors += 1
                    if "X-User-Id" in headers:
                        result.statuses[response.headers.get("x-memory-status", "?")] += 1
            except aiohttp.ClientError:
                result.errors += 1
            result.latencies_ms.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    return result


async def scrape(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """A replica's /metrics as {'name{labels}': value}."""
    async with session.get(base_url + "/metrics") as response:
        text = await response.text()
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    return {name: float(value) for name, value in pairs}


# -- end to end: the jobs table and the history ------------------------------------------------
@dataclass
class JobsOutcome:
    total: int
    done: int
    dead: int
    last_finished_at: float | None
    max_id: int
    waited_s: float


def wait_for_jobs(database_url: str, after_id: int, expected: int,
                  timeout: float) -> JobsOutcome:
    """Until every job after ``after_id`` is done or dead, and ``expected`` of them exist
    (or their count has not moved for 3 s): bounded by ``timeout``."""
    started = time.monotonic()
    seen, still_since = -1, time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE state = 'done'),"
                " count(*) FILTER (WHERE state = 'dead'), max(finished_at),"
                " coalesce(max(id), %s) FROM jobs WHERE id > %s", (after_id, after_id),
            ).fetchone()
            assert row is not None
            outcome = JobsOutcome(int(row[0]), int(row[1]), int(row[2]), row[3], int(row[4]),
                                  time.monotonic() - started)
            if outcome.total != seen:
                seen, still_since = outcome.total, time.monotonic()
            finished = outcome.done + outcome.dead == outcome.total
            settled = outcome.total >= expected or time.monotonic() - still_since > 3
            if (finished and settled) or outcome.waited_s > timeout:
                return outcome
            time.sleep(0.2)


def duplicate_applies(database_url: str) -> dict[str, int]:
    """From memory_history: memories added more than once, and texts added twice for one user
    (a job applied twice, by one replica or two); jobs that ran more than one attempt."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        def extra(group_by: str) -> int:
            row = conn.execute(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM memory_history"
                f" WHERE event = 'ADD' GROUP BY {group_by} HAVING count(*) > 1) AS twice"
            ).fetchone()
            return int(row[0]) if row else 0

        adds = conn.execute("SELECT count(*) FROM memory_history WHERE event = 'ADD'").fetchone()
        retried = conn.execute("SELECT count(*) FROM jobs WHERE attempts > 1").fetchone()
        return {
            "adds": int(adds[0]) if adds else 0,
            "same_memory_added_again": extra("memory_id"),
            "same_text_added_again": extra("tenant, user_id, new_text"),
            "jobs_with_more_than_one_attempt": int(retried[0]) if retried else 0,
        }


# -- end to end: one configuration ------------------------------------------------------------
@dataclass
class Cluster:
    label: str
    database_url: str
    urls: list[str]
    cpu_groups: dict[str, list[int]]  # process trees whose CPU is counted, by role


@dataclass
class Snapshot:
    at: float  # time.time()
    cpu: dict[str, float]  # CPU seconds so far, by role
    jobs_done: int  # measured jobs done so far


def snapshot(cluster: Cluster, after_id: int) -> Snapshot:
    cpu = cpu_seconds(cluster.cpu_groups) | {"client": time.process_time()}
    with psycopg.connect(cluster.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE id > %s AND state = 'done'",
                           (after_id,)).fetchone()
    return Snapshot(time.time(), cpu, int(row[0]) if row else 0)


def cpu_costs(start: Snapshot, load_end: Snapshot, done: Snapshot,
              requests: int) -> dict[str, dict[str, float]]:
    """CPU ms by role: per job (from the drain, when only jobs ran), per request served (the
    load phase minus the jobs done during it), and per request with its job (everything)."""
    nan = float("nan")
    jobs_in_load = load_end.jobs_done - start.jobs_done
    jobs_in_drain = done.jobs_done - load_end.jobs_done
    costs: dict[str, dict[str, float]] = {"serving": {}, "job": {}, "whole": {}}
    for role in start.cpu:
        load = 1000 * (load_end.cpu[role] - start.cpu[role])
        drain = 1000 * (done.cpu[role] - load_end.cpu[role])
        per_job = drain / jobs_in_drain if jobs_in_drain else nan
        costs["job"][role] = per_job
        costs["serving"][role] = (load - per_job * jobs_in_load) / requests
        costs["whole"][role] = (load + drain) / requests
    return costs


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    retrievals = delta("memproxy_retrieval_seconds_count")
    return {
        "jobs_completed": delta('memproxy_job_events_total{event="completed"}'),
        "llm_calls": delta("memproxy_extraction_llm_calls_total"),
        "retrievals": retrievals,
        "retrieval_mean_ms": (1000 * delta("memproxy_retrieval_seconds_sum") / retrievals
                              if retrievals else float("nan")),
    }


async def measure_cluster(cluster: Cluster, fake_url: str, users: list[str],
                          args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=120)
    statements = statement_texts(args.requests, len(users))
    proxied = [chat_request(cluster.urls[i % len(cluster.urls)], users[u], text)
               for i, (u, text) in enumerate(statements)]
    direct = [chat_request(fake_url, None, text) for _, text in statements]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up: connections, code paths, and every user's index cached on every replica.
        warm = [chat_request(url, user, f"What do you remember about me? ({n})")
                for n, (url, user) in enumerate((u, s) for u in cluster.urls for s in users)]
        await drive(session, warm + direct[:64], args.concurrency)
        warmed = await asyncio.to_thread(
            wait_for_jobs, cluster.database_url, 0, len(warm), args.drain_timeout)
        baseline = await drive(session, direct, args.concurrency)
        before = [await scrape(session, url) for url in cluster.urls]
        start = await asyncio.to_thread(snapshot, cluster, warmed.max_id)
        load = await drive(session, proxied, args.concurrency)
        load_end = await asyncio.to_thread(snapshot, cluster, warmed.max_id)
        jobs = await asyncio.to_thread(wait_for_jobs, cluster.database_url, warmed.max_id,
                                       args.requests, args.drain_timeout)
        done = await asyncio.to_thread(snapshot, cluster, warmed.max_id)
        after = [await scrape(session, url) for url in cluster.urls]
    jobs_wall = jobs.last_finished_at - start.at if jobs.last_finished_at else None
    return {
        "label": cluster.label, "replicas": len(cluster.urls), "users": len(users),
        "direct": baseline.summary(), "proxy": load.summary(),
        "jobs": {"enqueued": jobs.total, "done": jobs.done, "dead": jobs.dead,
                 "unfinished": jobs.total - jobs.done - jobs.dead,
                 "warm_up_jobs": warmed.total,
                 "done_during_load": load_end.jobs_done - start.jobs_done,
                 "seconds_from_load_start": jobs_wall,
                 "jobs_per_s": jobs.done / jobs_wall if jobs_wall else None,
                 "drain_after_load_s": jobs.waited_s},
        "duplicates": duplicate_applies(cluster.database_url),
        "per_replica_metrics": [metric_deltas(b, a) for b, a in zip(before, after, strict=True)],
        "cpu_ms": cpu_costs(start, load_end, done, args.requests),
        "replica_cores_in_load": ((load_end.cpu["replicas"] - start.cpu["replicas"])
                                  / (load_end.at - start.at)),
    }


def run_configuration(count: int, server: PostgresServer, chroma: ChromaServer,
                      fake: subprocess.Popen[bytes], fake_url: str, root: Path,
                      server_pids: dict[str, list[int]], args: argparse.Namespace
                      ) -> dict[str, Any]:
    label = f"{count} replica" + ("s" if count > 1 else "")
    print(f"e2e: starting {label} …", file=sys.stderr, flush=True)
    database_url = server.new_database()
    processes, urls = start_replicas(count, database_url, chroma, fake_url, root, args.extraction)
    try:
        cluster = Cluster(label, database_url, urls, {
            "replicas": [p.pid for p in processes], "fake upstream": [fake.pid], **server_pids})
        users = [f"bench-{count}r-user{u}" for u in range(args.users)]
        return uvloop_run(measure_cluster(cluster, fake_url, users, args))
    finally:
        stop(processes)


def bench_e2e(server: PostgresServer, root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    export_model()
    (root / "chroma").mkdir()
    chroma = ChromaServer(root / "chroma" / "db").start()
    fake: subprocess.Popen[bytes] | None = None
    try:
        fake, fake_url = start_fake_upstream()
        server_pids = {"postgres": pids_with_argument(str(server.data)),
                       "chroma": pids_with_argument(str(root / "chroma" / "db"))}
        return [run_configuration(count, server, chroma, fake, fake_url, root, server_pids, args)
                for count in (1, 3)]
    finally:
        stop([fake] if fake is not None else [])
        chroma.stop()


# -- end to end: report -----------------------------------------------------------------------
ROLES = ("replicas", "postgres", "chroma", "fake upstream", "client")
COSTS = {"serving": "ms per request served", "job": "ms per extraction job",
         "whole": "ms per request, its job included"}


def capacity(cpu_ms: float) -> float:
    """Requests (or jobs) per second that CORES cores give at ``cpu_ms`` each."""
    if cpu_ms != cpu_ms:  # NaN: not measured (no job ran after the load)
        return cpu_ms
    return 1000 * CORES / cpu_ms if cpu_ms > 0 else float("inf")


def render_e2e(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows, cpu_rows = [], []
    for r in results:
        proxy, direct, jobs, dup = r["proxy"], r["direct"], r["jobs"], r["duplicates"]
        dead = f" ({jobs['dead']} dead)" if jobs["dead"] else ""
        rows.append([
            r["label"], fmt(proxy["rps"], 0), fmt(proxy["p50"]), fmt(proxy["p99"]),
            fmt(proxy["p50"] - direct["p50"]), fmt(proxy["p99"] - direct["p99"]),
            str(proxy["memory_status"].get("degraded", 0)), str(proxy["errors"]),
            f"{jobs['done']}/{jobs['enqueued']}{dead}", fmt(jobs["jobs_per_s"], 1),
            str(dup["same_memory_added_again"] + dup["same_text_added_again"]),
        ])
        for kind, label in COSTS.items():
            cpu = r["cpu_ms"][kind]
            cpu_rows.append([r["label"], label, *(fmt(cpu[role], 2) for role in ROLES),
                             fmt(sum(cpu.values()), 2)])
    table = markdown_table(
        ["config", "req/s", "p50 ms", "p99 ms", "added p50", "added p99", "degraded", "errors",
         "jobs done", "jobs/s", "duplicate applies"], rows)
    cpu_table = markdown_table(["config", "CPU", *ROLES, "sum"], cpu_rows)
    lines = ["## 2. End to end: 1 vs 3 replicas on one Postgres + one Chroma server\n", table,
             "", "CPU by process tree (/proc). A job's cost is measured in the drain after the "
             "load, when only jobs ran; serving = the load phase minus the jobs done during "
             "it, at that cost:\n", cpu_table, ""]
    for r in results:
        direct, dup, jobs, proxy = r["direct"], r["duplicates"], r["jobs"], r["proxy"]
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(proxy["memory_status"].items()))
        per_replica = "; ".join(
            f"r{n} {m['jobs_completed']:.0f} jobs, {m['llm_calls']:.0f} LLM calls, retrieval "
            f"mean {fmt(m['retrieval_mean_ms'])} ms"
            for n, m in enumerate(r["per_replica_metrics"]))
        lines.append(
            f"- {r['label']}: X-Memory-Status {statuses}. Direct (fake upstream, same run, "
            f"c={args.concurrency}) {fmt(direct['rps'], 0)} req/s, p50 {fmt(direct['p50'])} / p99 "
            f"{fmt(direct['p99'])} ms. Jobs: {jobs['warm_up_jobs']} from the warm-up drained "
            f"before; of the measured, {jobs['done_during_load']} done during the load, "
            f"the last {fmt(jobs['drain_after_load_s'])} s after it. History: "
            f"{dup['adds']} ADD rows, same memory added again {dup['same_memory_added_again']},"
            f" same text added again {dup['same_text_added_again']}; jobs retried "
            f"{dup['jobs_with_more_than_one_attempt']}. Replica cores used during the load "
            f"{r['replica_cores_in_load']:.2f}. /metrics deltas: {per_replica}.")
    lines.append(
        f"- {args.requests} requests at c={args.concurrency} over {args.users} users, each a "
        f"distinct statement; extraction mode {args.extraction} through the fake upstream; "
        "jobs.coalesce_seconds 0, jobs.poll_seconds 0.1; the real all-MiniLM-L6-v2 ONNX "
        "embedder; the load balancer is this client's round robin. jobs/s: jobs done / (last "
        "job done − load start). Duplicate applies: memory_history ADD rows of one memory or "
        "of one text for one user beyond the first. The freshness check has no /metrics "
        "counter: every memory-on request makes one (part 1 has its cost). With 3 replicas a "
        "user's next request usually lands on another replica than the one whose job just "
        "wrote, which then reloads that user from Chroma.")
    return "\n".join(lines)


def render_projection(results: list[dict[str, Any]], freshness: dict[str, float]) -> str:
    one, three = (r["cpu_ms"] for r in results)
    rps1, rps3 = results[0]["proxy"]["rps"], results[1]["proxy"]["rps"]
    per_machine = {kind: capacity(one[kind]["replicas"]) for kind in ("serving", "whole")}
    caps = {kind: min(capacity(three[kind]["postgres"]), capacity(three[kind]["chroma"]))
            for kind in ("serving", "whole")}

    def fleet(kind: str) -> str:
        return ", ".join(f"N={n} ~{min(n * per_machine[kind], caps[kind]):.0f}"
                         for n in (1, 3, 6))

    return "\n".join([
        "## Projection (on paper, from the measured costs; not measured)\n",
        f"Measured here, everything sharing {CORES} cores: 1 replica {rps1:.0f} req/s, 3 "
        f"replicas {rps3:.0f} req/s ({rps3 / rps1:.2f}×) — that is the sharing, not scaling. "
        f"Whole machine: {1000 * CORES / rps1:.2f} CPU-ms per request with 1 replica, "
        f"{1000 * CORES / rps3:.2f} with 3 ({CORES} cores / req/s; the extraction jobs still "
        "queued at the end of the load are not in it). A replica's own CPU: "
        f"{one['serving']['replicas']:.2f} ms per request served and "
        f"{one['job']['replicas']:.2f} ms per job with 1 replica; "
        f"{three['serving']['replicas']:.2f} and {three['job']['replicas']:.2f} with 3. "
        f"Postgres {three['whole']['postgres']:.2f} and Chroma {three['whole']['chroma']:.2f} "
        "CPU-ms per request with its job (3 replicas). The freshness check is one Postgres "
        f"primary-key read per memory-on request (part 1: p50 {freshness['alone_p50_ms']:.3f} "
        f"ms alone, {freshness['p50_ms']:.3f} ms at c={freshness['threads']:.0f} on these "
        "shared cores), its CPU inside Postgres's.",
        f"PROJECTION for N replicas on N separate {CORES}-core machines, with Postgres and "
        f"Chroma each on a {CORES}-core machine of their own and a real upstream elsewhere, "
        "assuming one replica process can use all its machine's cores: answering requests "
        f"(jobs left queued) {fleet('serving')} req/s; with every request's extraction job "
        f"done as fast as requests come in {fleet('whole')} req/s (Postgres + Chroma cap the "
        f"fleet at ~{caps['whole']:.0f}). Latency and the upstream's own time are not in it.",
    ])


# -- main -------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True,
                        help="1 vs 3 memproxy serve processes end to end (default: on)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--extraction", choices=("llm", "raw"), default="llm")
    parser.add_argument("--drain-timeout", type=float, default=600.0,
                        help="seconds to wait for the jobs after a load")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="memproxy-bench-pg-"))
    root.chmod(0o755)
    server = PostgresServer(root / "pg")
    results: dict[str, Any] = {"args": vars(args), "machine": machine()}
    try:
        server.start()
        print("## 1. Freshness check and job claims\n")
        print("load average at start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
        results["freshness"] = bench_freshness(server.new_database(), args.threads, args.seconds)
        results["claims"] = bench_claims(server.new_database(), args.jobs)
        if args.e2e:
            results["e2e"] = bench_e2e(server, root, args)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.e2e:
        print()
        print(render_e2e(results["e2e"], args))
        print()
        print(render_projection(results["e2e"], results["freshness"]))
    path = write_results("replicas", results)
    print(f"\nresults: {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
