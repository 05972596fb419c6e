"""One size limit for a memory's text and its metadata, on every write path (POST, PATCH,
import, and what extraction stores)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import HashingEmbedder, wait_until
from http_checks import assert_openai_error, chat
from servers import ThreadedServer
from test_jobs_http import metric

from proxy.config import Settings, StoreSettings
from proxy.memory.store import ChromaStore, Memory

LIMIT = 200
BIG_META = {"blob": "x" * 300}


@pytest.fixture
def api(settings: Settings, start_proxy: Callable[..., ThreadedServer]) -> httpx.Client:
    settings.store.max_memory_chars = LIMIT
    settings.store.max_metadata_bytes = 256
    return httpx.Client(base_url=start_proxy(settings).base_url, timeout=30)


def too_large(response: httpx.Response, what: str) -> None:
    assert_openai_error(response, 400)
    message = response.json()["error"]["message"]
    assert what in message and ("characters" in message or "bytes" in message), message


def stored(api: httpx.Client) -> list[str]:
    return [m["memory"] for m in api.get("/v1/memories", params={"user_id": "u"}).json()["data"]]


def test_post_patch_and_import_refuse_oversized_text_and_metadata(api: httpx.Client) -> None:
    long_text = "y" * (LIMIT + 1)
    too_large(api.post("/v1/memories", json={"user_id": "u", "text": long_text,
                                             "infer": False}), "text")
    too_large(api.post("/v1/memories", json={"user_id": "u", "text": "ok", "infer": False,
                                             "metadata": BIG_META}), "metadata")
    too_large(api.post("/v1/memories", json={"user_id": "u", "infer": False, "messages": [
        {"role": "user", "content": "short"}, {"role": "user", "content": long_text}]}),
        "messages")
    assert stored(api) == []

    made = api.post("/v1/memories", json={"user_id": "u", "text": "y" * LIMIT, "infer": False})
    assert made.status_code == 201, made.text
    path = f"/v1/memories/{made.json()['data'][0]['id']}"
    too_large(api.patch(path, json={"text": long_text}), "text")
    too_large(api.patch(path, json={"metadata": BIG_META}), "metadata")

    for record in ({"user_id": "u", "memory": long_text},
                   {"user_id": "u", "memory": "ok", "metadata": BIG_META}):
        too_large(api.post("/v1/memories/import", content=json.dumps(record)),
                  "metadata" if "metadata" in record else "memory")
    assert stored(api) == ["y" * LIMIT]


def test_extraction_stores_no_memory_over_the_limit(api: httpx.Client) -> None:
    base = str(api.base_url)
    body = {"model": "m", "messages": [{"role": "user", "content": "I keep " + "bees " * 60}]}
    assert chat(base, body, **{"X-User-Id": "u"}).status_code == 200
    wait_until(lambda: metric(base, 'memproxy_job_events_total{event="completed"}') == 1)
    assert stored(api) == []


def test_the_store_refuses_oversized_memories_from_any_writer(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    store = ChromaStore(StoreSettings(shards=2, max_memory_chars=10), tmp_path,
                        embedder.dimension)
    short, long = Memory("u", "short"), Memory("u", "much too long")
    store.add([short, long], embedder.embed([short.text, long.text]))
    assert [m.text for m in store.all_memories("u")] == ["short"]
    assert store.update(short.id, text=long.text, vector=embedder.embed([long.text])[0]) is None
    assert store.get(short.id).text == "short"  # type: ignore[union-attr]
    store.close()
