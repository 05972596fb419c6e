"""Chats that arrive together for a user who is not cached yet, right after a start.

    .venv/bin/python bench/cold_burst.py [--memories 10000] [--burst 32] [--rounds 3]
    .venv/bin/python bench/cold_burst.py --extraction llm --chats 200   # the soak's warm-up

Each round populates a data dir with one user holding ``--memories`` memories (bench/overhead.py's
generated facts, real all-MiniLM-L6-v2 vectors), starts the fake upstream and ``memproxy serve``
on it (the user's snapshot on disk, nothing cached), waits for ready, and sends ``--chats``
chats of that user (default: ``--burst``), ``--burst`` at a time, each a different question.
With ``--extraction off`` (the default) they are ``X-Memory-Mode: read``; with ``llm`` each
chat also makes an extraction job, which the proxy's workers run against the fake upstream
while the burst is served (what a restart under load looks like). Reported per round: the
time from start to ready, the ``X-Memory-Status`` of each chat (``degraded``: forwarded
without memories) and the time until the last answer. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from _servers import stop, wait_ready
from overhead import CACHE_DIR, chat_body, populate, start_servers, unique_questions

USER = "burst-user"


async def burst(
    proxy: str, size: int, chats: int, seed: int, writes: bool
) -> tuple[Counter[str], float]:
    questions = unique_questions(seed)
    headers = {"X-User-Id": USER, "Authorization": "Bearer sk-bench"}
    if not writes:
        headers["X-Memory-Mode"] = "read"
    limits = httpx.Limits(max_connections=size)
    at_once = asyncio.Semaphore(size)

    async def one(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
        async with at_once:
            return await client.post(f"{proxy}/v1/chat/completions", content=body,
                                     headers=headers)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*[
            one(client, chat_body(next(questions), False)) for _ in range(chats)
        ])
        seconds = time.perf_counter() - started
    return Counter(str(a.headers.get("x-memory-status")) for a in answers), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--burst", type=int, default=32, help="chats sent at once")
    parser.add_argument("--chats", type=int, default=0, help="chats in all (0: --burst)")
    parser.add_argument("--extraction", choices=("off", "llm"), default="off")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    chats = args.chats or args.burst
    for round_number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="memproxy-burst-") as work:
            data_dir, logs = Path(work) / "data", Path(work)
            data_dir.mkdir()
            populate(str(data_dir), {USER: args.memories})
            # The ONNX export from bench/results' cache, as bench/overhead.py does.
            (data_dir / "models").symlink_to(CACHE_DIR / "models", target_is_directory=True)
            processes, _, proxy = start_servers(data_dir, logs, extraction=args.extraction)
            try:
                ready = wait_ready(f"{proxy}/readyz", processes[1], 120)
                statuses, seconds = asyncio.run(burst(
                    proxy, args.burst, chats, round_number, args.extraction != "off"))
            finally:
                stop(processes)
        print(f"round {round_number}: ready {ready:.2f} s after start; {chats} chats, "
              f"{args.burst} at a time, for a user of {args.memories:,} memories (extraction "
              f"{args.extraction}): {dict(statuses)}, last answer after {seconds:.2f} s",
              flush=True)


if __name__ == "__main__":
    main()
