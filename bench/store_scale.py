"""How retrieval for one user scales with the size of the whole store.

    .venv/bin/python bench/store_scale.py [--quick]

The store grows to 10k, 100k and 1M memories (``--quick``: 10k and 100k) spread uniformly at
random over 10,000 users (~1, 10, 100 each), plus one measured user holding 100 memories.
At each size, the search latency for the measured user is measured in two layouts:

- ours   ChromaStore as the proxy runs it (default StoreSettings: 64 shard collections,
         in-process per-user LRU cache). "cold" is the user's first touch (its per-user
         cache entry is empty, so the search loads the user from its shard; the Chroma shard
         itself is already open); "warm" is every later search (a matrix-vector product);
- naive  one Chroma collection, ``query(where={"user_id": ...}, n_results=8)``. It has no
         per-user cache, so there is no cold/warm distinction.

Query and stored vectors are random unit vectors (384 dims): retrieval cost does not depend on
content. Each layout lives in its own worker process and temp dir; both grow in parallel (two
cores), then are measured one at a time while the other waits. Chroma inserts cost ~1 ms per
384-dim vector on this class of machine, so the naive collection is built with cheaper HNSW
construction settings (construction_ef 16, M 8; Chroma's defaults are 100 and 16) to keep the
run near 20 minutes — ours is built exactly as the proxy builds it. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from _results import REPO_ROOT, fmt, machine, markdown_table, percentiles, write_results

# The proxy package beside this bench/ (not whichever checkout the venv has installed).
sys.path.insert(0, str(REPO_ROOT))

DIM = 384
USERS = 10_000
MEASURED_USER = "measured-user"
MEASURED_MEMORIES = 100
BATCH = 50_000
K = 8
NAIVE_HNSW = {"hnsw:space": "cosine", "hnsw:construction_ef": 16, "hnsw:M": 8}


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def batch_records(start: int, n: int) -> tuple[list[str], list[str], np.ndarray]:
    """Records [start, start+n): the same in both workers (seeded by position)."""
    rng = np.random.default_rng(start)
    users = [f"user-{u:05d}" for u in rng.integers(0, USERS, n)]
    return users, [f"m{start + i}" for i in range(n)], unit_vectors(rng, n)


def measured_records() -> tuple[list[str], list[str], np.ndarray]:
    n = MEASURED_MEMORIES
    rng = np.random.default_rng(999_999)
    return [MEASURED_USER] * n, [f"measured-{i}" for i in range(n)], unit_vectors(rng, n)


def query_vectors(n: int) -> np.ndarray:
    return unit_vectors(np.random.default_rng(12345), n)


def timed_ms(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


# -- the two layouts --------------------------------------------------------------------------
class Ours:
    def __init__(self, path: Path):
        from proxy.config import StoreSettings
        from proxy.memory.store import ChromaStore

        self.path = path
        self.store = ChromaStore(StoreSettings(), path, DIM)

    def add(self, users: list[str], ids: list[str], vectors: np.ndarray) -> None:
        from proxy.memory.store import Memory

        memories = [
            Memory(user_id=user, text=f"memory {mid} of {user}: some remembered fact",
                   id=mid, created_at=1.7e9, source="bench")
            for user, mid in zip(users, ids, strict=True)
        ]
        self.store.add(memories, vectors)

    def measure(self, queries: np.ndarray, warm_n: int, cold_n: int) -> dict[str, Any]:
        from proxy.config import StoreSettings
        from proxy.memory.store import ChromaStore

        # A second store on the same data whose cache entries expire at once: every search is
        # a first touch (load the user from its shard, then search).
        cold_store = ChromaStore(StoreSettings(cache_ttl_seconds=1e-9), self.path, DIM)
        cold_store.search(MEASURED_USER, queries[0], K)  # opens the shard collection handle
        cold = [timed_ms(lambda q=q: cold_store.search(MEASURED_USER, q, K))[0]
                for q in queries[:cold_n]]
        cold_store.close()
        first_ms, _ = timed_ms(lambda: self.store.search(MEASURED_USER, queries[0], K))
        warm = [timed_ms(lambda q=q: self.store.search(MEASURED_USER, q, K))[0]
                for q in queries[:warm_n]]
        top = [[h.memory.id for h in self.store.search(MEASURED_USER, q, K)]
               for q in queries[:20]]
        return {"cold": percentiles(cold), "warm": percentiles(warm),
                "first_search_ms": first_ms, "top_ids": top}


class Naive:
    def __init__(self, path: Path):
        import chromadb
        from chromadb.config import Settings

        self.client = chromadb.PersistentClient(
            str(path), settings=Settings(anonymized_telemetry=False)
        )
        self.collection = self.client.get_or_create_collection(
            "memories", metadata=NAIVE_HNSW, embedding_function=None
        )
        self.max_batch = self.client.get_max_batch_size()

    def add(self, users: list[str], ids: list[str], vectors: np.ndarray) -> None:
        for i in range(0, len(ids), self.max_batch):
            part = slice(i, i + self.max_batch)
            self.collection.add(
                ids=ids[part],
                embeddings=vectors[part],
                documents=[f"memory {mid} of {user}: some remembered fact"
                           for user, mid in zip(users[part], ids[part], strict=True)],
                metadatas=[{"user_id": user, "created_at": 1.7e9, "source": "bench"}
                           for user in users[part]],
            )

    def _query(self, q: np.ndarray) -> list[str]:
        got = self.collection.query(
            query_embeddings=[q], n_results=K, where={"user_id": MEASURED_USER},
            include=["documents", "metadatas", "distances"],
        )
        return list(got["ids"][0])

    def measure(self, queries: np.ndarray, budget_s: float, max_n: int) -> dict[str, Any]:
        first_ms, _ = timed_ms(lambda: self._query(queries[0]))
        samples: list[float] = []
        started = time.perf_counter()
        for q in queries[:max_n]:
            samples.append(timed_ms(lambda q=q: self._query(q))[0])
            if len(samples) >= 20 and time.perf_counter() - started > budget_s:
                break
        top = [self._query(q) for q in queries[:20]]
        return {"warm": percentiles(samples), "first_search_ms": first_ms, "top_ids": top}


def worker(kind: str, path: str, conn: Connection) -> None:
    layout: Ours | Naive = Ours(Path(path)) if kind == "ours" else Naive(Path(path))
    total = 0
    while True:
        command, arg = conn.recv()
        if command == "grow":
            started = time.perf_counter()
            if total == 0:
                layout.add(*measured_records())
            while total < arg:
                n = min(BATCH, arg - total)
                layout.add(*batch_records(total, n))
                total += n
            conn.send({"seconds": time.perf_counter() - started})
        elif command == "measure":
            conn.send(layout.measure(**arg))
        else:
            conn.send(None)
            return


class Worker:
    def __init__(self, kind: str, path: Path):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker, args=(kind, str(path), child), daemon=True)
        self.process.start()

    def send(self, command: str, arg: Any = None) -> None:
        self.conn.send((command, arg))

    def recv(self) -> Any:
        return self.conn.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            self.send("stop")
            self.process.join(60)
        if self.process.is_alive():
            self.process.kill()


def overlap(a: list[list[str]], b: list[list[str]]) -> float:
    hits = sum(len(set(x) & set(y)) for x, y in zip(a, b, strict=True))
    return hits / max(1, sum(len(x) for x in a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="stop at 100k (~2 minutes)")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    run_started = time.perf_counter()
    queries = query_vectors(1000)
    root = Path(tempfile.mkdtemp(prefix="memproxy-store-scale-"))
    ours = Worker("ours", root / "ours")
    naive = Worker("naive", root / "naive")
    results: list[dict[str, Any]] = []
    try:
        for size in sizes:
            print(f"growing both layouts to {size:,} memories …", file=sys.stderr, flush=True)
            ours.send("grow", size)
            naive.send("grow", size)
            grow_ours, grow_naive = ours.recv(), naive.recv()
            ours.send("measure", {"queries": queries, "warm_n": 1000, "cold_n": 200})
            measured_ours = ours.recv()
            naive.send("measure", {"queries": queries, "budget_s": 20.0, "max_n": 300})
            measured_naive = naive.recv()
            results.append({
                "size": size,
                "ours": {**measured_ours, "grow_seconds": grow_ours["seconds"]},
                "naive": {**measured_naive, "grow_seconds": grow_naive["seconds"]},
                "naive_recall_vs_exact": overlap(measured_ours["top_ids"],
                                                 measured_naive["top_ids"]),
            })
            print(f"  {size:,}: ours warm p50 {measured_ours['warm']['p50']:.3f} ms, "
                  f"cold p50 {measured_ours['cold']['p50']:.2f} ms; naive p50 "
                  f"{measured_naive['warm']['p50']:.1f} ms", file=sys.stderr, flush=True)
    finally:
        ours.stop()
        naive.stop()
        shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - run_started

    rows = []
    for r in results:
        for name in ("ours", "naive"):
            data = r[name]
            cold = data.get("cold", {})
            rows.append([
                f"{r['size']:,}", name, fmt(data["grow_seconds"], 0),
                fmt(cold.get("p50"), 2), fmt(cold.get("p95"), 2), fmt(cold.get("p99"), 2),
                fmt(data["warm"]["p50"], 3), fmt(data["warm"]["p95"], 3),
                fmt(data["warm"]["p99"], 3), str(data["warm"]["n"]),
            ])
    table = markdown_table(
        ["total memories", "layout", "insert s (this step)", "cold p50 ms", "cold p95",
         "cold p99", "warm p50 ms", "warm p95", "warm p99", "n warm"],
        rows,
    )
    first, last = results[0], results[-1]
    ratios = {
        "ours_warm_p50": last["ours"]["warm"]["p50"] / first["ours"]["warm"]["p50"],
        "ours_warm_p99": last["ours"]["warm"]["p99"] / first["ours"]["warm"]["p99"],
        "ours_cold_p50": last["ours"]["cold"]["p50"] / first["ours"]["cold"]["p50"],
        "ours_cold_p99": last["ours"]["cold"]["p99"] / first["ours"]["cold"]["p99"],
        "naive_p50": last["naive"]["warm"]["p50"] / first["naive"]["warm"]["p50"],
    }
    label = f"{last['size']:,} vs {first['size']:,}"
    ratio_rows = [
        [f"ours, warm ({label})", f"{ratios['ours_warm_p50']:.2f}×",
         f"{ratios['ours_warm_p99']:.2f}×", "met" if ratios["ours_warm_p50"] <= 2 else "NOT met"],
        [f"ours, cold ({label})", f"{ratios['ours_cold_p50']:.2f}×",
         f"{ratios['ours_cold_p99']:.2f}×", "met" if ratios["ours_cold_p50"] <= 2 else "NOT met"],
        [f"naive ({label})", f"{ratios['naive_p50']:.2f}×", "", "—"],
    ]
    ratio_table = markdown_table(["growth", "p50 ratio", "p99 ratio", "target ≤ 2×"], ratio_rows)
    notes = [
        f"{USERS:,} users with uniformly random memories, plus the measured user "
        f"({MEASURED_MEMORIES} memories); search k={K}; random unit query vectors.",
        "ours cold: 200 searches through a second ChromaStore whose cache entries expire "
        "at once (each search = load the user from its shard + search); warm: 1000 searches.",
        "naive: as many queries as fit in ~20 s (at most 300); recall of its top-8 against "
        "the exact top-8 (ours is exact): "
        + ", ".join(f"{r['size']:,}: {r['naive_recall_vs_exact']:.2f}" for r in results) + ".",
        "insert s: wall time of this growth step, both layouts inserting at the same time "
        "(one process each, two cores).",
        f"Total run {total:.0f}s.",
    ]
    print("\n## Store scale: search latency for one user (ms)\n")
    print(table)
    print("\n## Growth of latency with the store\n")
    print(ratio_table)
    print()
    for note in notes:
        print(f"- {note}")
    for r in results:
        for name in ("ours", "naive"):
            r[name].pop("top_ids", None)
    path = write_results("store_scale", {
        "args": vars(args), "machine": machine(), "sizes": sizes, "results": results,
        "ratios": ratios, "naive_hnsw": NAIVE_HNSW, "notes": notes, "total_seconds": total,
    })
    print(f"\nresults: {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
