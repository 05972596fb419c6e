"""What memproxy adds to a chat request: the fake upstream called directly vs through the proxy.

    .venv/bin/python bench/overhead.py [--quick]

Three processes: the fake upstream (bench/_serve_fake.py, tests' FakeUpstream under uvicorn),
the proxy (``python -m proxy serve``, configured by MEMPROXY_* env, real all-MiniLM-L6-v2
ONNX embedder, extraction off) and this process, the load generator (aiohttp, uvloop).
Scenarios, all measured in the same run and interleaved round by round so that drift on a
noisy machine hits each of them alike:

- direct           the fake upstream, no proxy (the baseline);
- memory off       through the proxy without a user → passthrough, X-Memory-Status: skipped;
- memory on, 1k    X-User-Id of a user holding 1,000 memories, X-Memory-Mode: read;
- memory on, 10k   the same for a user holding 10,000 memories.

Stored memories are generated fact sentences embedded by the real model (vectors cached
under bench/results/.cache), written through ChromaStore into the proxy's data dir before the
proxy starts. Every request carries a different question, so the proxy's query-embedding cache
never hits: each memory-on request pays one real embedding. Measured: latency percentiles and
requests/s at concurrency 1 and 32 (non-streaming), and time to first body byte of a streamed
answer at concurrency 1. Nothing is asserted; targets are reported as met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
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

# The proxy package beside this bench/ (not whichever checkout the venv has installed).
sys.path.insert(0, str(REPO_ROOT))

CACHE_DIR = RESULTS_DIR / ".cache"
USER_1K = "bench-user-1k"
USER_10K = "bench-user-10k"
TARGETS_MS = {"mem_on_p50": 10.0, "mem_on_p99": 30.0, "mem_off_p50": 2.0, "ttfb_p50": 10.0}
# Issue 12 (memory under load): c=32 throughput with no degraded request, added c=1 p50.
TARGETS_LOAD = {
    "off": {"rps": 1500, "p50_ms": 1.5},
    "on_1k": {"rps": 400, "p50_ms": 6.0},
    "on_10k": {"rps": 300, "p50_ms": 8.0},
}
TARGET_COLD_MS = 150.0  # first request of an uncached user at 10k memories
TARGET_RSS_MB = 400.0
TARGET_READY_S = 5.0


# -- texts ---------------------------------------------------------------------------------
NAMES = ["Ana", "Ben", "Chloé", "Dmitri", "Emeka", "Farah", "Guo", "Hana", "Ivan", "Jonas",
         "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"]
CITIES = ["Lisbon", "Osaka", "Nairobi", "Toronto", "Kraków", "Lyon", "Austin", "Hanoi",
          "Porto", "Tbilisi", "Oslo", "Cape Town", "Valencia", "Seoul", "Denver", "Bruges"]
RELATIONS = ["sister", "brother", "mother", "father", "partner", "best friend", "manager",
             "daughter", "son", "neighbour", "cousin", "flatmate"]
FOODS = ["peanuts", "shellfish", "gluten", "lactose", "coriander", "mushrooms", "olives",
         "spicy food", "sushi", "ramen", "dark chocolate", "blue cheese", "oat milk"]
LANGS = ["Python", "Rust", "TypeScript", "Go", "Kotlin", "Elixir", "C#", "Swift", "Haskell"]
STACKS = ["Next.js with a Postgres backend", "Django and HTMX", "FastAPI and SQLite",
          "a Rails monolith", "Svelte and Supabase", "Flutter and Firebase", "Phoenix LiveView"]
PETS = ["cat", "dog", "parrot", "rabbit", "tortoise", "ferret", "goldfish"]
HOBBIES = ["bouldering", "sourdough baking", "chess", "trail running", "watercolour painting",
           "the cello", "Japanese", "woodworking", "salsa dancing", "birdwatching"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
JOBS = ["data engineer", "nurse", "product designer", "high-school teacher", "architect",
        "backend developer", "accountant", "physiotherapist", "journalist", "chef"]
FACT_TEMPLATES = [
    "User's {relation} {name} lives in {city}.",
    "User is allergic to {food}.",
    "User prefers {lang} over {lang2} for side projects.",
    "User works as a {job} in {city}.",
    "User has a {pet} named {name}.",
    "User is planning a trip to {city} in {month}.",
    "User is learning {hobby} and practises on weekends.",
    "User's {relation}'s birthday is on {month} {day}.",
    "User is building an app in {stack}.",
    "User dislikes {food} and orders {food2} instead.",
    "User met {name} at a {hobby} class in {city}.",
    "User moved to {city} in {month} {year}.",
    "User wants to run a half marathon in {city} in {month}.",
    "User's {relation} works as a {job}.",
    "User asked to be reminded about {name}'s visit on {month} {day}.",
]
QUESTION_TEMPLATES = [
    "What did I tell you about my {relation} and {city}?",
    "Can you suggest a dinner in {city} that works with my diet, maybe with {food}?",
    "Which language did I say I prefer for side projects, {lang} or something else?",
    "Remind me what I planned for {month}, was it related to {city}?",
    "I have a free weekend in {month}; what should I do given my hobbies like {hobby}?",
    "Write a short birthday message for my {relation} {name}.",
    "How should I structure the database for my app if I use {lang}?",
    "What gift would suit {name}, who is into {hobby}?",
    "Help me plan a {days}-day itinerary for {city} with my {relation}.",
    "Is {food} okay for me to eat, considering what you know about me?",
    "Draft an email to my {relation} about the trip to {city} in {month}.",
    "What should I pack for {city} in {month} if I also want to do some {hobby}?",
]


def _fill(template: str, rng: random.Random) -> str:
    lang, lang2 = rng.sample(LANGS, 2)
    food, food2 = rng.sample(FOODS, 2)
    return template.format(
        name=rng.choice(NAMES), city=rng.choice(CITIES), relation=rng.choice(RELATIONS),
        food=food, food2=food2, lang=lang, lang2=lang2, stack=rng.choice(STACKS),
        pet=rng.choice(PETS), hobby=rng.choice(HOBBIES), month=rng.choice(MONTHS),
        day=rng.randint(1, 28), year=rng.randint(2015, 2025), job=rng.choice(JOBS),
        days=rng.randint(2, 9),
    )


def fact_texts(n: int, seed: int) -> list[str]:
    """n distinct, varied one-line facts about a user."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = _fill(rng.choice(FACT_TEMPLATES), rng)
        if text in seen:
            text = f"{text[:-1]} (noted in {rng.choice(MONTHS)} {rng.randint(2015, 2025)})."
            if text in seen:
                continue
        seen.add(text)
        out.append(text)
    return out


def unique_questions(seed: int) -> Iterator[str]:
    """An endless stream of distinct questions (so no query-embedding cache hits)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    for serial in itertools.count():
        text = _fill(rng.choice(QUESTION_TEMPLATES), rng)
        if text in seen:
            text = f"{text} (asking again, {serial})"
        seen.add(text)
        yield text


# -- populating the store (in a child process, so only the proxy holds Chroma open) --------
def populate(data_dir: str, users: dict[str, int]) -> dict[str, Any]:
    from proxy.config import EmbeddingSettings, StoreSettings
    from proxy.memory.embedding import open_embedder
    from proxy.memory.store import ChromaStore, Memory

    started = time.perf_counter()
    # Exports the ONNX model into the cache (the proxy loads it from there) on the first run.
    embedder = open_embedder(EmbeddingSettings(), CACHE_DIR)
    model_seconds = time.perf_counter() - started
    store = ChromaStore(StoreSettings(), Path(data_dir), embedder.dimension)
    embed_seconds = insert_seconds = 0.0
    for seed, (user_id, count) in enumerate(users.items()):
        texts = fact_texts(count, seed=1000 + seed)
        # The model's name is in the key: a cache of another model's vectors is not reused.
        digest = hashlib.sha256("\n".join([embedder.name, *texts]).encode()).hexdigest()[:16]
        cached = CACHE_DIR / f"fact-vectors-{digest}.npy"
        t0 = time.perf_counter()
        if cached.exists():
            vectors = np.load(cached)
        else:
            vectors = np.concatenate(
                [embedder.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)]
            )
            np.save(cached, vectors)
        embed_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        base = time.time() - count * 60
        memories = [
            Memory(user_id=user_id, text=text, created_at=base + i * 60, source="bench")
            for i, text in enumerate(texts)
        ]
        for i in range(0, count, 2000):
            store.add(memories[i : i + 2000], vectors[i : i + 2000])
        insert_seconds += time.perf_counter() - t0
        assert store.count_user(user_id) == count, "populated store lost memories"
    store.close()
    return {"model_load_s": model_seconds, "embed_s": embed_seconds, "insert_s": insert_seconds}


# -- servers ----------------------------------------------------------------------------------
def start_servers(
    data_dir: Path, logs: Path, extraction: str = "off", overrides: dict[str, str] | None = None,
) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    fake, fake_url = spawn_fake_upstream(logs / "overhead-fake.log")
    proxy_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMPROXY_")}
    env.update({
        "MEMPROXY_UPSTREAM_URL": f"{fake_url}/v1",
        "MEMPROXY_DATA_DIR": str(data_dir),
        "MEMPROXY_ANTHROPIC_URL": fake_url,  # /v1/messages' upstream
        "MEMPROXY_EXTRACTION_MODE": extraction,
        **{"MEMPROXY_" + key.upper().replace(".", "__"): value
           for key, value in (overrides or {}).items()},
        "MEMPROXY_HOST": "127.0.0.1",
        "MEMPROXY_PORT": str(proxy_port),
        "MEMPROXY_SERVER__LOG_LEVEL": "warning",
        "HF_HUB_OFFLINE": "1",
    })
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve"], cwd=REPO_ROOT, env=env,
        stdout=open(logs / "overhead-proxy.log", "wb"), stderr=subprocess.STDOUT,
    )
    return [fake, proxy], fake_url, f"http://127.0.0.1:{proxy_port}"


def process_facts(pid: int) -> dict[str, Any]:
    """The serving process as the OS sees it: resident memory, and whether torch is mapped."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmRSS:"))
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {"rss_mb": rss_kb / 1024, "torch_loaded": "libtorch" in maps}


# -- load generation ---------------------------------------------------------------------------
@dataclass
class Scenario:
    key: str
    label: str
    via_proxy: bool
    headers: dict[str, str]
    c1: list[float] = field(default_factory=list)
    c1_wall: float = 0.0
    c32: list[float] = field(default_factory=list)
    c32_wall: float = 0.0
    ttfb: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    retrieval_s: float = 0.0
    retrievals: int = 0
    first_request_ms: float | None = None
    api: str = "chat"  # which API the requests speak (API_PATHS)
    first_request_status: str | None = None


def chat_body(question: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
        ],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


# -- the three APIs with memory (issue 10): the same question in each one's request shape --
API_PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
             "messages": "/v1/messages"}
STREAM_END = {"chat": b"[DONE]", "responses": b"response.completed",
              "messages": b"message_stop"}


def as_api(api: str, chat: bytes) -> bytes:
    """A chat completions body (chat_body) as the same request in ``api``'s shape."""
    if api == "chat":
        return chat
    parsed = json.loads(chat)
    body: dict[str, Any] = {"model": parsed["model"], "stream": parsed.get("stream") is True}
    system, question = (m["content"] for m in parsed["messages"])
    if api == "responses":
        body.update(instructions=system, input=question)
    else:
        body.update(max_tokens=256, system=system,
                    messages=[{"role": "user", "content": question}])
    return json.dumps(body).encode()


class Load:
    def __init__(self, session: aiohttp.ClientSession, fake_url: str, proxy_url: str):
        self.session = session
        self.fake_url = fake_url
        self.proxy_url = proxy_url
        self.questions = unique_questions(seed=7)

    def bodies(self, n: int, stream: bool = False) -> list[bytes]:
        return [chat_body(next(self.questions), stream) for _ in range(n)]

    def _target(self, scenario: Scenario) -> tuple[str, dict[str, str]]:
        base = self.proxy_url if scenario.via_proxy else self.fake_url
        headers = {"content-type": "application/json", "authorization": "Bearer sk-bench",
                   **scenario.headers}
        if scenario.api == "messages":
            headers["anthropic-version"] = "2023-06-01"
        return base + API_PATHS[scenario.api], headers

    async def one(self, scenario: Scenario, body: bytes) -> float:
        url, headers = self._target(scenario)
        body = as_api(scenario.api, body)
        started = time.perf_counter()
        async with self.session.post(url, data=body, headers=headers) as response:
            await response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200:
                scenario.errors += 1
            if scenario.via_proxy:
                scenario.statuses[response.headers.get("x-memory-status", "?")] += 1
        return elapsed

    async def first_byte(self, scenario: Scenario, body: bytes) -> float:
        url, headers = self._target(scenario)
        body = as_api(scenario.api, body)
        started = time.perf_counter()
        async with self.session.post(url, data=body, headers=headers) as response:
            first = await response.content.readany()
            elapsed = (time.perf_counter() - started) * 1000
            rest = await response.read()
            if response.status != 200 or not first or STREAM_END[scenario.api] not in first + rest:
                scenario.errors += 1
        return elapsed

    async def sequential(self, scenario: Scenario, n: int) -> tuple[list[float], float]:
        bodies = self.bodies(n)
        started = time.perf_counter()
        samples = [await self.one(scenario, body) for body in bodies]
        return samples, time.perf_counter() - started

    async def concurrent(
        self, scenario: Scenario, n: int, concurrency: int
    ) -> tuple[list[float], float]:
        pending = iter(self.bodies(n))
        samples: list[float] = []

        async def worker() -> None:
            for body in pending:
                samples.append(await self.one(scenario, body))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started

    async def streamed(self, scenario: Scenario, n: int) -> list[float]:
        return [await self.first_byte(scenario, body) for body in self.bodies(n, stream=True)]

    async def retrieval_totals(self) -> tuple[float, int]:
        async with self.session.get(self.proxy_url + "/metrics") as response:
            text = await response.text()
        values = dict(
            line.split(" ", 1) for line in text.splitlines()
            if line.startswith("memproxy_retrieval_seconds_")
        )
        return (float(values.get("memproxy_retrieval_seconds_sum", 0)),
                int(values.get("memproxy_retrieval_seconds_count", 0)))


async def measure(
    scenarios: list[Scenario], fake_url: str, proxy_url: str, sizes: dict[str, int]
) -> None:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        load = Load(session, fake_url, proxy_url)
        for scenario in scenarios:  # the first touch of a user loads its cache from Chroma
            scenario.first_request_ms = await load.one(scenario, load.bodies(1)[0])
            scenario.first_request_status = next(iter(scenario.statuses), None)
            scenario.statuses.clear()
        for scenario in scenarios:  # warm-up: connections, code paths, allocator
            await load.sequential(scenario, sizes["warmup"])
            await load.concurrent(scenario, sizes["warmup"] * 2, 32)
            await load.streamed(scenario, max(5, sizes["warmup"] // 4))
            scenario.statuses.clear()
            scenario.errors = 0
        rounds = sizes["rounds"]
        for r in range(rounds):
            order = scenarios[r % len(scenarios):] + scenarios[: r % len(scenarios)]
            for scenario in order:
                before = await load.retrieval_totals()
                samples, wall = await load.sequential(scenario, sizes["c1"] // rounds)
                scenario.c1 += samples
                scenario.c1_wall += wall
                samples, wall = await load.concurrent(scenario, sizes["c32"] // rounds, 32)
                scenario.c32 += samples
                scenario.c32_wall += wall
                scenario.ttfb += await load.streamed(scenario, sizes["stream"] // rounds)
                after = await load.retrieval_totals()
                scenario.retrieval_s += after[0] - before[0]
                scenario.retrievals += after[1] - before[1]
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)


async def soak(
    proxy_url: str, fake_url: str, pid: int, seconds: float, concurrency: int = 32
) -> dict[str, Any]:
    """``seconds`` of memory-on load (reads and writes: extraction on) for the 10k user;
    resident memory sampled every 10 s, latency and statuses per minute."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=120)
    scenario = Scenario("soak", "soak", True, {"X-User-Id": USER_10K})
    minutes: list[dict[str, Any]] = []
    rss: list[tuple[float, float]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        load = Load(session, fake_url, proxy_url)
        await load.concurrent(scenario, 200, concurrency)  # warm-up, not counted
        scenario.statuses.clear()
        scenario.errors = 0
        started = time.perf_counter()
        rss.append((0.0, process_facts(pid)["rss_mb"]))
        while (elapsed := time.perf_counter() - started) < seconds:
            window = min(60.0, seconds - elapsed)
            samples: list[float] = []
            statuses_before = Counter(scenario.statuses)
            errors_before = scenario.errors
            window_end = time.perf_counter() + window
            next_rss = time.perf_counter() + 10

            async def worker(window_end: float = window_end,
                             samples: list[float] = samples) -> None:
                nonlocal next_rss
                while time.perf_counter() < window_end:
                    samples.append(await load.one(scenario, load.bodies(1)[0]))
                    if time.perf_counter() >= next_rss:
                        next_rss += 10
                        rss.append((time.perf_counter() - started,
                                    process_facts(pid)["rss_mb"]))

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - t0
            minutes.append({
                "minute": len(minutes) + 1, **percentiles(samples),
                "rps": len(samples) / wall if wall else None,
                "statuses": dict(Counter(scenario.statuses) - statuses_before),
                "errors": scenario.errors - errors_before,
            })
            print(f"  soak minute {len(minutes)}: {minutes[-1]['rps']:.0f} req/s, "
                  f"{minutes[-1]['statuses']}, RSS {rss[-1][1]:.0f} MB",
                  file=sys.stderr, flush=True)
        rss.append((time.perf_counter() - started, process_facts(pid)["rss_mb"]))
    values = [mb for _, mb in rss]
    # "Flat": the second half's peak within 10 % of the first half's (start-up growth aside).
    half = len(values) // 2
    first_peak, last_peak = max(values[: half or 1]), max(values[half:] or values)
    return {
        "seconds": seconds, "concurrency": concurrency, "minutes": minutes,
        "statuses": dict(scenario.statuses), "errors": scenario.errors,
        "rss_mb": rss, "rss_start_mb": values[0], "rss_end_mb": values[-1],
        "rss_max_mb": max(values), "rss_growth_second_half": last_peak / first_peak - 1,
    }


def render_soak(result: dict[str, Any]) -> str:
    rows = [[str(m["minute"]), fmt(m["p50"]), fmt(m["p99"]), fmt(m["rps"], 0),
             ", ".join(f"{k} {v}" for k, v in sorted(m["statuses"].items())),
             str(m["errors"])] for m in result["minutes"]]
    table = markdown_table(
        ["minute", "p50 ms", "p99 ms", "req/s", "X-Memory-Status", "errors"], rows)
    degraded = result["statuses"].get("degraded", 0)
    verdict = (
        f"{result['seconds']:.0f} s at c={result['concurrency']}, memory on, extraction on: "
        f"errors {result['errors']}, degraded {degraded}; RSS {result['rss_start_mb']:.0f} → "
        f"{result['rss_end_mb']:.0f} MB (max {result['rss_max_mb']:.0f}; second half's peak "
        f"{100 * result['rss_growth_second_half']:+.1f} % of the first's). Target: error-free, "
        f"0 degraded, RSS flat within 10 %: "
        + ("met" if not result["errors"] and not degraded
           and abs(result["rss_growth_second_half"]) <= 0.10 else "NOT met")
    )
    return f"{table}\n\n- {verdict}"


# -- report ---------------------------------------------------------------------------------
def summarize(scenarios: list[Scenario]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in scenarios:
        out[s.key] = {
            "label": s.label,
            "c1": {**percentiles(s.c1), "rps": len(s.c1) / s.c1_wall if s.c1_wall else None},
            "c32": {**percentiles(s.c32), "rps": len(s.c32) / s.c32_wall if s.c32_wall else None},
            "stream_ttfb": percentiles(s.ttfb),
            "memory_status": dict(s.statuses),
            "errors": s.errors,
            "mean_retrieval_ms": 1000 * s.retrieval_s / s.retrievals if s.retrievals else None,
            "first_request_ms": s.first_request_ms,
            "baseline": "direct" if s.api == "chat" else f"{s.api}_direct",
            "first_request_status": s.first_request_status,
        }
    return out


def render(summary: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    rows = []
    for data in summary.values():
        c1, c32, ttfb = data["c1"], data["c32"], data["stream_ttfb"]
        status = ", ".join(f"{k} {v}" for k, v in sorted(data["memory_status"].items())) or "—"
        if data["errors"]:
            status += f"; errors {data['errors']}"
        rows.append([
            data["label"], fmt(c1["p50"], 2), fmt(c1["p95"], 2), fmt(c1["p99"], 2),
            fmt(c1["rps"], 0), fmt(c32["p50"]), fmt(c32["p95"]), fmt(c32["p99"]),
            fmt(c32["rps"], 0), fmt(ttfb["p50"], 2), fmt(ttfb["p95"], 2),
            fmt(data["mean_retrieval_ms"], 2), status,
        ])
    latency = markdown_table(
        ["scenario", "c1 p50 ms", "c1 p95", "c1 p99", "c1 req/s", "c32 p50 ms", "c32 p95",
         "c32 p99", "c32 req/s", "stream TTFB p50 ms", "TTFB p95", "retrieval mean ms",
         "X-Memory-Status"],
        rows,
    )
    added_rows = []
    verdicts: dict[str, Any] = {}
    for key, data in summary.items():
        if key.endswith("direct"):
            continue
        direct = summary[data.get("baseline", "direct")]
        add_p50 = data["c1"]["p50"] - direct["c1"]["p50"]
        add_p99 = data["c1"]["p99"] - direct["c1"]["p99"]
        add_c32 = data["c32"]["p50"] - direct["c32"]["p50"]
        add_ttfb = data["stream_ttfb"]["p50"] - direct["stream_ttfb"]["p50"]
        rps_ratio = data["c32"]["rps"] / direct["c32"]["rps"]
        if key.endswith("off"):
            checks = {"p50 ≤ 2": add_p50 <= TARGETS_MS["mem_off_p50"]}
        else:
            checks = {"p50 ≤ 10": add_p50 <= TARGETS_MS["mem_on_p50"],
                      "p99 ≤ 30": add_p99 <= TARGETS_MS["mem_on_p99"]}
        checks["TTFB ≤ 10"] = add_ttfb <= TARGETS_MS["ttfb_p50"]
        load_target = TARGETS_LOAD.get(key)
        if load_target is not None:
            checks[f"c32 ≥ {load_target['rps']}/s"] = data["c32"]["rps"] >= load_target["rps"]
            checks[f"p50 ≤ {load_target['p50_ms']}"] = add_p50 <= load_target["p50_ms"]
            if key != "off":
                checks["0 degraded"] = not data["memory_status"].get("degraded")
        verdicts[key] = {"added_c1_p50": add_p50, "added_c1_p99": add_p99,
                         "added_c32_p50": add_c32, "added_ttfb_p50": add_ttfb,
                         "c32_rps_ratio": rps_ratio, "targets": checks}
        added_rows.append([
            data["label"], fmt(add_p50, 2), fmt(add_p99, 2), fmt(add_ttfb, 2), fmt(add_c32, 1),
            f"{rps_ratio:.2f}×",
            ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks.items()),
        ])
    added = markdown_table(
        ["through the proxy", "added c1 p50 ms", "added c1 p99 ms", "added TTFB p50 ms",
         "added c32 p50 ms", "c32 req/s vs direct", "targets (ms)"],
        added_rows,
    )
    return latency, added, verdicts


def uvloop_run(work: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def serving_process_note(setup: dict[str, Any], scenarios: list[Scenario]) -> str:
    idle, after = setup["idle"], setup.get("after_load", {})
    ten_k = next(s for s in scenarios if s.key == "on_10k")
    firsts = [s for s in scenarios if s.key.startswith("on_")]
    served = all(s.first_request_status == "injected" for s in firsts)
    checks = {
        f"idle RSS ≤ {TARGET_RSS_MB:.0f} MB": idle["rss_mb"] <= TARGET_RSS_MB,
        f"ready ≤ {TARGET_READY_S:.0f} s": setup["proxy_ready_s"] <= TARGET_READY_S,
        "no torch": not idle["torch_loaded"],
        f"cold 10k ≤ {TARGET_COLD_MS:.0f} ms": (ten_k.first_request_ms or 1e9) <= TARGET_COLD_MS,
        "first requests served with memory": served,
    }
    return (
        f"Serving process: idle RSS {idle['rss_mb']:.0f} MB, after the load "
        f"{after.get('rss_mb', float('nan')):.0f} MB; torch mapped: {idle['torch_loaded']}; "
        f"ready {setup['proxy_ready_s']:.1f} s after start; first requests: "
        + ", ".join(f"{s.label.split(', ')[-1]} {s.first_request_status}" for s in firsts)
        + ". Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (~2 minutes)")
    parser.add_argument("--apis", default="chat,responses,messages",
                        help="APIs measured besides chat completions: responses, messages "
                        "(comma-separated; 'chat' alone skips their rows)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a proxy setting for the run, e.g. embedding.inference_threads=1")
    parser.add_argument("--soak", type=float, metavar="SECONDS", default=0,
                        help="instead: SECONDS of c=32 memory-on load with extraction on, "
                        "checking errors, degraded requests and resident memory")
    args = parser.parse_args()
    sizes = (
        {"c1": 300, "c32": 600, "stream": 100, "rounds": 2, "warmup": 20}
        if args.quick
        else {"c1": 1500, "c32": 4000, "stream": 500, "rounds": 5, "warmup": 50}
    )
    run_started = time.perf_counter()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="memproxy-overhead-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        users = {USER_1K: 1_000, USER_10K: 10_000}
        print(f"populating {data_dir} …", file=sys.stderr, flush=True)
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            setup = pool.submit(populate, str(data_dir), users).result()
        # The ONNX export lives in the cache; the proxy finds it under <data_dir>/models.
        (data_dir / "models").symlink_to(CACHE_DIR / "models", target_is_directory=True)
        processes, fake_url, proxy_url = start_servers(
            data_dir, RESULTS_DIR, extraction="llm" if args.soak else "off",
            overrides=dict(item.split("=", 1) for item in args.set),
        )
        setup["fake_ready_s"] = wait_ready(fake_url + "/v1/models", processes[0], 60)
        setup["proxy_ready_s"] = wait_ready(proxy_url + "/readyz", processes[1], 300)
        time.sleep(1.0)  # idle: what the serving process holds before any chat
        setup["idle"] = process_facts(processes[1].pid)
        print(f"servers ready ({setup}); measuring …", file=sys.stderr, flush=True)
        if args.soak:
            result = uvloop_run(soak(proxy_url, fake_url, processes[1].pid, args.soak))
            print("\n## Soak\n")
            print(render_soak(result))
            path = write_results("overhead-soak", {
                "args": vars(args), "machine": machine(), "setup": setup, "soak": result})
            print(f"\nresults: {path.relative_to(REPO_ROOT)}")
            return
        read = {"X-Memory-Mode": "read"}
        scenarios = [
            Scenario("direct", "direct (fake upstream)", False, {}),
            Scenario("off", "proxy, memory off (no user)", True, {}),
            Scenario("on_1k", "proxy, memory on, 1k memories", True,
                     {"X-User-Id": USER_1K, **read}),
            Scenario("on_10k", "proxy, memory on, 10k memories", True,
                     {"X-User-Id": USER_10K, **read}),
        ]
        for api in [name for name in args.apis.split(",") if name in ("responses", "messages")]:
            path = API_PATHS[api]
            scenarios += [  # each API against its own direct baseline, in the same rounds
                Scenario(f"{api}_direct", f"direct (fake upstream) {path}", False, {}, api=api),
                Scenario(f"{api}_off", f"proxy {path}, memory off (no user)", True, {},
                         api=api),
                Scenario(f"{api}_on_1k", f"proxy {path}, memory on, 1k memories", True,
                         {"X-User-Id": USER_1K, **read}, api=api),
            ]
        uvloop_run(measure(scenarios, fake_url, proxy_url, sizes))
        setup["after_load"] = process_facts(processes[1].pid)
    finally:
        stop(processes)
        shutil.rmtree(data_dir, ignore_errors=True)

    summary = summarize(scenarios)
    latency, added, verdicts = render(summary)
    total = time.perf_counter() - run_started
    cold = ", ".join(
        f"{s.label.split(', ')[-1]} {fmt(s.first_request_ms, 1)} ms"
        for s in scenarios if s.key.startswith("on_")
    )
    notes = [
        f"Requests per scenario: {sizes['c1']} at c=1, {sizes['c32']} at c=32, "
        f"{sizes['stream']} streamed at c=1, in {sizes['rounds']} interleaved rounds "
        f"(after {sizes['warmup']} warm-up requests). Every request asks a different "
        "question: the proxy's query-embedding cache never hits, so each memory-on request "
        "pays one real all-MiniLM-L6-v2 ONNX embedding.",
        "Stored memories: generated fact sentences embedded by the same model, written through "
        "ChromaStore (64 shards) before the proxy started. Extraction off.",
        f"First request per user (not cached: loads its snapshot, written when the store was "
        f"populated, or Chroma without one): {cold}.",
        "\"retrieval mean\" is the proxy's own memproxy_retrieval_seconds (embed + search) per "
        "memory-on request. Load generator, proxy and fake upstream share 2 cores.",
        serving_process_note(setup, scenarios),
        f"Setup: model load {setup['model_load_s']:.1f}s, fact embedding {setup['embed_s']:.1f}s, "
        f"Chroma insert {setup['insert_s']:.1f}s, proxy ready in {setup['proxy_ready_s']:.1f}s. "
        f"Total run {total:.0f}s.",
    ]
    print("\n## Proxy overhead (latency in ms)\n")
    print(latency)
    print("\n## Added by the proxy (proxy − direct, same run)\n")
    print(added)
    print()
    for note in notes:
        print(f"- {note}")
    path = write_results("overhead", {
        "args": vars(args), "sizes": sizes, "machine": machine(), "setup": setup,
        "targets_ms": TARGETS_MS, "scenarios": summary, "added": verdicts, "notes": notes,
        "total_seconds": total,
    })
    print(f"\nresults: {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
