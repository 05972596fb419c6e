"""Fail open: a failing or slow memory store costs the memories, never the chat."""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import HashingEmbedder, wait_until
from fake_upstream import FakeUpstream
from http_checks import CHAT_PATH, closed_port, forwarded_chats, injected_positions, sdk

from proxy.config import Settings
from proxy.errors import MemoryUnavailable
from proxy.memory.store import Candidates, Memory, ScoredMemory
from proxy.state.sqlite import database_path


class FailingStore:
    """A MemoryStore whose every call fails, or is slow (``delay``) before answering."""

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay

    def _call(self) -> None:
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error

    def add(self, memories: Sequence[Memory], vectors: np.ndarray, **kwargs: Any) -> None:
        self._call()

    def search(
        self, user_id: str, vector: np.ndarray, k: int, **kwargs: Any
    ) -> list[ScoredMemory]:
        self._call()
        return []

    def candidates(self, user_id: str, vector: np.ndarray, query: str, **kwargs: Any) -> Any:
        self._call()
        return Candidates([], *(np.zeros(0) for _ in range(3)), np.zeros((0, 8)),
                          np.zeros(0, dtype=bool))

    def list_user(self, user_id: str, limit: int, offset: int = 0, **kwargs: Any) -> list[Memory]:
        self._call()
        return []

    def list_page(self, user_id: str, **kwargs: Any) -> tuple[list[Memory], str | None]:
        self._call()
        return [], None

    def count_user(self, user_id: str, **kwargs: Any) -> int:
        self._call()
        return 3

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "stream"),
    [(MemoryUnavailable("chroma is down"), False), (RuntimeError("boom"), True)],
)
def test_failing_store_degrades_but_the_chat_succeeds(
    error: Exception, stream: bool, upstream: FakeUpstream, start_proxy
) -> None:
    proxy = start_proxy(store=FailingStore(error))
    client = sdk(proxy.base_url + "/v1")
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "What do I keep on my roof?"}],
        stream=stream, extra_headers={"X-User-Id": "alice"},
    )
    assert raw.status_code == 200
    assert raw.headers["x-memory-status"] == "degraded"
    parsed = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    else:
        text = parsed.choices[0].message.content
    assert text == "echo: What do I keep on my roof?"
    assert injected_positions(forwarded_chats(upstream)[0].json) == []
    metrics = httpx.get(proxy.base_url + "/metrics").text
    assert 'memproxy_memory_status_total{status="degraded"} 1' in metrics


def test_slow_store_times_out_and_the_chat_goes_on(
    settings: Settings, caplog: pytest.LogCaptureFixture, start_proxy
) -> None:
    settings.retrieval.timeout_ms = 100
    settings.extraction.mode = "off"
    proxy = start_proxy(settings, store=FailingStore(delay=1.0))
    client = sdk(proxy.base_url + "/v1")
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "What do I keep on my roof?"}],
        extra_headers={"X-User-Id": "alice"},
    )
    elapsed = time.monotonic() - started
    assert raw.headers["x-memory-status"] == "degraded"
    assert elapsed < 0.7, elapsed
    assert 'memproxy_memory_failures_total{reason="timeout"} 1' in httpx.get(
        proxy.base_url + "/metrics").text
    # When the abandoned work ends, the log says where the time went: the store's second.
    late = wait_until(lambda: [r.getMessage() for r in caplog.records
                               if r.getMessage().startswith("a retrieval took")], timeout=10)
    assert "(timeout 100)" in late[0]
    candidates = re.search(r"candidates (\d+)", late[0])
    assert candidates is not None and 1000 <= int(candidates.group(1)) < 5000, late[0]
    assert re.search(r"embed \d+, candidates", late[0]) and "shaping" in late[0]


def test_unusable_data_dir_degrades_and_readiness_says_so(
    settings: Settings, tmp_path: Path, upstream: FakeUpstream, start_proxy
) -> None:
    settings.data_dir = tmp_path / "a-file-not-a-directory"
    settings.data_dir.write_text("")
    proxy = start_proxy(settings, store=None)
    raw = sdk(proxy.base_url + "/v1").chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hello"}],
        extra_headers={"X-User-Id": "alice"},
    )
    assert raw.headers["x-memory-status"] == "degraded"
    assert raw.parse().choices[0].message.content == "echo: hello"
    assert httpx.get(proxy.base_url + "/healthz").status_code == 200
    ready = httpx.get(proxy.base_url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"memory": False, "jobs": False, "worker": False}


def test_memory_api_with_a_failing_store_is_a_503_not_a_500(
    upstream: FakeUpstream, start_proxy
) -> None:
    proxy = start_proxy(store=FailingStore(MemoryUnavailable("chroma is down")))
    response = httpx.get(proxy.base_url + "/v1/memories", params={"user_id": "u"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "memory_unavailable"


class BrokenEmbedder(HashingEmbedder):
    """An Embedder that raises, or is slow (``delay``) before answering."""

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay

    def embed(self, texts: list[str]) -> np.ndarray:
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return super().embed(texts)


def test_raising_embedder_degrades_the_chat_and_its_job_is_dead_lettered(
    settings: Settings, caplog: pytest.LogCaptureFixture, start_proxy
) -> None:
    settings.jobs.max_attempts = 2
    settings.jobs.retry_base_seconds = 0.01
    settings.jobs.poll_seconds = 0.05
    proxy = start_proxy(settings, embedder=BrokenEmbedder(RuntimeError("embedder exploded")))
    raw = sdk(proxy.base_url + "/v1").chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "I grow chillies"}],
        extra_headers={"X-User-Id": "eve"},
    )
    assert raw.status_code == 200 and raw.headers["x-memory-status"] == "degraded"
    assert raw.parse().choices[0].message.content == "echo: I grow chillies"

    def metrics() -> str:
        return httpx.get(proxy.base_url + "/metrics").text

    wait_until(lambda: 'memproxy_jobs{state="dead"} 1' in metrics(), timeout=10)
    assert 'memproxy_memory_failures_total{reason="RuntimeError"} 1' in metrics()
    with sqlite3.connect(database_path(settings.data_dir)) as conn:
        assert conn.execute("SELECT last_error FROM jobs").fetchone() == (
            "RuntimeError: embedder exploded",)
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("retrieval failed (RuntimeError: embedder exploded)" in m for m in logged)
    assert any("attempt 2 failed (dead)" in m for m in logged)


def test_slow_embedder_times_out_and_the_chat_goes_on(settings: Settings, start_proxy) -> None:
    settings.retrieval.timeout_ms = 100
    settings.extraction.mode = "off"
    proxy = start_proxy(settings, embedder=BrokenEmbedder(delay=1.0))
    started = time.monotonic()
    raw = sdk(proxy.base_url + "/v1").chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "What do I grow?"}],
        extra_headers={"X-User-Id": "eve"},
    )
    assert raw.headers["x-memory-status"] == "degraded"
    assert time.monotonic() - started < 0.7


class BusyStore(FailingStore):
    """Each search is ``work`` seconds that cannot overlap another's: what CPU-bound ranking
    is on a machine whose cores are all busy. Concurrent callers only slow each other down."""

    def __init__(self, work: float) -> None:
        super().__init__()
        self.work = work
        self._lock = threading.Lock()

    def candidates(self, user_id: str, vector: np.ndarray, query: str, **kwargs: Any) -> Any:
        with self._lock:
            time.sleep(self.work)
        return super().candidates(user_id, vector, query, **kwargs)


def concurrent_statuses(base_url: str, count: int) -> list[str]:
    def ask(n: int) -> str:
        response = httpx.post(base_url + CHAT_PATH, headers={"X-User-Id": f"busy{n}"},
                              timeout=30, json={"model": "m", "messages": [
                                  {"role": "user", "content": f"What did I plant in bed {n}?"}]})
        assert response.status_code == 200
        return response.headers["x-memory-status"]

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(ask, range(count)))


def test_load_waits_its_turn_and_is_not_degraded(settings: Settings, start_proxy) -> None:
    # Six requests at once, 0.1 s of work each: together 0.6 s, over the 0.25 s timeout, but
    # one retrieval at a time each finishes its own work well within it.
    settings.retrieval.timeout_ms = 250
    settings.retrieval.max_concurrent = 1
    settings.extraction.mode = "off"
    proxy = start_proxy(settings, store=BusyStore(work=0.1))
    assert concurrent_statuses(proxy.base_url, 6) == ["none"] * 6
    assert "memproxy_memory_failures_total{" not in httpx.get(proxy.base_url + "/metrics").text


def test_a_queue_that_does_not_move_is_an_overload_and_the_chat_goes_on(
    settings: Settings, start_proxy
) -> None:
    settings.retrieval.timeout_ms = 250
    settings.retrieval.max_concurrent = 1
    settings.retrieval.queue_timeout_ms = 150
    settings.extraction.mode = "off"
    proxy = start_proxy(settings, store=BusyStore(work=0.1))
    statuses = concurrent_statuses(proxy.base_url, 8)
    assert statuses.count("degraded") >= 2 and statuses.count("none") >= 1, statuses
    metrics = httpx.get(proxy.base_url + "/metrics").text
    assert f'memproxy_memory_failures_total{{reason="overloaded"}} ' \
           f'{statuses.count("degraded")}' in metrics


def test_unwritable_store_path_keeps_jobs_until_a_restart_with_a_store(
    settings: Settings, start_proxy
) -> None:
    blocked = settings.data_dir / "chroma"
    settings.data_dir.mkdir(parents=True)
    blocked.write_text("a file where the store's directory should be")
    proxy = start_proxy(settings, store=None)
    raw = sdk(proxy.base_url + "/v1").chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "I play the oboe"}],
        extra_headers={"X-User-Id": "olu"},
    )
    assert raw.status_code == 200 and raw.headers["x-memory-status"] == "degraded"
    ready = httpx.get(proxy.base_url + "/readyz")
    assert ready.json()["checks"] == {"memory": False, "jobs": True, "worker": False}
    # Nothing is lost: the exchange waits in the job table for a working store.
    wait_until(lambda: httpx.get(proxy.base_url + "/metrics").text.count(
        'memproxy_jobs{state="queued"} 1'))
    proxy.stop()

    blocked.unlink()
    restarted = start_proxy(settings, store=None)
    assert httpx.get(restarted.base_url + "/readyz").status_code == 200
    wait_until(lambda: httpx.get(restarted.base_url + "/v1/memories",
                                 params={"user_id": "olu"}).json()["data"])


def test_the_proxy_stays_ready_after_upstream_failures(settings: Settings, start_proxy) -> None:
    settings.upstream.url = f"http://127.0.0.1:{closed_port()}/v1"
    proxy = start_proxy(settings)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(proxy.base_url + CHAT_PATH, json=body, headers={"X-User-Id": "u"})
    assert response.status_code == 502
    assert httpx.get(proxy.base_url + "/readyz").status_code == 200
