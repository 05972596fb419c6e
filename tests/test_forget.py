"""Forget sticks: work in flight when a user (or one memory) is forgotten writes nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import HashingEmbedder, wait_until
from fake_upstream import FakeUpstream
from http_checks import chat, memories_of
from pydantic import SecretStr
from servers import ThreadedServer
from test_jobs_http import metric

from proxy.config import Settings, StoreSettings
from proxy.memory.store import ChromaStore, Memory

COMPLETED = 'memproxy_job_events_total{event="completed"}'


def test_a_job_in_flight_when_its_user_is_forgotten_writes_nothing(
    settings: Settings, upstream: FakeUpstream, start_proxy: Callable[..., ThreadedServer]
) -> None:
    settings.extraction.mode = "llm"
    proxy = start_proxy(settings)
    upstream.extraction_delay = 60
    body = {"model": "m", "messages": [{"role": "user", "content": "I keep bees in Oslo."}]}
    assert chat(proxy.base_url, body, **{"X-User-Id": "zoe"}).status_code == 200
    wait_until(upstream.extraction_requests, timeout=20)  # the model call is in flight

    forgotten = httpx.delete(f"{proxy.base_url}/v1/users/zoe")
    assert forgotten.status_code == 200, forgotten.text
    upstream.extraction_delay = 0  # the model answers now: after the forget
    wait_until(lambda: metric(proxy.base_url, COMPLETED) == 1)
    assert memories_of(proxy.base_url, "zoe") == []

    # What the user says after being forgotten is a new exchange, remembered as usual.
    body["messages"][0]["content"] = "I grow lavender."
    assert chat(proxy.base_url, body, **{"X-User-Id": "zoe"}).status_code == 200
    wait_until(lambda: memories_of(proxy.base_url, "zoe"), timeout=20)


class PausingStore(ChromaStore):
    """A real store whose ``get`` can hold a caller right after it read (to force a race)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.pause_next_get = False
        self.read = threading.Event()
        self.resume = threading.Event()

    def get(self, memory_id: str) -> Memory | None:
        found = super().get(memory_id)
        if self.pause_next_get:
            self.pause_next_get = False
            self.read.set()
            self.resume.wait(10)
        return found


def test_a_change_racing_a_delete_of_its_memory_does_not_bring_it_back(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    store = PausingStore(StoreSettings(shards=2), tmp_path, embedder.dimension)
    memory = Memory("u", "lives in Berlin")
    store.add([memory], embedder.embed([memory.text]))
    assert store.count_user("u") == 1  # cached: the index a stale write would go into

    def write() -> None:
        text = "lives in Berlin Mitte"
        store.update(memory.id, text=text, vector=embedder.embed([text])[0], actor="job:1")

    store.pause_next_get = True
    writer = threading.Thread(target=write)
    writer.start()
    assert store.read.wait(10)  # the job's write has read the memory ...
    deleter = threading.Thread(target=store.delete, args=(memory.id,))
    deleter.start()
    deleter.join(0.5)  # ... and the user deletes it meanwhile
    store.resume.set()
    writer.join(10)
    deleter.join(10)

    assert store.get(memory.id) is None
    assert memory.id not in [m.id for m in store.all_memories("u")]
    store.close()


def test_a_chat_in_flight_when_its_user_is_forgotten_is_not_remembered(
    settings: Settings, upstream: FakeUpstream, start_proxy: Callable[..., ThreadedServer]
) -> None:
    proxy = start_proxy(settings)  # raw mode: the job is stored and applied right away
    upstream.response_delay = 1.5
    body = {"model": "m", "messages": [{"role": "user", "content": "I keep bees in Oslo."}]}
    answered: list[httpx.Response] = []
    asking = threading.Thread(
        target=lambda: answered.append(chat(proxy.base_url, body, **{"X-User-Id": "kai"})))
    asking.start()
    wait_until(upstream.chat_requests, timeout=10)  # the chat is with the upstream
    assert httpx.delete(f"{proxy.base_url}/v1/users/kai").status_code == 200
    asking.join(10)
    assert answered and answered[0].status_code == 200
    wait_until(lambda: metric(proxy.base_url, COMPLETED) == 1)
    assert memories_of(proxy.base_url, "kai") == []


def test_a_memory_api_infer_in_flight_when_its_user_is_forgotten_writes_nothing(
    settings: Settings, upstream: FakeUpstream, start_proxy: Callable[..., ThreadedServer]
) -> None:
    settings.extraction.mode = "llm"
    settings.upstream.api_key = SecretStr("sk-upstream")  # infer=true needs a key of its own
    proxy = start_proxy(settings)
    upstream.extraction_delay = 60
    answered: list[httpx.Response] = []
    body = {"user_id": "ida", "text": "I keep bees in Oslo.", "model": "m"}
    posting = threading.Thread(target=lambda: answered.append(
        httpx.post(f"{proxy.base_url}/v1/memories", json=body, timeout=30)))
    posting.start()
    wait_until(upstream.extraction_requests, timeout=20)  # the model call is in flight
    assert httpx.delete(f"{proxy.base_url}/v1/users/ida").status_code == 200
    upstream.extraction_delay = 0
    posting.join(20)
    assert memories_of(proxy.base_url, "ida") == []
    assert answered and answered[0].status_code == 200, answered[0].text
    assert answered[0].json()["data"] == []
