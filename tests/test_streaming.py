"""Streamed chat completions over real HTTP: chunks relayed as they arrive, usage chunks,
and a client that goes away mid-stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream
from http_checks import CHAT_PATH, chat, memories_of, reset, shared_proxy
from servers import ThreadedServer


@pytest.fixture(scope="module")
def _shared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ThreadedServer, FakeUpstream]]:
    with shared_proxy(tmp_path_factory.mktemp("streaming-data")) as pair:
        yield pair


@pytest.fixture
def shared(_shared: tuple[ThreadedServer, FakeUpstream]) -> tuple[str, FakeUpstream]:
    proxy, upstream = _shared
    return proxy.base_url, reset(upstream)


def content_arrivals(response: httpx.Response) -> list[tuple[float, str]]:
    arrivals: list[tuple[float, str]] = []
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: "):])
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            arrivals.append((time.monotonic(), chunk["choices"][0]["delta"]["content"]))
    return arrivals


def test_stream_chunks_reach_the_client_as_they_arrive(
    shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    upstream.chunk_delay = 0.3
    body = {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": "I collect vintage typewriters"}]}
    with httpx.stream("POST", base_url + CHAT_PATH, json=body,
                      headers={"X-User-Id": "sam"}, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-memory-status"] == "none"
        arrivals = content_arrivals(response)

    assert "".join(text for _, text in arrivals) == "echo: I collect vintage typewriters"
    assert len(arrivals) == 5
    first, last = arrivals[0][0], arrivals[-1][0]
    # Causal, not a stopwatch (a loaded machine may be slow to start): the first piece was in
    # the client's hands before the upstream had sent its last event, 4 x 0.3 s later.
    assert first < upstream.last_event_sent_at
    assert last - first >= 0.8  # spread out, not one burst at the end
    # A completed stream is remembered.
    wait_until(lambda: memories_of(base_url, "sam") == ["I collect vintage typewriters"])


@pytest.mark.anyio
async def test_stream_usage_chunk_reaches_the_async_sdk(
    shared: tuple[str, FakeUpstream]
) -> None:
    base_url, _ = shared
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-test",
                                max_retries=0)
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "count my words please"}],
        stream=True, stream_options={"include_usage": True},
        extra_headers={"X-User-Id": "uma"},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: count my words please"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 4
    await client.close()


def test_client_disconnect_cancels_the_upstream_stream(
    shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    upstream.chunk_delay = 10.0  # far longer than the wait below: only a cancel sets the flag
    body = {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": "Unfinished walrus story"}]}
    with httpx.stream("POST", base_url + CHAT_PATH, json=body,
                      headers={"X-User-Id": "dee"}, timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # first chunk in hand; leaving the block closes the connection
    wait_until(upstream.stream_cancelled.is_set, timeout=3)

    upstream.chunk_delay = 0.0
    assert httpx.get(base_url + "/healthz").status_code == 200
    body = {"model": "m", "messages": [{"role": "user", "content": "Completed heron note"}]}
    assert chat(base_url, body, **{"X-User-Id": "dee"}).status_code == 200
    wait_until(lambda: "Completed heron note" in memories_of(base_url, "dee"))
    assert memories_of(base_url, "dee") == ["Completed heron note"]
