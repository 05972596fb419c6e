"""Tokens a long chat sends upstream through memproxy: savings, evidence kept, cache reuse.

    .venv/bin/python bench/tokens.py                          # the synthetic set in bench/data
    .venv/bin/python bench/tokens.py --locomo PATH            # any LoCoMo-layout file
    .venv/bin/python bench/tokens.py --locomo PATH --budget 4000 --replay 40

Each conversation is one user; its first speaker is the user, the other the assistant. The
user's turns are stored as memories first (``POST /v1/memories/import``: what raw
extraction would have stored), so memories do not change while it is replayed. Then, against
the fake upstream (tests/fake_upstream.py, in this process, recording what reaches it):

- **replay**: the last ``--replay`` exchanges are sent as a growing chat (the whole history
  each time, as clients do); the *prefix reuse* of consecutive forwarded requests is the
  longest common prefix of request t+1 with request t, as a share of request t (characters of
  the rendered prompt: what a provider's prompt cache can reuse). Measured for today's
  placement (``conversation.stable_block: false``: the block re-chosen every turn, right after
  the system prompt), the stable block, and the stable block with trimming at ``--budget``.
- **questions** (``--settle S``: S seconds after the replay first, so the turns trimming
  leaves out are embedded in the background, as in a chat that grew turn by turn; without
  it they are asked at once, the first ones ranking most left-out turns by keywords alone):
  each question is sent with the full history before it; on what reaches the
  upstream: tokens forwarded vs sent, injected tokens, and *evidence coverage* (share of the
  question's evidence turns whose text is in the forwarded request: kept history, recalled
  turns or injected memories), against the full history and naive truncation to the same
  budget (the newest turns that fit), computed on the same requests in the same run.

Tokens are counted with proxy/memory/tokens.estimate_tokens (what the proxy counts without a
tokenizer), the same way for every column.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _api_eval import Proxy, load_locomo  # noqa: E402
from _results import fmt, machine, markdown_table, write_results  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402

from proxy.config import EmbeddingSettings  # noqa: E402
from proxy.memory.embedding import open_embedder  # noqa: E402
from proxy.memory.injection import (  # noqa: E402
    BLOCK_CLOSE,
    BLOCK_OPEN,
    RECALLED_CLOSE,
    RECALLED_OPEN,
)
from proxy.memory.markup import neutralise_markup  # noqa: E402
from proxy.memory.tokens import estimate_tokens  # noqa: E402

SYNTHETIC = Path(__file__).resolve().parent / "data" / "retrieval_eval.jsonl"
SYSTEM = "You are a helpful assistant in a long-running conversation."


@dataclass
class Line:
    key: str
    role: str  # user | assistant
    text: str
    created_at: float


@dataclass
class Talk:
    user: str
    lines: list[Line]
    questions: list[tuple[str, list[str]]]  # question text, evidence keys


def load_synthetic(path: Path) -> list[Talk]:
    import calendar

    talks = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        user = json.loads(raw)
        lines = []
        for session in user["sessions"]:
            day = calendar.timegm(time.strptime(session["date"], "%Y-%m-%d")) + 19 * 3600
            lines += [Line(t["id"], t["role"], t["text"], day + 90 * n)
                      for n, t in enumerate(session["turns"])]
        keys = {line.key for line in lines}
        questions = [(q["question"], [g for g in q["gold_turns"] if g in keys])
                     for q in user["questions"]]
        talks.append(Talk(user["user_id"], lines, [q for q in questions if q[1]]))
    return talks


def load_talks(path: Path) -> list[Talk]:
    talks = []
    for conversation in load_locomo(path):
        first = conversation.turns[0].text.split(":", 1)[0]
        lines = [Line(t.key, "user" if t.text.split(":", 1)[0] == first else "assistant",
                      t.text, t.created_at) for t in conversation.turns]
        talks.append(Talk(conversation.user, lines,
                          [(q.text, q.evidence) for q in conversation.questions]))
    return talks


def messages_of(lines: list[Line], question: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}]
    messages += [{"role": line.role, "content": line.text} for line in lines]
    if question is not None:
        messages.append({"role": "user", "content": question})
    return messages


def count(messages: list[dict[str, Any]]) -> int:
    return sum(estimate_tokens(str(m.get("content") or "")) for m in messages)


def rendered(messages: list[dict[str, Any]]) -> str:
    return "".join(f"<{m.get('role')}>{m.get('content')}" for m in messages)


def common_prefix(a: str, b: str) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:  # binary search on equal prefixes: fast for 100 kB prompts
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def naive_truncation(messages: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    kept: list[dict[str, str]] = []
    used = estimate_tokens(messages[0]["content"])
    for message in reversed(messages[1:]):
        cost = estimate_tokens(message["content"])
        if kept and used + cost > budget:
            break
        kept.append(message)
        used += cost
    return [messages[0], *reversed(kept)]


def covered(text: str, haystack: str, plain: str) -> bool:
    return neutralise_markup(text) in haystack or " ".join(text.split()) in plain


_SECTION = re.compile(
    rf"{re.escape(RECALLED_OPEN)}.*?{re.escape(RECALLED_CLOSE)}"
    rf"|{re.escape(BLOCK_OPEN)}.*?{re.escape(BLOCK_CLOSE)}", re.S)


def sections(forwarded: list[dict[str, Any]]) -> dict[str, str]:
    """The forwarded request's text by where memproxy put it: the kept history, recalled
    (left-out) turns, injected memories; whitespace collapsed."""
    parts: dict[str, list[str]] = {"history": [], "recalled": [], "memories": []}
    for message in forwarded:
        content = str(message.get("content") or "")
        for found in _SECTION.finditer(content):
            kind = "recalled" if found.group().startswith(RECALLED_OPEN) else "memories"
            parts[kind].append(found.group())
        parts["history"].append(_SECTION.sub(" ", content))
    return {kind: " ".join(" ".join(texts).split()) for kind, texts in parts.items()}


class Run:
    def __init__(self, fake: FakeUpstream, embedder: Any, overrides: dict[str, Any]):
        self.fake = fake
        self.proxy = Proxy(embedder, {"upstream.url": fake.url, **overrides})
        self.client = self.proxy.client()
        # Idle connections are not reused past uvicorn's keep-alive (a closed one would fail).
        self.chat = httpx.Client(base_url=self.proxy.url + "/v1", timeout=120,
                                 limits=httpx.Limits(keepalive_expiry=1.0))
        self.degraded = 0

    def store(self, talk: Talk) -> None:
        records = [{"memory": line.text, "created_at": line.created_at}
                   for line in talk.lines if line.role == "user"]
        self.client.post("/v1/memories/import", params={"user_id": talk.user},
                         json=records).raise_for_status()

    def send(self, talk: Talk, messages: list[dict[str, str]], budget: int) -> tuple[
            list[dict[str, Any]], httpx.Response]:
        self.fake.clear()
        headers = {"x-user-id": talk.user, "authorization": "Bearer sk-bench"}
        if budget:
            headers["x-memory-history-budget"] = str(budget)
        response = self.chat.post("/chat/completions", headers=headers,
                                  json={"model": "gpt-4o-mini", "messages": messages})
        response.raise_for_status()
        self.degraded += response.headers.get("x-memory-status") == "degraded"
        [forwarded] = self.fake.chat_requests()
        return forwarded.json["messages"], response

    def close(self) -> None:
        self.client.close()
        self.chat.close()
        self.proxy.close()


def replay_reuse(run: Run, talk: Talk, exchanges: int, budget: int) -> list[tuple[float, int]]:
    """Per pair of consecutive turns: the share of turn t reused by t+1, and its tokens."""
    user_at = [i for i, line in enumerate(talk.lines) if line.role == "user"][-exchanges:]
    previous = None
    pairs = []
    for i in user_at:
        forwarded, _ = run.send(talk, messages_of(talk.lines[: i + 1]), budget)
        text = rendered(forwarded)
        if previous is not None:
            common = common_prefix(previous, text)
            pairs.append((common / len(previous), estimate_tokens(previous[:common])))
        previous = text
    return pairs


def question_rows(run: Run, talk: Talk, budget: int) -> list[dict[str, Any]]:
    by_key = {line.key: n for n, line in enumerate(talk.lines)}
    rows = []
    for question, evidence in talk.questions:
        # The question is asked at the end of the conversation, after every evidence turn.
        sent = messages_of(talk.lines, question)
        forwarded, response = run.send(talk, sent, budget)
        plain = " ".join(" ".join(str(m.get("content") or "").split()) for m in forwarded)
        naive = naive_truncation(sent, budget)
        naive_plain = " ".join(" ".join(m["content"].split()) for m in naive)
        injected = [m for m in forwarded if "<memories>" in str(m.get("content") or "")]
        texts = [talk.lines[by_key[key]].text for key in evidence]
        where = sections(forwarded)
        # Each evidence turn counted once, at the first place it is found.
        found_in = [next((kind for kind, text in where.items() if covered(t, text, text)), None)
                    for t in texts]
        rows.append({
            **{f"in_{kind}": found_in.count(kind) / len(texts) for kind in where},
            "sent": count(sent), "forwarded": count(forwarded), "naive": count(naive),
            "injected": count(injected),
            "coverage": np.mean([covered(t, plain, plain) for t in texts]),
            "naive_coverage": np.mean([" ".join(t.split()) in naive_plain for t in texts]),
            "trimmed": response.headers.get("x-memory-trimmed", ""),
        })
    return rows


def measure(
    talks: list[Talk], embedder: Any, extra: dict[str, Any], budget_tokens: int, replay: int,
    settle: float = 0.0,
) -> tuple[list[dict[str, Any]], dict[str, list[tuple[float, int]]], dict[str, int]]:
    """The three configurations, one after the other, against one fake upstream."""
    with FakeUpstream() as fake:
        configs = {
            "per-turn block (before)": ({"conversation.stable_block": False}, 0),
            "stable block": ({}, 0),
            f"stable block + trimming at {budget_tokens}": ({}, budget_tokens),
        }
        reuse: dict[str, list[tuple[float, int]]] = {}
        degraded: dict[str, int] = {}
        questions: list[dict[str, Any]] = []
        for name, (overrides, budget) in configs.items():
            run = Run(fake, embedder, {**extra, **overrides})
            try:
                reuse[name] = []
                for talk in talks:
                    run.store(talk)
                    reuse[name] += replay_reuse(run, talk, replay, budget)
                    if budget and settle:
                        time.sleep(settle)  # the left-out turns embedded in the background
                    if budget:
                        questions += question_rows(run, talk, budget)
            finally:
                degraded[name] = run.degraded
                run.close()
    return questions, reuse, degraded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locomo", type=Path, help="a LoCoMo-layout file (default: bench/data)")
    parser.add_argument("--budget", type=int, default=4000, help="history budget, tokens")
    parser.add_argument("--replay", type=int, default=30, help="exchanges replayed per talk")
    parser.add_argument("--conversations", type=int, default=0, help="first N only (0: all)")
    parser.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                        help="wait after each replay before the questions, so the turns left "
                             "out are embedded (as in a chat that grew turn by turn); 0: ask "
                             "at once, as a client that just sent its whole history")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a proxy setting for every run, e.g. conversation.keep_last=8")
    args = parser.parse_args()
    extra = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
             for k, v in (item.split("=", 1) for item in args.set)}
    talks = load_talks(args.locomo) if args.locomo else load_synthetic(SYNTHETIC)
    if args.conversations:
        talks = talks[: args.conversations]
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "budget": args.budget, "settings": extra,
                               "settle_seconds": args.settle,
                               "source": str(args.locomo or SYNTHETIC.name)}
    # The real model, exported to ONNX once into bench/results (git-ignored).
    embedder = open_embedder(EmbeddingSettings(), Path(__file__).resolve().parent / "results")
    try:
        questions, reuse, degraded = measure(talks, embedder, extra, args.budget, args.replay,
                                             args.settle)
    finally:
        # Its inference threads finish what is queued (turns embedded in the background) and
        # stop: an interpreter exiting under a running ONNX call aborts the process.
        close = getattr(embedder, "close", None)
        if close is not None:
            close()
    seconds = time.perf_counter() - started
    summary = {
        "prefix_reuse": {name: {
            "median": float(np.median([s for s, _ in v])) * 100 if v else None,
            "mean": float(np.mean([s for s, _ in v])) * 100 if v else None,
            "tokens_median": float(np.median([t for _, t in v])) if v else None,
            "n": len(v)} for name, v in reuse.items()},
        "questions": len(questions),
        "tokens_sent": int(sum(r["sent"] for r in questions)),
        "tokens_forwarded": int(sum(r["forwarded"] for r in questions)),
        "tokens_naive": int(sum(r["naive"] for r in questions)),
        "tokens_injected": int(sum(r["injected"] for r in questions)),
        "coverage": float(np.mean([r["coverage"] for r in questions])) * 100,
        "coverage_by_place": {kind: float(np.mean([r[f"in_{kind}"] for r in questions])) * 100
                              for kind in ("history", "recalled", "memories")},
        "naive_coverage": float(np.mean([r["naive_coverage"] for r in questions])) * 100,
        "degraded_requests": degraded,
        "seconds": seconds,
    }
    results.update(summary)
    path = write_results("tokens", results)
    sent = summary["tokens_sent"]
    print(markdown_table(
        ["forwarded for the questions", "tokens (sum)", "of full history", "evidence coverage"],
        [["full history", f"{sent:,}", "100 %", "100 %"],
         [f"naive truncation to {args.budget}", f"{summary['tokens_naive']:,}",
          f"{100 * summary['tokens_naive'] / sent:.1f} %", f"{summary['naive_coverage']:.1f} %"],
         [f"memproxy trimming at {args.budget}", f"{summary['tokens_forwarded']:,}",
          f"{100 * summary['tokens_forwarded'] / sent:.1f} %", f"{summary['coverage']:.1f} %"]],
    ))
    print(f"(of which injected memory and recalled turns: {summary['tokens_injected']:,} tokens;"
          f" {summary['questions']} questions)")
    by_place = summary["coverage_by_place"]
    print("evidence turns found in the kept history {history:.1f} %, in recalled turns "
          "{recalled:.1f} %, in injected memories {memories:.1f} %".format(**by_place))
    print(markdown_table(
        ["replayed growing chat", "prefix reuse, median", "mean", "reused tokens, median",
         "pairs"],
        [[name, fmt(v["median"]), fmt(v["mean"]), fmt(v["tokens_median"]), str(v["n"])]
         for name, v in summary["prefix_reuse"].items()],
    ))
    print(f"degraded requests (forwarded unchanged, no memories): {degraded}")
    print(f"{seconds:.0f} s; results in {path}")


if __name__ == "__main__":
    main()
