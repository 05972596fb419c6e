"""Memory quality: scripted multi-session conversations through the real proxy, end state judged.

    .venv/bin/python bench/memory_quality.py [--upstream fake|URL] [--model NAME] [--only USER]
                                             [--verbose] [--timeout SECONDS]

Two or three processes: the proxy (``python -m proxy serve``, MEMPROXY_* env, a fresh data dir,
extraction ``llm``, ``jobs.coalesce_seconds`` 0 so that every exchange is reconciled on its own),
this process (the chatbot), and with ``--upstream fake`` (the default) the tests' FakeUpstream
(bench/_serve_fake.py), a deterministic baseline. ``--upstream URL`` points the proxy at any
OpenAI-compatible server (e.g. http://127.0.0.1:9500/v1); chat and extraction both use ``--model``.

The scripts (bench/data/memory_quality.json) give each user (X-User-Id) sessions
(X-Session-Id): a new session sends only its own turns, within a session the history grows like a
chatbot's. Every turn is one non-streaming chat completion (max_tokens 80, temperature 0); after
it, the harness waits until the proxy's job queue is idle (/metrics: ``memproxy_jobs`` queued +
running + failed = 0, after the exchange was submitted) before the next turn, up to ``--timeout``.
Then the user's memories are read through the memory API (list, history per superseded memory,
the export for trails of deleted ones) and judged against the script's expectations, matching
whole-word keywords case-insensitively:

- captured          expected facts held by a current memory (recall);
- precision         good current memories / current memories. Not good: *corrupted* (holds a
                    keyword that must be absent, speaks in first or second person, echoes the
                    prompt's annotations such as "(since 2026-…)" or "[1]"), *stale* (names a
                    value that should have been superseded, unless as the past: "User left
                    teaching", "switched from tea"), *unexpected* (matches no expected
                    fact: chit-chat, questions, instructions stored as facts);
- lost              expected facts that some memory once held (history) but no current one does;
- superseded        old values kept in a superseded memory with a SUPERSEDE history row and
                    named by no current memory;
- duplicates        current memories matching exactly the same expected facts as another;
- no-op changed     questions and chit-chat turns after which the user's memories differ;
- LLM calls and tokens per exchange, rejections and every other extraction counter (/metrics).

Nothing is asserted; the targets (0 corrupted, 0 lost, ≥ 90 % captured, every change superseded)
are reported as met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _results import (
    REPO_ROOT,
    RESULTS_DIR,
    fmt,
    machine,
    markdown_table,
    percentiles,
    write_results,
)
from _servers import free_port, stop, wait_ready

SCRIPTS = Path(__file__).resolve().parent / "data" / "memory_quality.json"
CACHE_DIR = RESULTS_DIR / ".cache"
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."
NO_OP_KINDS = frozenset({"question", "chitchat"})
SUBMIT_GRACE_SECONDS = 10.0  # an exchange is enqueued right after its response
TARGET_RECALL = 0.9

Groups = list[list[str]]

# Why a current memory is corrupted, besides an absent keyword.
FIRST_OR_SECOND_PERSON = [
    re.compile(r"^\s*(you|i\b|i'm|my\b)", re.IGNORECASE),
    re.compile(r"\b(you|your|yours|yourself)\b", re.IGNORECASE),
    re.compile(r"(?<![\w'])I(?![\w-])"),
    re.compile(r"\bmy\b", re.IGNORECASE),
]
ANNOTATION_ECHO = [
    re.compile(r"\(since", re.IGNORECASE),
    re.compile(r"since 20\d\d", re.IGNORECASE),
    re.compile(r"\[\d+\]"),
    re.compile(r"\[\d{4}-\d\d-\d\d"),
    re.compile(r"</?memories>|memproxy", re.IGNORECASE),
]

# A current memory that names an old value as the past ("User left teaching", "User switched
# from tea to coffee") is history told right, not a stale value.
PAST_FRAMING = re.compile(
    r"\b(left|quit|used to|switched from|moved from|moved away from|no longer|former(ly)?"
    r"|previously|not anymore|stopped)\b",
    re.IGNORECASE,
)


# -- scripts and matching ----------------------------------------------------------------------
@dataclass
class Turn:
    kind: str
    text: str


@dataclass
class UserScript:
    id: str
    about: str
    sessions: list[list[Turn]]
    present: dict[str, Groups]
    superseded: dict[str, Groups]
    absent: list[str]

    @property
    def user_id(self) -> str:
        return f"mq-{self.id}"


def load_scripts(path: Path) -> list[UserScript]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        UserScript(
            id=user["id"], about=user.get("about", ""),
            sessions=[[Turn(t["kind"], t["text"]) for t in s] for s in user["sessions"]],
            present=user["expect"]["present"], superseded=user["expect"]["superseded"],
            absent=user["expect"]["absent"],
        )
        for user in data["users"]
    ]


def has_word(text: str, keyword: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(keyword)}(?!\w)", text, re.IGNORECASE) is not None


def matches(text: str, groups: Groups) -> bool:
    return any(all(has_word(text, keyword) for keyword in group) for group in groups)


def corruption(text: str, absent: list[str]) -> list[str]:
    reasons = [f"holds {word!r}" for word in absent if has_word(text, word)]
    if any(p.search(text) for p in FIRST_OR_SECOND_PERSON):
        reasons.append("first/second person")
    if any(p.search(text) for p in ANNOTATION_ECHO):
        reasons.append("annotation echo")
    return reasons


# -- the proxy and its API -----------------------------------------------------------------------
def start_fake(logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench" / "_serve_fake.py"), "--port", str(port)],
        stdout=open(logs / "memory_quality-fake.log", "wb"), stderr=subprocess.STDOUT,
    )
    wait_ready(f"http://127.0.0.1:{port}/v1/models", fake, 60)
    return fake, f"http://127.0.0.1:{port}/v1"


def start_proxy(
    upstream_url: str, data_dir: Path, admin_key: str, logs: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMPROXY_")}
    env.update({
        "MEMPROXY_UPSTREAM_URL": upstream_url,
        "MEMPROXY_DATA_DIR": str(data_dir),
        "MEMPROXY_EXTRACTION_MODE": "llm",
        "MEMPROXY_ADMIN_KEY": admin_key,
        "MEMPROXY_SERVER__LOG_LEVEL": "warning",
        "MEMPROXY_JOBS__COALESCE_SECONDS": "0",
        "MEMPROXY_JOBS__RETRY_BASE_SECONDS": "2",
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    })
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT, env=env,
        stdout=open(logs / "memory_quality-proxy.log", "wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/readyz", proxy, 300)
    except RuntimeError as exc:
        stop([proxy])
        log = (logs / "memory_quality-proxy.log").read_text(errors="replace").splitlines()
        raise RuntimeError(f"{exc}; the proxy log ends:\n" + "\n".join(log[-15:])) from None
    return proxy, url


def parse_metrics(text: str) -> dict[str, float]:
    """Samples by their full name with labels: ``memproxy_jobs{state="queued"}`` → value."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples


def event(samples: dict[str, float], name: str) -> float:
    return samples.get(f'memproxy_job_events_total{{event="{name}"}}', 0.0)


def jobs_in(samples: dict[str, float], state: str) -> float:
    return samples.get(f'memproxy_jobs{{state="{state}"}}', 0.0)


class ProxyClient:
    def __init__(self, url: str, admin_key: str, model: str):
        self.model = model
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(180, connect=10))
        self.admin = {"Authorization": f"Bearer {admin_key}"}

    def chat(
        self, user_id: str, session_id: str, messages: list[dict[str, str]]
    ) -> httpx.Response:
        return self.http.post("/v1/chat/completions", json={
            "model": self.model, "messages": messages, "max_tokens": 80, "temperature": 0,
        }, headers={"Authorization": "Bearer sk-bench", "X-User-Id": user_id,
                    "X-Session-Id": session_id})

    def metrics(self) -> dict[str, float]:
        response = self.http.get("/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    def memories(self, user_id: str, include_superseded: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"user_id": user_id, "limit": 1000,
                                  "include_superseded": str(include_superseded).lower()}
        while True:
            response = self.http.get("/v1/memories", params=params, headers=self.admin)
            response.raise_for_status()
            page = response.json()
            out += page["data"]
            if not page.get("next_cursor"):
                return out
            params["cursor"] = page["next_cursor"]

    def history(self, memory_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/v1/memories/{memory_id}/history", headers=self.admin)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return list(response.json()["data"])

    def export(self, user_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/v1/users/{user_id}/export", headers=self.admin)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def wait_for_job(self, before: dict[str, float], timeout: float) -> tuple[str, float]:
        """Wait until this exchange's job was submitted and the queue is idle again."""
        started = time.monotonic()
        submitted_before = sum(event(before, e) for e in
                               ("enqueued", "duplicates", "enqueue_failures"))
        while True:
            now = self.metrics()
            elapsed = time.monotonic() - started
            submitted = sum(event(now, e) for e in ("enqueued", "duplicates", "enqueue_failures"))
            busy = sum(jobs_in(now, s) for s in ("queued", "running", "failed"))
            if submitted > submitted_before and busy == 0:
                break
            if submitted <= submitted_before and elapsed > SUBMIT_GRACE_SECONDS:
                return "no job", elapsed
            if elapsed > timeout:
                return "timeout", elapsed
            time.sleep(0.2)
        if event(now, "duplicates") > event(before, "duplicates"):
            return "duplicate", elapsed
        if event(now, "enqueue_failures") > event(before, "enqueue_failures"):
            return "enqueue failed", elapsed
        if event(now, "dead") > event(before, "dead"):
            return "dead", elapsed
        return "done", elapsed


# -- running a user's script -----------------------------------------------------------------
@dataclass
class Exchange:
    session: int
    kind: str
    text: str
    reply: str
    memory_status: str
    injected: str
    chat_ms: float
    job: str
    wait_s: float
    changes: list[str]


@dataclass
class UserRun:
    script: UserScript
    exchanges: list[Exchange] = field(default_factory=list)
    usage: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    chat_errors: int = 0


Snapshot = dict[str, tuple[str, bool]]  # id → (text, superseded)


def snapshot(client: ProxyClient, user_id: str) -> Snapshot:
    return {m["id"]: (m["memory"], bool(m["superseded_by"]))
            for m in client.memories(user_id, include_superseded=True)}


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    changes = [f"+ {after[i][0]}" for i in after if i not in before]
    changes += [f"- {before[i][0]}" for i in before if i not in after]
    for i in after.keys() & before.keys():
        (old, was_superseded), (new, superseded) = before[i], after[i]
        if old != new:
            changes.append(f"~ {old} → {new}")
        if superseded and not was_superseded:
            changes.append(f"⇢ superseded: {new}")
    return changes


def usage_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    names = {"calls": "memproxy_extraction_llm_calls_total",
             "exchanges": "memproxy_extraction_exchanges_total",
             "prompt_tokens": 'memproxy_extraction_llm_tokens_total{kind="prompt"}',
             "completion_tokens": 'memproxy_extraction_llm_tokens_total{kind="completion"}'}
    return {key: after.get(name, 0.0) - before.get(name, 0.0) for key, name in names.items()}


def run_user(client: ProxyClient, script: UserScript, timeout: float) -> UserRun:
    run = UserRun(script)
    started = time.perf_counter()
    first = client.metrics()
    state = snapshot(client, script.user_id)
    for number, session in enumerate(script.sessions, 1):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for turn in session:
            messages.append({"role": "user", "content": turn.text})
            before = client.metrics()
            t0 = time.perf_counter()
            response = client.chat(script.user_id, f"{script.user_id}-s{number}", messages)
            chat_ms = (time.perf_counter() - t0) * 1000
            if response.status_code == 200:
                reply = response.json()["choices"][0]["message"].get("content") or ""
                job, wait_s = client.wait_for_job(before, timeout)
            else:
                run.chat_errors += 1
                reply, job, wait_s = f"HTTP {response.status_code}: {response.text[:200]}", "-", 0
            messages.append({"role": "assistant", "content": reply})
            after = snapshot(client, script.user_id)
            run.exchanges.append(Exchange(
                number, turn.kind, turn.text, reply, response.headers.get("x-memory-status", "?"),
                response.headers.get("x-memory-injected", "0"), chat_ms, job, wait_s,
                diff(state, after),
            ))
            state = after
            print(f"  {script.id} s{number} {turn.kind:<10} chat {chat_ms / 1000:5.1f}s  "
                  f"job {job} {wait_s:5.1f}s  {len(run.exchanges[-1].changes)} change(s)",
                  file=sys.stderr, flush=True)
    run.usage = usage_delta(first, client.metrics())
    run.wall_s = time.perf_counter() - started
    return run


# -- judging the end state ---------------------------------------------------------------------
@dataclass
class Verdict:
    current: list[str]
    captured: list[str]
    missed: list[str]
    lost: list[str]
    superseded_ok: list[str]
    superseded_not: dict[str, str]
    duplicates: list[str]
    classes: dict[str, list[str]]  # good / corrupted / stale / unexpected → memory texts
    notes: dict[str, str]
    noop_changed: int
    noop_turns: int

    @property
    def precision(self) -> float | None:
        return len(self.classes["good"]) / len(self.current) if self.current else None


def judge(client: ProxyClient, run: UserRun) -> Verdict:
    script = run.script
    current = client.memories(script.user_id, include_superseded=False)
    records = client.export(script.user_id)
    superseded = [r for r in records if r.get("object") == "memory" and r.get("superseded_by")]
    ever = [m["memory"] for m in current]  # every text any memory of this user ever held
    for record in records:
        if record.get("object") == "memory":
            ever.append(record["memory"])
        for row in record.get("history", []):
            ever += [t for t in (row.get("old_text"), row.get("new_text")) if t]
    for exchange in run.exchanges:
        ever += [c.split(" ", 1)[1] for c in exchange.changes if c[0] in "+-"]
    texts = [m["memory"] for m in current]

    captured = [f for f, groups in script.present.items() if any(matches(t, groups) for t in texts)]
    missed = [f for f in script.present if f not in captured]
    lost = [f for f in missed if any(matches(t, script.present[f]) for t in ever)]

    superseded_ok: list[str] = []
    superseded_not: dict[str, str] = {}
    for name, groups in script.superseded.items():
        holders = [r for r in superseded if matches(r["memory"], groups)]
        with_history = [r for r in holders
                        if any(h["event"] == "SUPERSEDE" for h in client.history(r["id"]))]
        if any(matches(t, groups) and not PAST_FRAMING.search(t) for t in texts):
            superseded_not[name] = "still current"
        elif with_history:
            superseded_ok.append(name)
        elif holders:
            superseded_not[name] = "superseded without a SUPERSEDE history row"
        elif any(matches(t, groups) for t in ever):
            superseded_not[name] = "deleted or updated in place (history only)"
        else:
            superseded_not[name] = "never stored"

    classes: dict[str, list[str]] = {"good": [], "corrupted": [], "stale": [], "unexpected": []}
    notes: dict[str, str] = {}  # corrupted memory → why
    fact_sets: dict[frozenset[str], list[str]] = {}
    for text in texts:
        facts = frozenset(f for f, groups in script.present.items() if matches(text, groups))
        if facts:
            fact_sets.setdefault(facts, []).append(text)
        reasons = corruption(text, script.absent)
        stale = [name for name, groups in script.superseded.items()
                 if matches(text, groups) and not PAST_FRAMING.search(text)]
        if reasons:
            classes["corrupted"].append(text)
            notes[text] = ", ".join(reasons)
        elif stale:
            classes["stale"].append(text)
        elif not facts and not (PAST_FRAMING.search(text) and any(
                matches(text, g) for g in script.superseded.values())):
            classes["unexpected"].append(text)
        else:
            classes["good"].append(text)
    duplicates = [t for group in fact_sets.values() for t in group[1:]]
    noop = [e for e in run.exchanges if e.kind in NO_OP_KINDS]
    return Verdict(
        current=texts, captured=captured, missed=missed, lost=lost,
        superseded_ok=superseded_ok, superseded_not=superseded_not, duplicates=duplicates,
        classes=classes, notes=notes, noop_changed=sum(1 for e in noop if e.changes),
        noop_turns=len(noop),
    )


# -- report --------------------------------------------------------------------------------------
def per_exchange(usage: dict[str, float], key: str) -> float | None:
    exchanges = usage.get("exchanges", 0)
    if not exchanges:
        return None
    if key == "tokens":
        return (usage["prompt_tokens"] + usage["completion_tokens"]) / exchanges
    return usage[key] / exchanges


def row(label: str, runs: list[UserRun], verdicts: list[Verdict]) -> list[str]:
    expected = sum(len(r.script.present) for r in runs)
    captured = sum(len(v.captured) for v in verdicts)
    current = sum(len(v.current) for v in verdicts)
    good = sum(len(v.classes["good"]) for v in verdicts)
    sup_expected = sum(len(r.script.superseded) for r in runs)
    usage = {k: sum(r.usage.get(k, 0.0) for r in runs)
             for k in ("calls", "exchanges", "prompt_tokens", "completion_tokens")}
    exchanges = [e for r in runs for e in r.exchanges]
    problems = sum(1 for e in exchanges if e.job not in ("done", "-"))
    return [
        label, str(len(exchanges)),
        f"{captured}/{expected} ({100 * captured / expected:.0f} %)" if expected else "—",
        f"{good}/{current}" + (f" ({100 * good / current:.0f} %)" if current else ""),
        str(sum(len(v.classes["corrupted"]) for v in verdicts)),
        str(sum(len(v.classes["stale"]) for v in verdicts)),
        str(sum(len(v.classes["unexpected"]) for v in verdicts)),
        str(sum(len(v.lost) for v in verdicts)),
        f"{sum(len(v.superseded_ok) for v in verdicts)}/{sup_expected}" if sup_expected else "—",
        str(sum(len(v.duplicates) for v in verdicts)),
        f"{sum(v.noop_changed for v in verdicts)}/{sum(v.noop_turns for v in verdicts)}",
        fmt(per_exchange(usage, "calls"), 2), fmt(per_exchange(usage, "tokens"), 0),
        str(problems + sum(r.chat_errors for r in runs)),
        fmt(sum(r.wall_s for r in runs), 0),
    ]


HEADERS = ["user", "turns", "captured", "precision (good/current)", "corrupted", "stale",
           "unexpected", "lost", "superseded", "duplicates", "no-op changed", "LLM calls/exch",
           "tokens/exch", "job/chat problems", "wall s"]


def targets(runs: list[UserRun], verdicts: list[Verdict]) -> dict[str, bool]:
    expected = sum(len(r.script.present) for r in runs)
    captured = sum(len(v.captured) for v in verdicts)
    return {
        "0 corrupted": sum(len(v.classes["corrupted"]) for v in verdicts) == 0,
        "0 wrongly deleted (lost)": sum(len(v.lost) for v in verdicts) == 0,
        f"≥ {TARGET_RECALL:.0%} of stated facts captured":
            expected > 0 and captured / expected >= TARGET_RECALL,
        "every change superseded with history": all(not v.superseded_not for v in verdicts),
    }


def details(run: UserRun, verdict: Verdict) -> list[str]:
    lines = [f"### {run.script.id} ({run.script.user_id}): {run.script.about}", ""]
    for e in run.exchanges:
        lines.append(f"- s{e.session} [{e.kind}] {e.text!r} → {e.memory_status}/{e.injected}, "
                     f"job {e.job} in {e.wait_s:.1f}s; reply {e.reply[:120]!r}")
        lines += [f"    {change}" for change in e.changes]
    lines.append("")
    for name, texts in verdict.classes.items():
        lines += [f"- current, {name}"
                  + (f" ({verdict.notes[text]})" if text in verdict.notes else "") + f": {text}"
                  for text in texts]
    summary = {"captured": verdict.captured, "missed": verdict.missed, "lost": verdict.lost}
    lines.append("- " + "; ".join(f"{k}: {', '.join(v) or '—'}" for k, v in summary.items()))
    if run.script.superseded:
        status = [f"{n}: ok" for n in verdict.superseded_ok]
        status += [f"{n}: {why}" for n, why in verdict.superseded_not.items()]
        lines.append(f"- superseded: {'; '.join(status)}")
    lines += [f"- duplicate: {text}" for text in verdict.duplicates]
    return lines + [""]


def extraction_counters(samples: dict[str, float]) -> list[list[str]]:
    return [[name, fmt(value, 0 if value.is_integer() else 4)]
            for name, value in sorted(samples.items())
            if name.startswith("memproxy_extraction_") or "rejected" in name
            or name.startswith(("memproxy_job_events_total", "memproxy_jobs{"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", default="fake",
                        help="'fake' (tests' FakeUpstream) or an OpenAI-compatible base URL")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--only", action="append", metavar="USER",
                        help="run only this script's user (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="per-user details at the end")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for one exchange's extraction job")
    args = parser.parse_args()
    scripts = load_scripts(SCRIPTS)
    if args.only:
        unknown = set(args.only) - {s.id for s in scripts}
        if unknown:
            parser.error(f"unknown user(s) {sorted(unknown)}; known: {[s.id for s in scripts]}")
        scripts = [s for s in scripts if s.id in args.only]

    run_started = time.perf_counter()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / "models").mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="memproxy-quality-"))
    # The ONNX export of the embedder is made once, into the cache, and reused by later runs.
    (data_dir / "models").symlink_to(CACHE_DIR / "models", target_is_directory=True)
    processes: list[subprocess.Popen[bytes]] = []
    admin_key = secrets.token_urlsafe(24)
    try:
        upstream = args.upstream
        if upstream == "fake":
            fake, upstream = start_fake(RESULTS_DIR)
            processes.append(fake)
        proxy, proxy_url = start_proxy(upstream, data_dir, admin_key, RESULTS_DIR)
        processes.append(proxy)
        print(f"proxy ready at {proxy_url}, upstream {upstream}", file=sys.stderr, flush=True)
        client = ProxyClient(proxy_url, admin_key, args.model)
        runs = [run_user(client, script, args.timeout) for script in scripts]
        verdicts = [judge(client, run) for run in runs]
        final_metrics = client.metrics()
    finally:
        stop(processes)
        shutil.rmtree(data_dir, ignore_errors=True)

    total = time.perf_counter() - run_started
    rows = [row(r.script.id, [r], [v]) for r, v in zip(runs, verdicts, strict=True)]
    rows.append(row("**all**", runs, verdicts))
    checks = targets(runs, verdicts)
    print(f"\n## Memory quality (upstream {args.upstream}, model {args.model})\n")
    print(markdown_table(HEADERS, rows))
    print("\n## Targets\n")
    print(markdown_table(["target", "result"],
                         [[name, "met" if ok else "NOT met"] for name, ok in checks.items()]))
    print("\n## Extraction and job counters (/metrics at the end)\n")
    print(markdown_table(["metric", "value"], extraction_counters(final_metrics)))
    exchanges = [e for run in runs for e in run.exchanges]
    chat = percentiles([e.chat_ms / 1000 for e in exchanges])
    wait = percentiles([e.wait_s for e in exchanges])
    print(f"\nPer exchange: chat p50 {fmt(chat['p50'], 2)} s (p95 {fmt(chat['p95'], 2)}), "
          f"extraction wait p50 {fmt(wait['p50'])} s (p95 {fmt(wait['p95'])}).")
    print(f"Total run {total:.0f}s. Proxy log: "
          f"{(RESULTS_DIR / 'memory_quality-proxy.log').relative_to(REPO_ROOT)}")
    if args.verbose:
        print("\n## Per user\n")
        for run, verdict in zip(runs, verdicts, strict=True):
            print("\n".join(details(run, verdict)))
    path = write_results("memory_quality", {
        "args": vars(args), "machine": machine(), "total_seconds": total,
        "targets": checks, "table": {"headers": HEADERS, "rows": rows},
        "metrics": {name: value for name, value in final_metrics.items()
                    if name.startswith("memproxy_extraction_") or "rejected" in name},
        "users": [
            {"id": run.script.id, "wall_s": run.wall_s, "usage": run.usage,
             "exchanges": [vars(e) for e in run.exchanges], "verdict": vars(verdict)}
            for run, verdict in zip(runs, verdicts, strict=True)
        ],
    })
    print(f"\nresults: {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
