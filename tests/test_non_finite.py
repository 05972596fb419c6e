"""NaN and Infinity are not JSON: refused with a 400 wherever a body or parameter is parsed,
and nothing is stored for the request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeUpstream
from http_checks import CHAT_PATH, assert_openai_error, forwarded_chats
from servers import ThreadedServer

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]


@pytest.fixture
def proxy(start_proxy: Callable[..., ThreadedServer]) -> ThreadedServer:
    return start_proxy()


def with_number(template: str, number: str) -> str:
    return template.replace("@", number)


def api(proxy: ThreadedServer) -> httpx.Client:
    return httpx.Client(base_url=proxy.base_url, timeout=20,
                        headers={"content-type": "application/json"})


def stored(client: httpx.Client, user: str = "nan") -> list[dict[str, object]]:
    listed = client.get("/v1/memories", params={"user_id": user})
    assert listed.status_code == 200, listed.text
    return list(listed.json()["data"])


@pytest.mark.parametrize("number", NON_FINITE)
def test_memory_api_bodies_with_non_finite_numbers_are_400_and_store_nothing(
    proxy: ThreadedServer, number: str
) -> None:
    client = api(proxy)
    created = client.post("/v1/memories", content=with_number(
        '{"user_id": "nan", "text": "likes tea", "infer": false, "metadata": {"x": @}}', number))
    assert_openai_error(created, 400, "invalid_json")
    assert stored(client) == []

    ok = client.post("/v1/memories", json={"user_id": "nan", "text": "likes tea", "infer": False})
    path = f"/v1/memories/{ok.json()['data'][0]['id']}"
    patched = client.patch(path, content=with_number('{"metadata": {"x": [@]}}', number))
    assert_openai_error(patched, 400, "invalid_json")
    searched = client.post("/v1/memories/search",
                           content=with_number('{"user_id": "nan", "query": "tea", "limit": @}',
                                               number))
    assert_openai_error(searched, 400, "invalid_json")
    filtered = client.get("/v1/memories", params={"user_id": "nan",
                                                  "filters": with_number('{"x": @}', number)})
    assert_openai_error(filtered, 400)
    # The user stays readable, and what is stored is still JSON.
    assert client.get(path).json()["metadata"] == {}
    assert [m["memory"] for m in stored(client)] == ["likes tea"]


@pytest.mark.parametrize("record", [
    '{"user_id": "nan", "memory": "likes tea", "metadata": {"x": NaN}}',
    '{"user_id": "nan", "memory": "likes tea", "created_at": Infinity}',
    '{"user_id": "nan", "memory": "likes tea", "created_at": "NaN"}',
    '{"user_id": "nan", "memory": "likes tea", "updated_at": "-inf"}',
    '{"user_id": "nan", "memory": "likes tea", "valid_to": 1e999}',
    '[{"user_id": "nan", "memory": "likes tea", "metadata": {"x": -Infinity}}]',
])
def test_import_with_non_finite_numbers_is_400_and_stores_nothing(
    proxy: ThreadedServer, record: str
) -> None:
    client = api(proxy)
    response = client.post("/v1/memories/import", content=record)
    assert_openai_error(response, 400)
    assert stored(client) == []
    exported = client.get("/v1/users/nan/export")
    assert exported.status_code == 200 and exported.text == ""


@pytest.mark.parametrize("number", NON_FINITE)
def test_chat_bodies_with_non_finite_numbers_are_400_invalid_json_and_not_forwarded(
    proxy: ThreadedServer, upstream: FakeUpstream, number: str
) -> None:
    body = with_number(
        '{"model": "m", "temperature": @, "messages": [{"role": "user", "content": "hi"}]}', number)
    response = httpx.post(proxy.base_url + CHAT_PATH, content=body,
                          headers={"content-type": "application/json", "x-user-id": "nan"})
    assert_openai_error(response, 400, "invalid_json")
    assert forwarded_chats(upstream) == []
    assert json.loads(body.replace(number, "0"))  # the same body with a number is fine


def test_a_non_finite_number_stored_before_the_fix_reads_back_as_null(
    start_proxy: Callable[..., ThreadedServer], tmp_path: Path
) -> None:
    from conftest import HashingEmbedder

    from proxy.config import StoreSettings
    from proxy.memory.store import ChromaStore, Memory

    embedder = HashingEmbedder()
    store = ChromaStore(StoreSettings(shards=2), tmp_path / "old", embedder.dimension)
    memory = Memory("old", "likes tea", metadata={"x": float("nan"), "y": 1})
    store.add([memory], embedder.embed([memory.text]))  # what the old API let through
    store.close()
    reopened = ChromaStore(StoreSettings(shards=2), tmp_path / "old", embedder.dimension)
    proxy = start_proxy(store=reopened, embedder=embedder)
    client = api(proxy)
    assert client.get(f"/v1/memories/{memory.id}").json()["metadata"] == {"x": None, "y": 1}
    assert client.get("/v1/memories", params={"user_id": "old"}).status_code == 200
    assert client.get("/v1/users/old/export").status_code == 200
    reopened.close()
