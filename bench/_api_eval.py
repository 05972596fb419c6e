"""Retrieval measured through the memory API, for bench/retrieval_eval.py.

Each conversation is one user, each turn one memory: stored with ``POST /v1/memories``
(``infer: false``, the turn's real date as ``created_at``, its session as ``session_id``) and
ranked with ``POST /v1/memories/search`` over real HTTP to the proxy (uvicorn in a thread,
default settings unless overridden). The only shortcut: memory texts are embedded once, in
bulk, and cached on disk; the app's embedder returns those vectors for stored texts and runs
the real model for everything else, so every query embedding is computed inside the timed
search call.

Two sources in one shape: a LoCoMo-layout file (``--locomo PATH``: a list of
``{sample_id, conversation, qa}``; the held-out benchmark and the REALTALK tuning set use it),
and the synthetic set in bench/data (its raw user turns and its current facts).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from proxy.app import create_app
from proxy.config import EmbeddingSettings
from proxy.config_sources import load_settings
from proxy.memory.embedding import OnnxEmbedder, SentenceTransformerEmbedder, open_embedder

Model = OnnxEmbedder | SentenceTransformerEmbedder

RESULTS = Path(__file__).resolve().parent / "results"
ADMIN_KEY = "bench-admin-key"
CUTS = (1, 5, 10, 20)
# LoCoMo's categories; REALTALK uses 1–3 with 3 = commonsense. 5 (adversarial: the answer is
# not in the conversation) is left out, as is usual for evidence recall.
LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}


@dataclass
class Turn:
    key: str  # the benchmark's id of the turn (dia_id)
    text: str
    created_at: float
    session: str


@dataclass
class Question:
    text: str
    category: str
    evidence: list[str]  # turn keys


@dataclass
class Conversation:
    user: str
    turns: list[Turn]
    questions: list[Question] = field(default_factory=list)


# -- loading ------------------------------------------------------------------------------
_LOCOMO_DATE = re.compile(r"(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+(\w+),?\s+(\d{4})", re.I)


def parse_benchmark_date(text: str) -> float:
    """LoCoMo's "1:56 pm on 8 May, 2023" or REALTALK's "29.12.2023, 22:42:04", as UTC."""
    text = text.strip()
    for form in ("%d.%m.%Y, %H:%M:%S", "%d.%m.%Y, %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, form).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            pass
    found = _LOCOMO_DATE.search(text)
    if found is None:
        raise ValueError(f"unknown date form {text!r}")
    hour, minute, half, day, month, year = found.groups()
    clock = (int(hour) % 12 + (12 if half.lower() == "pm" else 0), int(minute))
    month_number = datetime.strptime(month[:3].title(), "%b").month
    return datetime(int(year), month_number, int(day), *clock, tzinfo=timezone.utc).timestamp()


def turn_text(turn: dict[str, Any]) -> str:
    """``speaker: text``, with a shared photo's caption when the benchmark has one."""
    text = f"{turn['speaker']}: {turn.get('text', '')}".strip()
    caption = turn.get("blip_caption")
    return f"{text} (shares a photo: {caption})" if caption else text


def load_locomo(path: Path) -> list[Conversation]:
    conversations = []
    for sample in json.loads(path.read_text(encoding="utf-8")):
        talk = sample["conversation"]
        turns: list[Turn] = []
        numbers = sorted(int(m.group(1)) for key in talk
                         if (m := re.fullmatch(r"session_(\d+)", key)) and talk[key])
        for number in numbers:
            session = f"session_{number}"
            began = parse_benchmark_date(talk[f"{session}_date_time"])
            for n, turn in enumerate(talk[session]):
                stamp = turn.get("date_time")
                # A turn's own time when the benchmark has it, else its session's, in order.
                created = parse_benchmark_date(stamp) if stamp else began + 60 * n
                turns.append(Turn(str(turn["dia_id"]), turn_text(turn), created, session))
        known = {t.key for t in turns}
        questions = []
        for qa in sample["qa"]:
            category = int(qa.get("category", 0))
            evidence = [e for e in qa.get("evidence", []) if e in known]
            if category in LOCOMO_CATEGORIES and evidence:
                questions.append(Question(qa["question"], LOCOMO_CATEGORIES[category], evidence))
        conversations.append(Conversation(str(sample["sample_id"]), turns, questions))
    return conversations


def load_synthetic(users: list[dict[str, Any]], mode: str) -> list[Conversation]:
    """bench/data's users: ``raw`` (the user's turns) or ``facts`` (the current facts)."""
    conversations = []
    for user in users:
        turns: list[Turn] = []
        if mode == "raw":
            for session in user["sessions"]:
                evening = calendar.timegm(time.strptime(session["date"], "%Y-%m-%d")) + 19 * 3600
                turns += [
                    Turn(turn["id"], turn["text"], evening + 90 * n, session["date"])
                    for n, turn in enumerate(session["turns"]) if turn["role"] == "user"
                ]
        else:
            turns = [Turn(m["id"], m["text"], m["created_at"], "") for m in user["memories"]
                     if not m["superseded_by"]]
        known = {t.key for t in turns}
        gold_key = "gold_turns" if mode == "raw" else "gold_memories"
        questions = [
            Question(q["question"], q["category"], [g for g in q[gold_key] if g in known])
            for q in user["questions"] if any(g in known for g in q[gold_key])
        ]
        conversations.append(Conversation(user["user_id"], turns, questions))
    return conversations


# -- the proxy ----------------------------------------------------------------------------
class PrecomputedEmbedder:
    """Stored texts' vectors from a table; anything else (queries) through the real model."""

    def __init__(self, model: Model, table: dict[str, np.ndarray]):
        self._model = model
        self._table = table
        self.dimension = model.dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if texts and all(t in self._table for t in texts):
            return np.stack([self._table[t] for t in texts])
        return self._model.embed(texts)


def embed_table(model: Model, texts: list[str]) -> dict[str, np.ndarray]:
    unique = sorted(set(texts))
    digest = hashlib.sha256("\n".join([model.name, *unique]).encode()).hexdigest()[:16]
    path = RESULTS / f"api_eval-embeddings-{digest}.npy"
    if path.exists():
        vectors = np.load(path)
    else:
        vectors = model.embed(unique)
        RESULTS.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return dict(zip(unique, vectors, strict=True))


class Proxy:
    """The proxy app on a loopback port (uvicorn in a thread), with a fresh data dir."""

    def __init__(self, embedder: Any, overrides: dict[str, Any]):
        self._dir = tempfile.TemporaryDirectory()
        settings = load_settings(None, environ={}, overrides={
            "data_dir": self._dir.name, "extraction.mode": "off", "admin_key": ADMIN_KEY,
            "server.access_log": False, **overrides,
        })
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(create_app(settings, embedder=embedder), host="127.0.0.1",
                                port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the proxy did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60,
                            headers={"authorization": f"Bearer {ADMIN_KEY}"})

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
        self._dir.cleanup()


def store_turns(proxy: Proxy, conversation: Conversation) -> dict[str, str]:
    """POST every turn; returns memory id → turn key."""
    local = threading.local()

    def post(turn: Turn) -> tuple[str, str]:
        if not hasattr(local, "client"):
            local.client = proxy.client()
        response = local.client.post("/v1/memories", json={
            "user_id": conversation.user, "text": turn.text, "infer": False,
            "created_at": turn.created_at, "session_id": turn.session or None,
        })
        response.raise_for_status()
        [memory] = response.json()["data"]
        if abs(memory["created_at"] - turn.created_at) > 1e-3:
            raise RuntimeError("POST /v1/memories ignored created_at")
        return memory["id"], turn.key

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(post, conversation.turns))


def scored(question: Question, ranking: list[str]) -> dict[str, Any]:
    """Recall at each cut: the share of the question's evidence turns in the top k."""
    gold = set(question.evidence)
    row: dict[str, Any] = {"category": question.category}
    for cut in CUTS:
        row[f"r@{cut}"] = len(gold & set(ranking[:cut])) / len(gold)
    return row


def run(
    conversations: list[Conversation], model: Model,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Store, search every question, and score: recall@CUTS overall and by category."""
    table = embed_table(model, [t.text for c in conversations for t in c.turns])
    proxy = Proxy(PrecomputedEmbedder(model, table), overrides)
    rows: list[dict[str, Any]] = []
    latencies: list[float] = []
    try:
        with proxy.client() as client:
            for conversation in conversations:
                keys = store_turns(proxy, conversation)
                for question in conversation.questions:
                    started = time.perf_counter()
                    response = client.post("/v1/memories/search", json={
                        "user_id": conversation.user, "query": question.text,
                        "limit": max(CUTS),
                    })
                    latencies.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                    ranking = [keys[hit["id"]] for hit in response.json()["data"]]
                    rows.append(scored(question, ranking))
    finally:
        proxy.close()
    return summarise(rows, latencies)


def run_in_process(
    conversations: list[Conversation], model: Model,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """``run`` without HTTP: memories added to a ChromaStore directly, questions ranked by the
    Retriever the search API calls (same settings, same ranking), in a minute or two instead
    of several. The questions are embedded beforehand, in bulk: the latency is the
    Retriever's ranking alone (store look-up, fusion, lifts, MMR), not the API's."""
    from proxy.memory.retrieval import Retriever
    from proxy.memory.store import ChromaStore, Memory

    table = embed_table(model, [t.text for c in conversations for t in c.turns])
    table.update(embed_table(model, [q.text for c in conversations for q in c.questions]))
    embedder = PrecomputedEmbedder(model, table)
    rows: list[dict[str, Any]] = []
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(None, environ={}, overrides={"data_dir": data_dir,
                                                               **overrides})
        store = ChromaStore(settings.store, Path(data_dir), embedder.dimension)
        retriever = Retriever(embedder, store, settings.retrieval)
        try:
            for conversation in conversations:
                memories = [Memory(conversation.user, t.text, id=f"{conversation.user}:{t.key}",
                                   created_at=t.created_at, session_id=t.session or None)
                            for t in conversation.turns]
                store.add(memories, embedder.embed([t.text for t in conversation.turns]),
                          actor="import")
                prefix = len(conversation.user) + 1
                for question in conversation.questions:
                    started = time.perf_counter()
                    found = retriever.retrieve(conversation.user, question.text,
                                               limit=max(CUTS), budget=False)
                    latencies.append((time.perf_counter() - started) * 1000)
                    rows.append(scored(question, [hit.memory.id[prefix:] for hit in found]))
        finally:
            store.close()
    return summarise(rows, latencies)


def summarise(rows: list[dict[str, Any]], latencies: list[float]) -> dict[str, Any]:
    def mean(key: str, subset: list[dict[str, Any]]) -> float:
        return float(np.mean([r[key] for r in subset])) * 100 if subset else float("nan")

    categories = sorted({r["category"] for r in rows})
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (float("nan"),) * 2
    return {
        "questions": len(rows),
        **{f"r@{cut}": mean(f"r@{cut}", rows) for cut in CUTS},
        "categories": {
            cat: {"questions": sum(r["category"] == cat for r in rows),
                  **{f"r@{cut}": mean(f"r@{cut}", [r for r in rows if r["category"] == cat])
                     for cut in CUTS}}
            for cat in categories
        },
        "latency_ms": {"p50": float(p50), "p95": float(p95)},
    }


def embedder_for_queries(
    results_dir: Path, overrides: dict[str, Any] | None = None
) -> Model:
    """The embedder the proxy serves with these settings (``--set embedding.quantize=none``:
    the full-precision model), exported once under ``results_dir/.cache`` like
    bench/overhead.py's. No query cache: every search embeds its query, as a new question
    would."""
    chosen = {key.split(".", 1)[1]: value for key, value in (overrides or {}).items()
              if key.startswith("embedding.")}
    settings = EmbeddingSettings(**{**chosen, "query_cache_size": 0})
    return open_embedder(settings, results_dir / ".cache")
