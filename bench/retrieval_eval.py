"""Retrieval quality on the synthetic set in bench/data/: dense, keyword and hybrid.

    .venv/bin/python bench/retrieval_eval.py [--data PATH] [--k 10]
    .venv/bin/python bench/retrieval_eval.py --locomo PATH [--set retrieval.KEY=VALUE ...]

With ``--locomo`` (any file in the LoCoMo layout: the public benchmark, REALTALK …) the
measurement runs through the memory API instead (bench/_api_eval.py): every turn stored with
``POST /v1/memories`` (``infer: false``, its real date as ``created_at``), every question
searched with ``POST /v1/memories/search``; it reports R@1/5/10/20 overall and by category
and the search call's latency, for that file and the synthetic set side by side
(``--no-synthetic`` leaves the latter out). ``--set`` overrides a setting for the run.
``--in-process`` skips HTTP: the same store and Retriever called directly, the same recall
in a minute or two; its latency is the ranking's alone (questions embedded beforehand).

Two modes over the same users and questions:

- facts  memories are the extracted facts ("User …"); superseded facts are excluded from
         retrieval, as the proxy does; gold = the memories that answer the question;
- raw    memories are the user's own turns, verbatim (extraction mode ``raw``, and the form
         of the held-out public benchmark); gold = the turns holding the evidence.

Methods: ``dense`` (all-MiniLM-L6-v2 cosine, the real model, ONNX, offline), ``keyword``
(proxy.memory.keyword BM25; only memories sharing a term are retrieved), ``hybrid``
(proxy.memory.ranking.rank_memories with its default RankingParams), ``hybrid, live Retriever``
(the proxy's own code path: ChromaStore + Retriever, default settings) and a few ablations. Reports
recall@1/5/10 (share of a question's gold found in the top k), MRR@k, per-category numbers,
"current above superseded" for the updated category (ranked with superseded memories left
in, the current fact must come first), and query latency. Latency is per query, as the proxy
would spend it: the query embedding (uncached) for dense and hybrid, the BM25 scoring, the
fusion and MMR. Memory embeddings are cached under bench/results/.

Prints Markdown tables and writes bench/results/retrieval_eval-<time>.json (and -latest).
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.config import EmbeddingSettings  # noqa: E402
from proxy.memory.embedding import DEFAULT_MODEL_LABEL, SentenceTransformerEmbedder  # noqa: E402
from proxy.memory.keyword import Analyzer, KeywordIndex  # noqa: E402
from proxy.memory.ranking import RankingParams, eligible_mask, rank_memories  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "retrieval_eval.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"
CATEGORIES = ("single", "multi", "temporal", "updated", "paraphrase")
SWEEP = [round(0.1 * i, 1) for i in range(11)]


@dataclass
class Corpus:
    """One user's memories in one mode, indexed as the proxy would index them."""

    ids: list[str]
    texts: list[str]
    created_at: np.ndarray
    superseded_by: list[str | None]
    vectors: np.ndarray
    keyword: KeywordIndex  # dated text ("[8 May 2023] …")
    keyword_undated: KeywordIndex
    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {memory_id: i for i, memory_id in enumerate(self.ids)}


@dataclass
class Query:
    user: str
    id: str
    category: str
    text: str
    gold: list[str]
    superseded: list[str]
    vector: np.ndarray
    embed_ms: float


Ranker = Callable[[Corpus, Query, bool, int], list[int]]


def embed_cached(embedder: SentenceTransformerEmbedder, texts: list[str]) -> np.ndarray:
    """Memory vectors, cached on disk by a hash of the model and the texts."""
    digest = hashlib.sha256("\n".join([embedder.name, *texts]).encode()).hexdigest()[:16]
    path = RESULTS / f"retrieval_eval-embeddings-{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = embedder.embed(texts)
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def build_corpora(
    users: list[dict[str, Any]], embedder: SentenceTransformerEmbedder, analyzer: Analyzer
) -> dict[str, dict[str, Corpus]]:
    """{mode: {user_id: Corpus}} for the facts and raw modes."""
    rows: dict[str, list[tuple[str, str, str, float, str | None]]] = {"facts": [], "raw": []}
    for user in users:
        uid = user["user_id"]
        for memory in user["memories"]:
            rows["facts"].append(
                (uid, memory["id"], memory["text"], memory["created_at"],
                 memory["superseded_by"])
            )
        for session in user["sessions"]:
            evening = calendar.timegm(time.strptime(session["date"], "%Y-%m-%d")) + 19 * 3600
            for n, turn in enumerate(session["turns"]):
                if turn["role"] == "user":
                    rows["raw"].append((uid, turn["id"], turn["text"], evening + 90 * n, None))
    corpora: dict[str, dict[str, Corpus]] = {}
    for mode, entries in rows.items():
        vectors = embed_cached(embedder, [e[2] for e in entries])
        corpora[mode] = {}
        for user in users:
            uid = user["user_id"]
            mine = [i for i, e in enumerate(entries) if e[0] == uid]
            texts = [entries[i][2] for i in mine]
            created = np.array([entries[i][3] for i in mine], dtype=np.float64)
            dated, undated = KeywordIndex(analyzer), KeywordIndex(analyzer)
            dated.add(texts, created.tolist())
            undated.add(texts)
            corpora[mode][uid] = Corpus(
                ids=[entries[i][1] for i in mine], texts=texts, created_at=created,
                superseded_by=[entries[i][4] for i in mine], vectors=vectors[mine],
                keyword=dated, keyword_undated=undated,
            )
    return corpora


def build_queries(
    users: list[dict[str, Any]], embedder: SentenceTransformerEmbedder
) -> dict[str, list[Query]]:
    queries: dict[str, list[Query]] = {"facts": [], "raw": []}
    for user in users:
        for q in user["questions"]:
            start = time.perf_counter()
            vector = embedder.embed([q["question"]])[0]
            embed_ms = (time.perf_counter() - start) * 1000
            for mode, gold, old in (
                ("facts", q["gold_memories"], q["superseded_memories"]),
                ("raw", q["gold_turns"], q["superseded_turns"]),
            ):
                queries[mode].append(Query(
                    user["user_id"], q["id"], q["category"], q["question"], gold, old,
                    vector, embed_ms,
                ))
    return queries


# -- rankers: the memory positions, best first, as each method would retrieve them ----------
def _mask(corpus: Corpus, include_superseded: bool) -> np.ndarray:
    return eligible_mask(corpus.superseded_by, include_superseded)


def rank_dense(corpus: Corpus, query: Query, include_superseded: bool, k: int) -> list[int]:
    scores = corpus.vectors @ query.vector
    scores = np.where(_mask(corpus, include_superseded), scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(i) for i in order if np.isfinite(scores[i])]


def keyword_ranker(dated: bool = True) -> Ranker:
    def rank(corpus: Corpus, query: Query, include_superseded: bool, k: int) -> list[int]:
        index = corpus.keyword if dated else corpus.keyword_undated
        scores = index.scores(query.text)
        scores = np.where(_mask(corpus, include_superseded), scores, 0.0)
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(i) for i in order if scores[i] > 0]

    return rank


def hybrid_ranker(params: RankingParams, dated: bool = True) -> Ranker:
    def rank(corpus: Corpus, query: Query, include_superseded: bool, k: int) -> list[int]:
        dense = corpus.vectors @ query.vector
        index = corpus.keyword if dated else corpus.keyword_undated
        ranked = rank_memories(
            dense, index.scores(query.text), k,
            replace(params, include_superseded=include_superseded),
            created_at=corpus.created_at, vectors=corpus.vectors,
            superseded_by=corpus.superseded_by,
        )
        return [int(i) for i in ranked.indices]

    return rank


def live_ranker(corpora: dict[str, Corpus], queries: list[Query], workdir: Path) -> Ranker:
    """The proxy's own path: ChromaStore (cached per-user vector + BM25 index) → Retriever
    (evidence gating above the core, fusion, recency, MMR) with the default settings; only
    the query embedding is looked up instead of computed (its cost is added like the others')."""
    from proxy.config import RetrievalSettings, StoreSettings
    from proxy.memory.retrieval import Retriever
    from proxy.memory.store import ChromaStore, Memory

    dimension = next(iter(corpora.values())).vectors.shape[1]
    store = ChromaStore(StoreSettings(shards=4), workdir, dimension)
    for uid, corpus in corpora.items():
        store.add([
            Memory(uid, text, id=f"{uid}:{memory_id}", created_at=float(created),
                   superseded_by=f"{uid}:{old}" if old else None)
            for memory_id, text, created, old in zip(
                corpus.ids, corpus.texts, corpus.created_at, corpus.superseded_by, strict=True)
        ], corpus.vectors, actor="import")
    vectors = {q.text: q.vector for q in queries}

    class LookupEmbedder:
        def embed(self, texts: list[str]) -> np.ndarray:
            return np.stack([vectors[t] for t in texts])

    retriever = Retriever(LookupEmbedder(), store, RetrievalSettings())  # type: ignore[arg-type]

    def rank(corpus: Corpus, query: Query, include_superseded: bool, k: int) -> list[int]:
        found = retriever.retrieve(query.user, query.text, limit=k, budget=False,
                                   include_superseded=include_superseded)
        prefix = len(query.user) + 1
        return [corpus.position[hit.memory.id[prefix:]] for hit in found]

    return rank


# -- metrics ------------------------------------------------------------------------------
def first_rank(ranking: list[int], corpus: Corpus, ids: Sequence[str]) -> float:
    wanted = {corpus.position[i] for i in ids}
    for rank, position in enumerate(ranking, 1):
        if position in wanted:
            return float(rank)
    return float("inf")


def evaluate(
    ranker: Ranker, corpora: dict[str, Corpus], queries: list[Query], embeds: bool, k: int
) -> dict[str, Any]:
    per_query: list[dict[str, Any]] = []
    latencies: list[float] = []
    ranking_ms: list[float] = []
    for query in queries:
        corpus = corpora[query.user]
        start = time.perf_counter()
        ranking = ranker(corpus, query, False, k)
        ranking_ms.append((time.perf_counter() - start) * 1000)
        latencies.append(ranking_ms[-1] + (query.embed_ms if embeds else 0))
        gold = {corpus.position[g] for g in query.gold}
        row: dict[str, Any] = {"category": query.category}
        for cut in (1, 5, k):
            row[f"r@{cut}"] = len(gold & set(ranking[:cut])) / len(gold)
        row["rr"] = 1.0 / first_rank(ranking, corpus, query.gold)
        if query.superseded:
            # With superseded memories left in the pool: does the current one come first?
            full = ranker(corpus, query, True, k)
            row["current_first"] = first_rank(full, corpus, query.gold) < first_rank(
                full, corpus, query.superseded
            )
        per_query.append(row)
    summary = summarise(per_query, latencies, k)
    summary["latency_ms"]["ranking_p50"] = float(np.median(ranking_ms))
    return summary


def summarise(rows: list[dict[str, Any]], latencies: list[float], k: int) -> dict[str, Any]:
    def mean(key: str, subset: list[dict[str, Any]]) -> float:
        values = [r[key] for r in subset if key in r]
        return float(np.mean(values)) * 100 if values else float("nan")

    out: dict[str, Any] = {
        f"r@{cut}": mean(f"r@{cut}", rows) for cut in (1, 5, k)
    }
    out["mrr"] = mean("rr", rows)
    out["current_first"] = mean("current_first", rows)
    out["categories"] = {
        cat: {key: mean(key, [r for r in rows if r["category"] == cat])
              for key in ("r@1", "r@5", f"r@{k}", "rr")}
        for cat in CATEGORIES
    }
    p50, p95 = np.percentile(latencies, [50, 95])
    out["latency_ms"] = {"p50": float(p50), "p95": float(p95)}
    return out


def fmt(value: float, digits: int = 1) -> str:
    return "—" if value != value else f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def api_main(args: argparse.Namespace) -> None:
    """Through the memory API: the LoCoMo-layout file and the synthetic set side by side."""
    from _api_eval import (
        CUTS,
        embedder_for_queries,
        load_locomo,
        load_synthetic,
        run,
        run_in_process,
    )

    began = time.perf_counter()
    model = embedder_for_queries(RESULTS, dict(args.set))
    sets = {args.locomo.name: load_locomo(args.locomo)}
    if not args.no_synthetic:
        users = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines()]
        sets["synthetic raw"] = load_synthetic(users, "raw")
        sets["synthetic facts"] = load_synthetic(users, "facts")
    overrides = dict(args.set)
    measure = run_in_process if args.in_process else run
    results = {name: measure(conversations, model, overrides)
               for name, conversations in sets.items()}
    where = "the Retriever, in process" if args.in_process else "the memory API"
    print(f"# Retrieval through {where}; settings overridden: {overrides or 'none'}\n")
    latency = "ranking" if args.in_process else "search"
    headers = ["set", "questions", *(f"R@{c}" for c in CUTS), f"{latency} p50 ms", "p95 ms"]
    print(markdown_table(headers, [
        [name, str(r["questions"]), *(fmt(r[f"r@{c}"]) for c in CUTS),
         fmt(r["latency_ms"]["p50"], 2), fmt(r["latency_ms"]["p95"], 2)]
        for name, r in results.items()
    ]) + "\n")
    for name, r in results.items():
        print(f"## {name} by category\n")
        print(markdown_table(["category", "questions", *(f"R@{c}" for c in CUTS)], [
            [cat, str(v["questions"]), *(fmt(v[f"r@{c}"]) for c in CUTS)]
            for cat, v in r["categories"].items()
        ]) + "\n")
    elapsed = time.perf_counter() - began
    print(f"Run time {elapsed:.0f} s on {os.cpu_count()} CPUs "
          f"(load average at end {os.getloadavg()[0]:.1f}).")
    results["meta"] = {"overrides": overrides, "in_process": args.in_process,
                       "seconds": elapsed, "cpus": os.cpu_count(),
                       "python": platform.python_version(), "loadavg": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"retrieval_api-{stamp}.json").write_text(text, encoding="utf-8")
    (RESULTS / "retrieval_api-latest.json").write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--locomo", type=Path, help="a LoCoMo-layout file: measure via the API")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--in-process", action="store_true",
                        help="with --locomo: call the Retriever directly, no HTTP (its "
                        "latency: ranking only)")
    parser.add_argument("--set", type=override, action="append", default=[],
                        metavar="KEY=VALUE", help="a setting for the API run, e.g. "
                        "retrieval.dense_weight=0.4")
    args = parser.parse_args()
    if args.locomo is not None:
        api_main(args)
        return
    k = args.k
    began = time.perf_counter()
    users = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines()]
    # No query cache: every query embedding in the latency numbers is computed.
    embedder = SentenceTransformerEmbedder(EmbeddingSettings(query_cache_size=0), RESULTS)
    analyzer = Analyzer()
    corpora = build_corpora(users, embedder, analyzer)
    queries = build_queries(users, embedder)

    default = RankingParams()
    methods: dict[str, tuple[Ranker, bool]] = {
        "dense": (rank_dense, True),
        "keyword": (keyword_ranker(), False),
        "hybrid": (hybrid_ranker(default), True),
    }
    ablations: dict[str, tuple[Ranker, bool]] = {
        "keyword, undated text": (keyword_ranker(dated=False), False),
        "hybrid, RRF": (hybrid_ranker(replace(default, fusion="rrf")), True),
        "hybrid, no MMR": (hybrid_ranker(replace(default, mmr_lambda=1.0)), True),
        "hybrid, undated keyword text": (hybrid_ranker(default, dated=False), True),
    }
    results: dict[str, Any] = {"modes": {}, "ablations": {}, "sweep": {}}
    for mode in ("facts", "raw"):
        with tempfile.TemporaryDirectory() as workdir:
            live = live_ranker(corpora[mode], queries[mode], Path(workdir))
            modes = {**methods, "hybrid, live Retriever": (live, True)}
            results["modes"][mode] = {
                name: evaluate(ranker, corpora[mode], queries[mode], embeds, k)
                for name, (ranker, embeds) in modes.items()
            }
        results["ablations"][mode] = {
            name: evaluate(ranker, corpora[mode], queries[mode], embeds, k)
            for name, (ranker, embeds) in ablations.items()
        }
        results["sweep"][mode] = {
            str(w): evaluate(
                hybrid_ranker(replace(default, dense_weight=w, keyword_weight=1 - w)),
                corpora[mode], queries[mode], True, k,
            )[f"r@{k}"]
            for w in SWEEP
        }

    elapsed = time.perf_counter() - began
    counts = {mode: sum(len(c.ids) for c in corpora[mode].values()) for mode in corpora}
    print(f"# Retrieval eval: {len(users)} users, {len(queries['facts'])} questions; "
          f"{counts['facts']} fact memories, {counts['raw']} raw user turns\n")
    print(f"Model {embedder.name}; hybrid = {default}\n")
    for mode in ("facts", "raw"):
        print(f"## {mode}\n")
        headers = ["method", "R@1", "R@5", f"R@{k}", "MRR", "current>superseded",
                   "p50 ms", "p95 ms", "p50 ms w/o embedding"]
        rows = []
        for name, r in [*results["modes"][mode].items(), *results["ablations"][mode].items()]:
            latency = r["latency_ms"]
            rows.append([name, *(fmt(r[c]) for c in ("r@1", "r@5", f"r@{k}", "mrr",
                                                     "current_first")),
                         fmt(latency["p50"], 2), fmt(latency["p95"], 2),
                         fmt(latency["ranking_p50"], 2)])
        print(markdown_table(headers, rows) + "\n")
        headers = ["method", *(f"{c} R@5 / MRR" for c in CATEGORIES)]
        rows = [
            [name, *(f"{fmt(r['categories'][c]['r@5'])} / {fmt(r['categories'][c]['rr'])}"
                     for c in CATEGORIES)]
            for name, r in results["modes"][mode].items()
        ]
        print(markdown_table(headers, rows) + "\n")
    raw = results["modes"]["raw"]
    print(f"Raw turns, R@{k}: hybrid {fmt(raw['hybrid'][f'r@{k}'])} vs keyword only "
          f"{fmt(raw['keyword'][f'r@{k}'])} "
          f"({raw['hybrid'][f'r@{k}'] - raw['keyword'][f'r@{k}']:+.1f}); dense only "
          f"{fmt(raw['dense'][f'r@{k}'])}.\n")
    print(f"## hybrid R@{k} by dense weight (keyword weight = 1 − dense)\n")
    print(markdown_table(
        ["mode", *(str(w) for w in SWEEP)],
        [[mode, *(fmt(r[str(w)]) for w in SWEEP)] for mode, r in results["sweep"].items()],
    ) + "\n")
    print(f"Embedding a query: median {np.median([q.embed_ms for q in queries['facts']]):.2f} "
          f"ms. Run time {elapsed:.0f} s on {os.cpu_count()} CPUs "
          f"(load average at end {os.getloadavg()[0]:.1f}).")

    results["meta"] = {
        "data": str(args.data.relative_to(ROOT)) if args.data.is_relative_to(ROOT) else
        str(args.data),
        "users": len(users), "questions": len(queries["facts"]), "memories": counts,
        "model": embedder.name or DEFAULT_MODEL_LABEL, "params": default.__dict__,
        "k": k, "seconds": elapsed, "cpus": os.cpu_count(),
        "python": platform.python_version(), "loadavg": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"retrieval_eval-{stamp}.json").write_text(text, encoding="utf-8")
    (RESULTS / "retrieval_eval-latest.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
