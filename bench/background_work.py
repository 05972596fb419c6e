"""What the background work (extraction jobs and their writes) costs the rest of the process.

    .venv/bin/python bench/background_work.py [--quick]

1. The job queue against one user's backlog: ``JobQueue`` on SQLite in a temp dir, one owner
   with 100 / 2,000 / 10,000 queued jobs; the time of an enqueue, and of one head's claim,
   renewal and completion (what each applied job costs the queue), p50 of 30.
2. Embedded Chroma's writes and the interpreter: ``ChromaStore`` in a temp dir, one user at
   10k memories, four threads adding 3 memories at a time back to back (the extraction
   workers), while the main thread times 5 ms of numpy ranking work (ten 10k x 384
   matrix-vector products and an argsort) by the wall clock, as a retrieval would be; with
   ``store.write_busy_share`` 1.0 (no rests) and 0.5 (the default), a retrieval running;
   each with ``store.write_behind`` off and on (writes counted once in Chroma); then at 0.5
   with the four writers offering ``--write-rate`` writes a second together (3 memories each),
   off and on: the same writes, what they cost the ranking work.
3. Writes as the memory API makes them, in process, with the real model (int8, the default,
   with and without ``store.write_behind``, and the full-precision one): 200 single adds one
   at a time (embed one text, add one memory) for a user already holding 10k memories, and an
   import of 4,000 memories (500 at a time: embedded, then stored, as the import API does).
   Rates count until every write is in Chroma (the journal flushed), not only accepted.

4. The same through the memory API over loopback HTTP (``api_writes``): single adds, a
   text-only import, and an export with vectors imported into a second memproxy.

Random unit vectors; nothing is asserted. Results: bench/results/background_work-*.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from _results import fmt, machine, markdown_table, percentiles, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.config import EmbeddingSettings, JobSettings, StoreSettings  # noqa: E402
from proxy.extraction.jobs import ExtractionJob  # noqa: E402
from proxy.extraction.queue import JobQueue  # noqa: E402
from proxy.gateway.identity import Identity  # noqa: E402
from proxy.memory.embedding import open_embedder  # noqa: E402
from proxy.memory.retrieval import Activity  # noqa: E402
from proxy.memory.store import ChromaStore, Memory  # noqa: E402
from proxy.state.sqlite import database_path  # noqa: E402


def queue_costs(backlog: int) -> dict[str, Any]:
    queue = JobQueue(database_path(Path(tempfile.mkdtemp())), JobSettings(coalesce_seconds=0))
    try:
        started = time.perf_counter()
        for n in range(backlog):
            queue.enqueue(ExtractionJob(Identity("hot"), [f"turn {n}"], "ok", "m",
                                        created_at=time.time(), exchange_hash=f"h{n}"))
        enqueue_ms = (time.perf_counter() - started) * 1000 / backlog
        cycles = []
        for _ in range(30):
            began = time.perf_counter()
            job = queue.claim("w")
            assert job is not None and job.id is not None
            queue.renew(job.id, "w")
            queue.complete(job.id, "w")
            cycles.append((time.perf_counter() - began) * 1000)
        return {"backlog": backlog, "enqueue_ms": enqueue_ms, "cycle": percentiles(cycles)}
    finally:
        queue.close()


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def pacing(
    busy_share: float, seconds: float, write_behind: bool, rate: float = 0.0
) -> dict[str, Any]:
    """``rate``: writes a second offered by all four writers together (0: back to back)."""
    rng = np.random.default_rng(0)
    store = ChromaStore(StoreSettings(write_busy_share=busy_share, write_behind=write_behind),
                        Path(tempfile.mkdtemp()), 384)
    activity = Activity()
    if store.pacer is not None:
        store.pacer.contended = activity.busy
    base = time.time() - 100_000
    store.add([Memory(user_id="hot", text=f"fact {i}", created_at=base + i)
               for i in range(10_000)], unit_vectors(rng, 10_000))
    if store.journal is not None:  # the user's 10k memories in Chroma before the clock starts
        store.journal.flush(timeout=600)
    stop = threading.Event()
    writes = [0]
    lock = threading.Lock()

    def writer(name: int) -> None:
        local = np.random.default_rng(name)
        n = 0
        next_at = time.perf_counter()
        while not stop.is_set():
            if rate > 0:
                next_at += 4 / rate
                stop.wait(max(0.0, next_at - time.perf_counter()))
            store.add([Memory(user_id="hot", text=f"new {name} {n} {j}", created_at=time.time())
                       for j in range(3)], unit_vectors(local, 3))
            n += 1
            with lock:
                writes[0] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    matrix = unit_vectors(rng, 10_000)
    work: list[float] = []
    began_all = time.perf_counter()
    ends = began_all + seconds
    try:
        while time.perf_counter() < ends:
            with activity.running():
                began = time.perf_counter()
                for row in range(10):
                    (matrix @ matrix[row]).argsort()[:10]
                work.append((time.perf_counter() - began) * 1000)
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        if store.journal is not None:  # counted once in Chroma, not when accepted
            store.journal.flush(timeout=600)
        elapsed = time.perf_counter() - began_all
        store.close()
    return {"busy_share": busy_share, "write_behind": write_behind, "offered": rate,
            "writes_per_s": writes[0] / elapsed,
            "work": percentiles(work), "over_100ms": int(sum(w > 100 for w in work)),
            "max_ms": max(work)}


def writes(
    quantize: Literal["int8", "none"], write_behind: bool = True, adds: int = 200,
    imported: int = 4_000,
) -> dict[str, Any]:
    embedder = open_embedder(EmbeddingSettings(quantize=quantize, query_cache_size=0),
                             Path(__file__).resolve().parent / "results" / ".cache")
    # As in the proxy with no chat running: the store's writes do not rest.
    store = ChromaStore(StoreSettings(write_behind=write_behind), Path(tempfile.mkdtemp()),
                        embedder.dimension)

    def settled() -> None:  # every write in Chroma, not only in the journal
        if store.journal is not None:
            store.journal.flush(timeout=600)
    rng = np.random.default_rng(1)
    try:
        base = time.time() - 100_000
        store.add([Memory(user_id="big", text=f"fact {i}", created_at=base + i)
                   for i in range(10_000)], unit_vectors(rng, 10_000))
        settled()
        calls_before = store.journal.calls if store.journal is not None else 0
        began = time.perf_counter()
        for n in range(adds):
            text = f"User mentioned fact number {n}: a trip to city {n % 97} in month {n % 12}."
            store.add([Memory(user_id="big", text=text)], embedder.embed([text]))
        accepted = time.perf_counter() - began
        settled()
        add_seconds = time.perf_counter() - began
        add_calls = (store.journal.calls - calls_before) if store.journal is not None else adds
        texts = [f"Imported note {n}: the user likes topic {n % 301} and tool {n % 53}."
                 for n in range(imported)]
        began = time.perf_counter()
        embedding = 0.0
        for start in range(0, imported, 500):  # as POST /v1/memories/import: embed, then store
            chunk = texts[start:start + 500]
            embed_began = time.perf_counter()
            vectors = embedder.embed(chunk)
            embedding += time.perf_counter() - embed_began
            store.add([Memory(user_id="importer", text=t) for t in chunk], vectors)
        settled()
        total = time.perf_counter() - began
    finally:
        store.close()
        close = getattr(embedder, "close", None)
        if close is not None:
            close()
    return {"quantize": quantize, "write_behind": write_behind,
            "adds_per_s": adds / add_seconds, "adds_accepted_per_s": adds / accepted,
            "chroma_calls_per_add": add_calls / adds,
            "import_embed_per_s": imported / embedding, "import_per_s": imported / total}


def api_writes(adds: int = 200, imported: int = 4_000) -> dict[str, Any]:
    """Through the memory API over loopback HTTP (the app on uvicorn, the real int8 model):
    single ``POST /v1/memories`` (``infer: false``) one at a time; an import of text-only
    records (500 a request); the same user exported with vectors and imported into a second
    memproxy with the same model."""
    from _api_eval import Proxy

    embedder = open_embedder(EmbeddingSettings(query_cache_size=0),
                             Path(__file__).resolve().parent / "results" / ".cache")
    source, target = Proxy(embedder, {}), Proxy(embedder, {})
    try:
        with source.client() as api, target.client() as other:
            began = time.perf_counter()
            for n in range(adds):
                text = f"User mentioned fact number {n}: a trip to city {n % 97} in month {n % 12}."
                answer = api.post("/v1/memories", json={"user_id": "one", "text": text,
                                                        "infer": False})
                assert answer.status_code == 201, answer.text
            add_rate = adds / (time.perf_counter() - began)
            records = [{"memory": f"Imported note {n}: the user likes topic {n % 301} and tool "
                                  f"{n % 53}.", "user_id": "importer"} for n in range(imported)]
            began = time.perf_counter()
            for start in range(0, imported, 500):
                answer = api.post("/v1/memories/import", json=records[start:start + 500])
                assert answer.status_code == 200, answer.text
            text_rate = imported / (time.perf_counter() - began)
            exported = api.get("/v1/users/importer/export", params={"vectors": "true"})
            lines = exported.content.splitlines()
            began = time.perf_counter()
            embedded = 0
            for start in range(0, len(lines), 500):
                answer = other.post("/v1/memories/import",
                                    content=b"\n".join(lines[start:start + 500]))
                assert answer.status_code == 200, answer.text
                embedded += answer.json()["embedded"]
            vector_rate = len(lines) / (time.perf_counter() - began)
    finally:
        source.close()  # each drains its journal into Chroma before it stops
        target.close()
        embedder.close()
    return {"adds_per_s": add_rate, "import_text_per_s": text_rate,
            "import_vectors_per_s": vector_rate, "embedded_with_vectors": embedded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 s per pacing run, not 40")
    parser.add_argument("--write-rate", type=float, default=12.0,
                        help="writes/s offered in the last two pacing runs (default 12)")
    args = parser.parse_args()
    queues = [queue_costs(n) for n in (100, 2_000, 10_000)]
    print("## One head's claim + renewal + completion against the owner's backlog\n")
    print(markdown_table(["queued jobs of the owner", "enqueue ms", "claim+renew+complete p50 ms"],
                         [[f"{q['backlog']:,}", fmt(q["enqueue_ms"], 2), fmt(q["cycle"]["p50"], 2)]
                          for q in queues]))
    seconds = 20.0 if args.quick else 40.0
    paced = [pacing(share, seconds, behind) for behind in (False, True) for share in (1.0, 0.5)]
    paced += [pacing(0.5, seconds, behind, rate=args.write_rate) for behind in (False, True)]
    print("\n## 5 ms of ranking work while four threads write to embedded Chroma\n")
    print(markdown_table(
        ["write_busy_share", "write_behind", "offered writes/s", "writes/s (in Chroma)",
         "work p50 ms", "p99 ms", "max ms", "over 100 ms"],
        [[fmt(p["busy_share"], 1), str(p["write_behind"]).lower(),
          fmt(p["offered"], 0) if p["offered"] else "back to back", fmt(p["writes_per_s"], 0),
          fmt(p["work"]["p50"]),
          fmt(p["work"]["p99"]), fmt(p["max_ms"]), f"{p['over_100ms']} of {p['work']['n']}"]
         for p in paced]))
    written = [writes("int8"), writes("int8", write_behind=False), writes("none")]
    print("\n## Writes through the store with the real model (a user at 10k memories)\n")
    print(markdown_table(
        ["embedding.quantize", "store.write_behind", "single adds/s (in Chroma)",
         "accepted/s", "Chroma calls per add", "import: embedded/s", "import: stored/s"],
        [[w["quantize"], str(w["write_behind"]).lower(), fmt(w["adds_per_s"], 0),
          fmt(w["adds_accepted_per_s"], 0), fmt(w["chroma_calls_per_add"], 2),
          fmt(w["import_embed_per_s"], 0), fmt(w["import_per_s"], 0)] for w in written]))
    api = api_writes()
    print("\n## Writes through the memory API over HTTP (int8, accepted: journaled, searchable)\n")
    print(markdown_table(
        ["single POST /v1/memories/s", "import, text only: memories/s",
         "import of an export with vectors: memories/s", "texts embedded in that import"],
        [[fmt(api["adds_per_s"], 0), fmt(api["import_text_per_s"], 0),
          fmt(api["import_vectors_per_s"], 0), str(api["embedded_with_vectors"])]]))
    path = write_results("background_work", {"machine": machine(), "queue": queues,
                                             "pacing": paced, "writes": written, "api": api})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
