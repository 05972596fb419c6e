"""Questions about a time ("What did I do yesterday?", "last week", "over the weekend"), asked
through the real proxy and, with ``--upstream URL``, answered by a real model.

    .venv/bin/python bench/time_questions.py [--upstream fake|URL] [--model NAME]

One user's memories are stored with ``POST /v1/memories`` (``infer: false``), each dated
relative to today (UTC): things done yesterday, two days ago, last week, last weekend, last
month, three weeks ago, and older ones that share their words ("Baked banana bread" two months
ago beside "Baked sourdough bread" yesterday), plus standing facts. Each question is asked
twice, by two proxies on the same data: one with the default settings and one with
``retrieval.date_weight`` 0 (no date read from the question). For each it reports:

- found first: the memory that answers it is the first one injected
  (``POST /v1/memories/explain``, exactly what the chat path injects);
- injected: it is in the block at all;
- answered: the model's reply (``X-Memory-Mode: read``, temperature 0) holds the answer's
  keyword. With ``--upstream fake`` (the tests' FakeUpstream) replies are canned, so only the
  first two columns mean anything.

Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from _results import REPO_ROOT, RESULTS_DIR, machine, markdown_table, write_results
from _servers import free_port, stop, wait_ready
from memory_quality import start_fake

CACHE_DIR = RESULTS_DIR / ".cache"
USER = "week-user"
NOON = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)


def days_back(n: int) -> float:
    return (NOON - timedelta(days=n)).timestamp()


def last_week(weekday: int) -> float:
    """``weekday`` (Monday 0) of the week before this one."""
    return days_back(NOON.weekday() + 7 - weekday)


def last_saturday() -> float:
    back = (NOON.weekday() - 5) % 7 or 7
    return days_back(back)


def mid_last_month() -> float:
    first = NOON.replace(day=1)
    return (first - timedelta(days=first.day)).replace(day=15).timestamp()


# (text, when); the ones that answer a question, then look-alikes from long ago, then facts.
MEMORIES: list[tuple[str, float]] = [
    ("Baked sourdough bread for the neighbours", days_back(1)),
    ("Had dinner at the Thai place on Elm Street with Priya", days_back(2)),
    ("Went kayaking on Lake Merritt with Sam", last_week(2)),
    ("Hiked the ridge trail on Mount Tamalpais", last_saturday()),
    ("Started a Spanish course at the community college", mid_last_month()),
    ("Fixed the leaking kitchen faucet", days_back(21)),
    ("Baked banana bread for a birthday", days_back(64)),
    ("Had dinner with Marco at the ramen bar downtown", days_back(75)),
    ("Went kayaking in the bay with the rowing club", days_back(95)),
    ("Hiked to the waterfall at Muir Woods", days_back(130)),
    ("Started learning the guitar", days_back(150)),
    ("Fixed the flat tyre on the bike", days_back(170)),
    ("Works as a data engineer at Acme", days_back(200)),
    ("Has a dog named Biscuit", days_back(210)),
    ("Lives in Oakland", days_back(220)),
    ("Prefers tea over coffee", days_back(230)),
    ("Is allergic to peanuts", days_back(240)),
    ("Plays five-a-side football on Thursdays", days_back(250)),
    ("Drives an old blue Volvo", days_back(260)),
    ("Has a sister called Nina who lives in Lisbon", days_back(270)),
]
# (question, the memory that answers it, a word the answer must hold)
QUESTIONS: list[tuple[str, str, str]] = [
    ("What did I do yesterday?", MEMORIES[0][0], "sourdough"),
    ("What did I bake yesterday?", MEMORIES[0][0], "sourdough"),
    ("Who did I have dinner with the day before yesterday?", MEMORIES[1][0], "Priya"),
    ("What did I do last week?", MEMORIES[2][0], "kayak"),
    ("Where did I go kayaking last week?", MEMORIES[2][0], "Merritt"),
    ("What did I do over the weekend?", MEMORIES[3][0], "Tamalpais"),
    ("Where did I hike last weekend?", MEMORIES[3][0], "Tamalpais"),
    ("What did I start last month?", MEMORIES[4][0], "Spanish"),
    ("What did I fix three weeks ago?", MEMORIES[5][0], "faucet"),
    ("What is my dog called?", MEMORIES[13][0], "Biscuit"),  # no time: the control
]


def start_proxy(upstream: str, data_dir: Path, admin_key: str, logs: Path,
                date_weight: float | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMPROXY_")}
    env.update({
        "MEMPROXY_UPSTREAM_URL": upstream, "MEMPROXY_DATA_DIR": str(data_dir),
        "MEMPROXY_EXTRACTION_MODE": "off", "MEMPROXY_ADMIN_KEY": admin_key,
        "MEMPROXY_SERVER__LOG_LEVEL": "warning", "HF_HUB_OFFLINE": "1",
    })
    if date_weight is not None:
        env["MEMPROXY_RETRIEVAL__DATE_WEIGHT"] = str(date_weight)
    name = "time_questions-proxy.log"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=open(logs / name, "wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/readyz", proxy, 300)
    return proxy, url


def ask(client: httpx.Client, admin: dict[str, str], model: str) -> list[dict[str, Any]]:
    ids = {}
    for text, created_at in MEMORIES:
        answer = client.post("/v1/memories", headers=admin, json={
            "user_id": USER, "text": text, "infer": False, "created_at": created_at})
        answer.raise_for_status()
        ids[text] = answer.json()["data"][0]["id"]
    rows = []
    for question, expected, keyword in QUESTIONS:
        explained = client.post("/v1/memories/explain", headers=admin, json={
            "user_id": USER, "message": question}).json()
        injected = explained["injected"]
        reply = client.post("/v1/chat/completions", json={
            "model": model, "max_tokens": 60, "temperature": 0,
            "messages": [{"role": "system", "content": "You are a helpful assistant. Answer "
                          "in one sentence."}, {"role": "user", "content": question}],
        }, headers={"Authorization": "Bearer sk-bench", "X-User-Id": USER,
                    "X-Memory-Mode": "read"})
        reply.raise_for_status()
        text = reply.json()["choices"][0]["message"]["content"] or ""
        rows.append({
            "question": question, "first": bool(injected) and injected[0] == ids[expected],
            "injected": ids[expected] in injected,
            "answered": keyword.casefold() in text.casefold(), "reply": text,
            "spans": explained["time_asked"]["spans"],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", default="fake",
                        help="'fake' (tests' FakeUpstream) or an OpenAI-compatible base URL")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    args = parser.parse_args()
    started = time.perf_counter()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream = args.upstream
        if upstream == "fake":
            fake, upstream = start_fake(RESULTS_DIR)
            processes.append(fake)
        for label, weight in (("default", None), ("date_weight 0", 0.0)):
            data_dir = Path(tempfile.mkdtemp(prefix="memproxy-time-"))
            (data_dir / "models").symlink_to(CACHE_DIR / "models", target_is_directory=True)
            admin_key = secrets.token_urlsafe(24)
            proxy, url = start_proxy(upstream, data_dir, admin_key, RESULTS_DIR, weight)
            try:
                with httpx.Client(base_url=url, timeout=300) as client:
                    results[label] = ask(client, {"Authorization": f"Bearer {admin_key}"},
                                         args.model)
            finally:
                stop([proxy])
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        stop(processes)
    print(f"\n## Questions about a time (upstream {args.upstream}, model {args.model}; "
          f"today {NOON:%A %Y-%m-%d})\n")
    table = []
    for n, (question, _, _) in enumerate(QUESTIONS):
        on, off = results["default"][n], results["date_weight 0"][n]
        mark = {True: "yes", False: "no"}
        table.append([question, " / ".join(mark[r["first"]] for r in (on, off)),
                      " / ".join(mark[r["injected"]] for r in (on, off)),
                      " / ".join(mark[r["answered"]] for r in (on, off))])
    totals = [sum(r[key] for r in results[label]) for key in ("first", "injected", "answered")
              for label in ("default", "date_weight 0")]
    table.append(["**all**", f"{totals[0]} / {totals[1]}", f"{totals[2]} / {totals[3]}",
                  f"{totals[4]} / {totals[5]}"])
    print(markdown_table(["question", "found first (default / date_weight 0)",
                          "injected", "answered"], table))
    print("\nReplies (default settings):")
    for row in results["default"]:
        print(f"- {row['question']} → {row['reply']!r}")
    print(f"\nTotal run {time.perf_counter() - started:.0f} s.")
    path = write_results("time_questions", {
        "args": vars(args), "machine": machine(), "today": NOON.isoformat(), "runs": results})
    print(f"results: {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
