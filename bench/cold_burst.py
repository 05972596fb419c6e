"""Chats that arrive together for a user who is not cached yet, right after a start.

    .venv/bin/python bench/cold_burst.py [--memories 10000] [--burst 32] [--rounds 3]

Each round populates a data dir with one user holding ``--memories`` memories (bench/overhead.py's
generated facts, real all-MiniLM-L6-v2 vectors), starts the fake upstream and ``memproxy serve``
on it (the user's snapshot on disk, nothing cached), waits for ready, and sends ``--burst``
chats of that user at once (``X-Memory-Mode: read``, each a different question). Reported per
round: the ``X-Memory-Status`` of each chat (``degraded``: forwarded without memories) and
the time until the last answer. Nothing is asserted.
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
from overhead import chat_body, populate, start_servers, unique_questions

USER = "burst-user"


async def burst(proxy: str, size: int, seed: int) -> tuple[Counter[str], float]:
    questions = unique_questions(seed)
    headers = {"X-User-Id": USER, "X-Memory-Mode": "read", "Authorization": "Bearer sk-bench"}
    limits = httpx.Limits(max_connections=size)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*[
            client.post(f"{proxy}/v1/chat/completions", content=chat_body(next(questions), False),
                        headers=headers)
            for _ in range(size)
        ])
        seconds = time.perf_counter() - started
    return Counter(str(a.headers.get("x-memory-status")) for a in answers), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--burst", type=int, default=32, help="chats sent at once")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for round_number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="memproxy-burst-") as work:
            data_dir, logs = Path(work) / "data", Path(work)
            data_dir.mkdir()
            populate(str(data_dir), {USER: args.memories})
            processes, _, proxy = start_servers(data_dir, logs)
            try:
                wait_ready(f"{proxy}/readyz", processes[1], 120)
                statuses, seconds = asyncio.run(burst(proxy, args.burst, seed=round_number))
            finally:
                stop(processes)
        print(f"round {round_number}: {args.burst} chats at once for a user of "
              f"{args.memories:,} memories right after ready: {dict(statuses)}, "
              f"last answer after {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
