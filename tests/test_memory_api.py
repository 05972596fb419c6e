"""The memory API over real HTTP: status codes, errors in OpenAI's shape, pagination,
filters, search ranking, history, export → import, the admin key, the OpenAPI document."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fake_upstream import FakeUpstream
from http_checks import assert_openai_error, injected_positions
from servers import ThreadedServer

from proxy.config import Settings
from proxy.config_sources import load_settings
from proxy.errors import PermissionDenied
from proxy.gateway.auth import Authenticator


def client(proxy: ThreadedServer, key: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=proxy.base_url, headers=headers, timeout=20)


def add(api: httpx.Client, user: str, *texts: str, **fields: Any) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"user_id": user, "infer": False, **fields}
    if len(texts) == 1:
        body["text"] = texts[0]
    else:
        body["messages"] = [{"role": "user", "content": t} for t in texts]
    response = api.post("/v1/memories", json=body)
    assert response.status_code == 201, response.text
    return list(response.json()["data"])


def test_create_get_patch_delete_and_history(start_proxy: Callable[..., ThreadedServer]) -> None:
    api = client(start_proxy())
    [memory] = add(api, "ann", "Ann keeps bees", metadata={"topic": "hobby"}, agent_id="a1")
    assert memory["object"] == "memory" and memory["memory"] == "Ann keeps bees"
    assert memory["metadata"] == {"topic": "hobby"} and memory["agent_id"] == "a1"
    assert memory["source"] == "api" and memory["tenant"] == "default"
    path = f"/v1/memories/{memory['id']}"
    assert api.get(path).json() == memory

    changed = api.patch(path, json={"text": "Ann keeps two hives", "metadata": {"n": 2}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["memory"] == "Ann keeps two hives"
    assert changed.json()["metadata"] == {"topic": "hobby", "n": 2}  # merged
    assert api.patch(path, json={"metadata": {"topic": None}}).json()["metadata"] == {"n": 2}
    # Re-embedded: the new words find it.
    found = api.post("/v1/memories/search", json={"user_id": "ann", "query": "hives"}).json()
    assert [hit["id"] for hit in found["data"]] == [memory["id"]]

    assert_openai_error(api.patch(path, json={"user_id": "bob"}), 400, "invalid_request")
    assert_openai_error(api.patch(path, json={"agent_id": "x"}), 400)
    assert_openai_error(api.patch(path, json={"colour": "red"}), 400)
    assert_openai_error(api.patch(path, json={}), 400)
    assert_openai_error(api.get(path, params={"user_id": "bob"}), 404, "not_found")

    deleted = api.delete(path)
    assert deleted.json() == {"id": memory["id"], "object": "memory.deleted", "deleted": True}
    assert_openai_error(api.get(path), 404, "not_found")
    assert_openai_error(api.delete(path), 404, "not_found")
    history = api.get(path + "/history").json()["data"]
    assert [(h["event"], h["old_text"], h["new_text"], h["actor"]) for h in history] == [
        ("ADD", None, "Ann keeps bees", "api"),
        ("UPDATE", "Ann keeps bees", "Ann keeps two hives", "api"),
        ("UPDATE", "Ann keeps two hives", "Ann keeps two hives", "api"),
        ("DELETE", "Ann keeps two hives", None, "api"),
    ]
    assert_openai_error(api.get("/v1/memories/nope/history"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/memories", None, 400, "invalid_request"),  # no user_id
        ("GET", "/v1/memories?user_id=u&limit=0", None, 400, "invalid_request"),
        ("GET", "/v1/memories?user_id=u&cursor=zzz", None, 400, "invalid_request"),
        ("GET", "/v1/memories?user_id=u&filters={bad", None, 400, "invalid_request"),
        ("GET", '/v1/memories?user_id=u&filters={"n":{"$near":1}}', None, 400, None),
        ("POST", "/v1/memories", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/memories", {"user_id": "u"}, 400, "invalid_request"),
        ("POST", "/v1/memories", {"user_id": "u", "text": "a", "messages": []}, 400, None),
        ("POST", "/v1/memories", {"user_id": "u", "text": "a", "metadata": [1]}, 400, None),
        ("POST", "/v1/memories", {"user_id": "\u0000", "text": "a"}, 400, None),
        ("POST", "/v1/memories/search", {"user_id": "u"}, 400, None),
        ("POST", "/v1/memories/search", {"user_id": "u", "query": "q", "limit": 0}, 400, None),
        ("PUT", "/v1/memories", {}, 405, "method_not_allowed"),
        ("GET", "/v1/memories/import", None, 405, "method_not_allowed"),
        ("POST", "/v1/memories/import", b'{"user_id": "u"}', 400, None),  # no text
        ("POST", "/v1/memories/import", b"[1, 2]", 400, None),
    ],
)
def test_bad_requests_are_openai_shaped_4xx(
    method: str, path: str, body: Any, status: int, code: str | None,
    start_proxy: Callable[..., ThreadedServer],
) -> None:
    with client(start_proxy()) as api:
        content = body if isinstance(body, bytes) else None
        response = api.request(method, path, content=content,
                               json=None if content is not None else body)
        assert_openai_error(response, status, code)


def test_pages_filters_and_search_rank_like_injection(
    start_proxy: Callable[..., ThreadedServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy()
    api = client(proxy)
    made = add(api, "u", *[f"note number {i} about {'work' if i % 2 else 'home'}"
                           for i in range(25)])
    for memory in made[:5]:
        api.patch(f"/v1/memories/{memory['id']}", json={"metadata": {"pin": True, "rank": 1}})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"user_id": "u", "limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/memories", params=params).json()
        seen += [m["id"] for m in page["data"]]
        assert page["has_more"] == (page["next_cursor"] is not None)
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(m["id"] for m in made) and len(seen) == 25

    def listed(filters: dict[str, Any]) -> set[str]:
        response = api.get("/v1/memories", params={"user_id": "u",
                                                   "filters": json.dumps(filters)})
        assert response.status_code == 200, response.text
        return {m["id"] for m in response.json()["data"]}

    assert listed({"pin": True}) == {m["id"] for m in made[:5]}
    assert listed({"metadata.rank": {"$in": [1, 3]}, "pin": {"$ne": False}}) == listed(
        {"pin": True})
    assert listed({"created_at": {"$gt": made[0]["created_at"] + 3600}}) == set()
    assert listed({"created_at": {"$lte": "2100-01-01T00:00:00Z"}}) == {m["id"] for m in made}

    search = api.post("/v1/memories/search", json={
        "user_id": "u", "query": "note about work", "limit": 3,
        "filters": {"pin": True}}).json()["data"]
    assert {hit["id"] for hit in search} <= {m["id"] for m in made[:5]}
    assert len(search) == 3 and all("work" in hit["memory"] for hit in search[:2])
    assert search[0]["rank_score"] >= search[1]["rank_score"] >= search[2]["rank_score"]

    # The injected block lists what search ranks first, in the same order.
    settings: Settings = proxy.app.state.services.settings
    top = api.post("/v1/memories/search", json={
        "user_id": "u", "query": "note number 7 about work",
        "limit": settings.retrieval.top_k}).json()["data"]
    upstream.clear()
    chat = httpx.post(proxy.base_url + "/v1/chat/completions", headers={"X-User-Id": "u"},
                      json={"model": "m", "messages": [
                          {"role": "user", "content": "note number 7 about work"}]})
    assert chat.status_code == 200
    sent = upstream.chat_requests()[0].json
    block = sent["messages"][injected_positions(sent)[0]]["content"]
    positions = [block.index(hit["memory"]) for hit in top if hit["memory"] in block]
    assert positions and positions == sorted(positions)
    assert top[0]["memory"] == "note number 7 about work"


def test_create_with_infer_uses_the_extractor(
    settings: Settings, upstream: FakeUpstream, start_proxy: Callable[..., ThreadedServer]
) -> None:
    settings.extraction.mode = "llm"
    settings.upstream.api_key = load_settings(
        None, environ={"MEMPROXY_UPSTREAM_API_KEY": "sk-proxy-own"}).upstream.api_key
    api = client(start_proxy(settings))
    response = api.post("/v1/memories", json={
        "user_id": "u", "model": "gpt-x", "metadata": {"via": "api"},
        "messages": [{"role": "user", "content": "I love sailing. Nice weather today!"},
                     {"role": "assistant", "content": "Sounds fun"}],
    })
    assert response.status_code == 201, response.text
    [fact] = response.json()["data"]
    assert fact["memory"] == "User love sailing" or "sailing" in fact["memory"]
    assert fact["source"] == "llm" and fact["metadata"] == {"via": "api"}
    assert upstream.extraction_requests()[0].headers["authorization"] == "Bearer sk-proxy-own"
    assert_openai_error(api.post("/v1/memories", json={"user_id": "u", "text": "x"}), 400)


def test_export_then_import_into_an_empty_data_dir_reproduces_the_user(
    settings: Settings, start_proxy: Callable[..., ThreadedServer], tmp_path: Path
) -> None:
    api = client(start_proxy())
    made = add(api, "ann", "Ann likes tea", "Ann lives in Oslo", "Ann has a cat",
               agent_id="a1", session_id="s1", metadata={"k": [1, "x"]})
    api.patch(f"/v1/memories/{made[0]['id']}", json={"text": "Ann likes green tea"})
    api.delete(f"/v1/memories/{made[2]['id']}")
    add(api, "bob", "Bob is someone else")
    exported = api.get("/v1/users/ann/export")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert exported.headers["x-export-records"] == str(len(lines)) == "3"
    assert {line["object"] for line in lines} == {"memory", "memory.history"}
    assert "Bob" not in exported.text

    fresh = settings.model_copy(update={"data_dir": tmp_path / "fresh"})
    other = client(start_proxy(fresh))
    imported = other.post("/v1/memories/import", content=exported.content,
                          headers={"content-type": "application/x-ndjson"})
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"object": "import.result", "imported": 2, "history": 5,
                               "embedded": 2}
    again = other.get("/v1/users/ann/export")
    assert [json.loads(line) for line in again.text.splitlines()] == lines
    # Twice: nothing changes. As a JSON array, into another user: a copy.
    other.post("/v1/memories/import", content=exported.content)
    assert other.get("/v1/users/ann/export").text == again.text
    as_array = json.dumps([line for line in lines if line["object"] == "memory"])
    copied = other.post("/v1/memories/import", params={"user_id": "carl"}, content=as_array)
    assert_openai_error(copied, 409, "conflict")  # the ids are Ann's
    fresh_ids = json.dumps([{**line, "id": None} for line in json.loads(as_array)])
    copied = other.post("/v1/memories/import", params={"user_id": "carl"}, content=fresh_ids)
    assert copied.json()["imported"] == 2
    listed = other.get("/v1/memories", params={"user_id": "carl"}).json()["data"]
    assert sorted(m["memory"] for m in listed) == ["Ann likes green tea", "Ann lives in Oslo"]


def test_an_export_with_vectors_is_imported_without_embedding_under_the_same_model(
    settings: Settings, start_proxy: Callable[..., ThreadedServer], tmp_path: Path
) -> None:
    proxy = start_proxy()
    api = client(proxy)
    add(api, "ann", "Ann likes tea", "Ann lives in Oslo")
    assert_openai_error(api.get("/v1/users/ann/export", params={"vectors": "maybe"}), 400)
    exported = api.get("/v1/users/ann/export", params={"vectors": "true"})
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert all(line["embedding"]["model"] == "HashingEmbedder" for line in lines)
    assert "embedding" not in api.get("/v1/users/ann/export").text  # only when asked
    # The stored vector, not the text, is what the import uses: give "tea" the vector of
    # "zebra stripes" and search finds it by the zebra.
    embedder = proxy.app.state.services.embedder
    zebra = embedder.embed(["zebra stripes"])[0].astype("<f4")
    tea = next(line for line in lines if line["memory"] == "Ann likes tea")
    tea["embedding"]["vector"] = base64.b64encode(zebra.tobytes()).decode()
    body = "\n".join(json.dumps(line) for line in lines)

    other = client(start_proxy(settings.model_copy(update={"data_dir": tmp_path / "fresh"})))
    imported = other.post("/v1/memories/import", content=body)
    assert imported.status_code == 200, imported.text
    assert imported.json()["imported"] == 2 and imported.json()["embedded"] == 0
    found = other.post("/v1/memories/search", json={"user_id": "ann", "query": "zebra stripes"})
    assert found.json()["data"][0]["memory"] == "Ann likes tea"
    assert other.get("/v1/users/ann/export").text == api.get("/v1/users/ann/export").text

    # Another model's vector is not used: the text is embedded.
    for line in lines:
        line["embedding"]["model"] = "some-other-model"
        line["user_id"], line["id"] = "bea", None
    moved = other.post("/v1/memories/import", content="\n".join(json.dumps(x) for x in lines))
    assert moved.json()["embedded"] == 2
    stored = [json.loads(line) for line in other.get(
        "/v1/users/bea/export", params={"vectors": "true"}).text.splitlines()]
    tea_vector = next(base64.b64decode(line["embedding"]["vector"]) for line in stored
                      if line["memory"] == "Ann likes tea")
    expected = embedder.embed(["Ann likes tea"])[0]
    assert np.allclose(np.frombuffer(tea_vector, "<f4"), expected, atol=1e-6)
    # A vector that is not one: 400, nothing stored.
    for bad in ("not base64!", base64.b64encode(b"abc").decode(),
                base64.b64encode(np.array([np.nan, 1], "<f4").tobytes()).decode(),
                base64.b64encode(np.zeros(4, "<f4").tobytes()).decode()):
        record = {**lines[0], "user_id": "cid",
                  "embedding": {"model": "HashingEmbedder", "vector": bad}}
        assert_openai_error(other.post("/v1/memories/import", content=json.dumps(record)), 400)
    assert_openai_error(other.post("/v1/memories/import", content=json.dumps(
        {**lines[0], "user_id": "cid", "embedding": [1, 2]})), 400)
    assert other.get("/v1/memories", params={"user_id": "cid"}).json()["data"] == []


def test_forget_a_user_removes_memories_history_and_jobs(
    start_proxy: Callable[..., ThreadedServer],
) -> None:
    proxy = start_proxy()
    api = client(proxy)
    made = add(api, "ann", "one fact", "another fact")
    add(api, "bob", "bob's fact")
    queue = proxy.app.state.services.jobs.queue
    from proxy.extraction.jobs import ExtractionJob
    from proxy.gateway.identity import Identity

    queue.enqueue(ExtractionJob(Identity("ann"), ["later"], "ok", "m", exchange_hash="h1",
                                created_at=1e12))
    forgotten = api.delete("/v1/users/ann")
    assert forgotten.json() == {"object": "user.deleted", "tenant": "default", "user_id": "ann",
                                "deleted": {"memories": 2, "history": 2, "jobs": 1}}
    assert api.get("/v1/memories", params={"user_id": "ann"}).json()["data"] == []
    assert_openai_error(api.get(f"/v1/memories/{made[0]['id']}/history"), 404)
    assert len(api.get("/v1/memories", params={"user_id": "bob"}).json()["data"]) == 1


def test_admin_key_guards_the_api_and_openapi_document_is_valid(
    settings: Settings, start_proxy: Callable[..., ThreadedServer]
) -> None:
    from openapi_spec_validator import validate

    settings.admin_key = load_settings(
        None, environ={"MEMPROXY_ADMIN_KEY": "adm-secret"}).admin_key
    proxy = start_proxy(settings)
    assert_openai_error(client(proxy).get("/v1/memories", params={"user_id": "u"}), 401,
                        "invalid_api_key")
    assert_openai_error(client(proxy, "wrong").get("/v1/memories", params={"user_id": "u"}),
                        401)
    assert client(proxy, "adm-secret").get("/v1/memories", params={"user_id": "u"}).json()[
        "data"] == []
    document = client(proxy).get("/openapi.json").json()
    validate(document)
    assert {"/v1/memories", "/v1/memories/{memory_id}", "/v1/memories/search",
            "/v1/memories/import", "/v1/users/{user_id}/export"} <= set(document["paths"])

    # No admin key: loopback only.
    open_settings = load_settings(None, environ={})
    with pytest.raises(PermissionDenied):
        Authenticator(open_settings).memory_scope({}, "10.1.2.3")
    assert Authenticator(open_settings).memory_scope({}, "127.0.0.1").is_admin


def test_search_score_is_readable_with_one_match(
    settings: Settings, start_proxy: Callable[..., ThreadedServer], hashing_embedder: Any
) -> None:
    proxy = start_proxy(settings)
    api = client(proxy)
    text = "User keeps bees in Oslo"
    assert api.post("/v1/memories", json={"user_id": "solo", "text": text,
                                          "infer": False}).status_code == 201
    query = "where do I keep bees?"
    (hit,) = api.post("/v1/memories/search", json={"user_id": "solo", "query": query}
                      ).json()["data"]
    vectors = hashing_embedder.embed([text, query])
    # The cosine, not the relative fused score (which is 0 for a lone candidate).
    assert hit["score"] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-5)
    assert 0 < hit["score"] < 1 and "rank_score" in hit
