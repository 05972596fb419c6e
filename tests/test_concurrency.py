"""100 concurrent streamed chats for 20 users: each gets its own memories and its own answer,
every exchange is stored, and nothing fails on the way (no "database is locked")."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream
from http_checks import CHAT_PATH, forwarded_chats, memories_of

from proxy.config import Settings

USERS = 20
STREAMS = 100
SECRETS = [f"zebra{n:02d}quokka" for n in range(USERS)]


async def stream_one(client: httpx.AsyncClient, n: int) -> tuple[int, str, str, str]:
    user = f"user-{n % USERS}"
    question = f"Question {n} from {user}: what is my word?"
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": question}]}
    text = ""
    async with client.stream("POST", CHAT_PATH, json=body, headers={"X-User-Id": user}) as r:
        status, memory = r.status_code, r.headers.get("x-memory-status", "")
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[len("data: "):])
                if chunk["choices"]:
                    text += chunk["choices"][0]["delta"].get("content") or ""
    return status, memory, question, text


async def seed_all(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        responses = await asyncio.gather(*(
            client.post(CHAT_PATH, headers={"X-User-Id": f"user-{n}"}, json={
                "model": "m", "messages": [{"role": "user", "content": f"My word is {secret}"}]})
            for n, secret in enumerate(SECRETS)
        ))
    assert {r.status_code for r in responses} == {200}


async def stream_all(base_url: str) -> list[tuple[int, str, str, str]]:
    limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        return await asyncio.gather(*(stream_one(client, n) for n in range(STREAMS)))


def test_100_concurrent_streams_for_20_users_without_cross_talk(
    settings: Settings, upstream: FakeUpstream, start_proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings.jobs.poll_seconds = 0.05
    # Correctness under concurrency, not latency: client, fake upstream and proxy share one
    # process (one GIL) here, and 100 streams start at once. With the default 250 ms some
    # requests would rightly fail open ("degraded"), and so would a wait for a retrieval turn
    # longer than the default 1 s; those paths have their own tests.
    settings.retrieval.timeout_ms = 10_000
    settings.retrieval.queue_timeout_ms = 10_000
    proxy = start_proxy(settings)
    asyncio.run(seed_all(proxy.base_url))
    wait_until(lambda: all(memories_of(proxy.base_url, f"user-{n}") for n in range(USERS)))
    upstream.clear()
    upstream.chunk_delay = 0.02  # streams overlap

    results = asyncio.run(stream_all(proxy.base_url))

    for status, memory, question, text in results:
        assert (status, memory) == (200, "injected"), question
        assert text == f"echo: {question}"  # each stream got its own answer
    forwarded = forwarded_chats(upstream)
    assert len(forwarded) == STREAMS
    for request in forwarded:
        question = request.json["messages"][-1]["content"]
        n = int(re.match(r"Question (\d+)", question).group(1))  # type: ignore[union-attr]
        block = request.json["messages"][0]["content"]
        assert [s for s in SECRETS if s in block] == [SECRETS[n % USERS]], question

    # Every exchange processed, each stored under its own user only; the questions are not
    # statements, so raw mode stores none of them.
    done = f'memproxy_jobs{{state="done"}} {USERS + STREAMS}'
    wait_until(lambda: done in httpx.get(proxy.base_url + "/metrics").text, timeout=60)
    for n in range(USERS):
        stored = memories_of(proxy.base_url, f"user-{n}")
        assert stored == [f"My word is {SECRETS[n]}"], stored
    metrics = httpx.get(proxy.base_url + "/metrics").text
    assert 'memproxy_job_events_total{event="enqueue_failures"} 0' in metrics
    assert 'memproxy_jobs{state="failed"} 0' in metrics
    problems = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith("memproxy")
                and "no admin key" not in r.getMessage()]
    assert problems == []
    assert "database is locked" not in caplog.text
