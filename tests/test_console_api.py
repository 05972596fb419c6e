"""The memory API's parts the console stands on, over real HTTP: the users listing, Explain
(the chat path's own choice, scores equal to the search API's, the very block the upstream
receives), the ring of recent injections, and the admin's job queue."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fake_upstream import FakeUpstream
from http_checks import BLOCK_MARK, assert_openai_error, chat, forwarded_chats
from pydantic import SecretStr
from servers import ThreadedServer

from proxy.config import Settings
from proxy.gateway.keys import KeyStore
from proxy.state.sqlite import database_path

ADMIN = "adm-console"


def client(proxy: ThreadedServer, key: str | None = ADMIN) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=proxy.base_url, headers=headers, timeout=20)


def add(api: httpx.Client, user: str, *texts: str, **fields: Any) -> list[str]:
    ids = []
    for text in texts:
        response = api.post("/v1/memories", json={"user_id": user, "text": text, "infer": False,
                                                  **fields})
        assert response.status_code == 201, response.text
        ids.append(response.json()["data"][0]["id"])
    return ids


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    settings.admin_key = SecretStr(ADMIN)
    return settings


def test_users_listing_prefix_counts_activity_paging(
    admin_settings: Settings, start_proxy: Callable[..., ThreadedServer]
) -> None:
    api = client(start_proxy(admin_settings))
    for user in ("team/ann", "team/bob", "team/cid", "zed"):
        add(api, user, f"{user} likes tea")
    first = add(api, "team/ann", "Ann lives in Oslo")[0]
    add(api, "other-user", "elsewhere", tenant="acme")
    time.sleep(0.01)
    api.patch(f"/v1/memories/{first}", json={"text": "Ann lives in Bergen"})
    api.delete(f"/v1/memories/{add(api, 'team/cid', 'gone soon')[0]}")

    listed = api.get("/v1/users", params={"prefix": "team/"}).json()
    assert [u["user_id"] for u in listed["data"]] == ["team/ann", "team/bob", "team/cid"]
    ann = listed["data"][0]
    assert (ann["memories"], ann["superseded"], ann["tenant"]) == (2, 0, "default")
    assert ann["last_activity"] > listed["data"][1]["last_activity"]  # the later update
    assert listed["data"][2]["memories"] == 1  # the deleted memory is not counted
    assert listed["tenants"] == ["acme", "default"] and listed["scope"]["admin"] is True

    recent = api.get("/v1/users", params={"order": "recent", "limit": 1}).json()
    # The update was the last change still stored (a deleted memory leaves no activity).
    assert [u["user_id"] for u in recent["data"]] == ["team/ann"]
    after = api.get("/v1/users", params={"order": "recent", "cursor": recent["next_cursor"]})
    assert [u["user_id"] for u in after.json()["data"]] == ["zed", "team/cid", "team/bob"]
    pages, cursor = [], None
    while True:
        page = api.get("/v1/users", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        body = page.json()
        pages.append([u["user_id"] for u in body["data"]])
        cursor = body["next_cursor"]
        assert body["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert pages == [["team/ann", "team/bob"], ["team/cid", "zed"]]
    acme = api.get("/v1/users", params={"tenant": "acme"}).json()
    assert [u["user_id"] for u in acme["data"]] == ["other-user"] and acme["tenant"] == "acme"

    assert_openai_error(api.get("/v1/users", params={"cursor": "nonsense"}), 400,
                        "invalid_request")
    id_cursor = api.get("/v1/users", params={"limit": 1}).json()["next_cursor"]
    assert_openai_error(api.get("/v1/users", params={"cursor": id_cursor, "order": "recent"}),
                        400)
    assert_openai_error(api.get("/v1/users", params={"order": "size"}), 400)
    assert_openai_error(api.get("/v1/users", params={"limit": "0"}), 400)
    assert_openai_error(client(start_proxy(admin_settings), "wrong").get("/v1/users"), 401)


def keys_settings(settings: Settings) -> Settings:
    settings.admin_key = SecretStr(ADMIN)
    settings.auth.mode = "keys"
    settings.upstream.api_key = SecretStr("sk-upstream")
    return settings


def test_proxy_keys_see_their_tenant_and_user_only(
    settings: Settings, start_proxy: Callable[..., ThreadedServer]
) -> None:
    keys = KeyStore(database_path(keys_settings(settings).data_dir))
    _, tenant_key = keys.create("A")
    _, ann_key = keys.create("A", user_id="ann")
    keys.close()
    proxy = start_proxy(settings)
    admin = client(proxy)
    add(admin, "ann", "Ann rows boats", tenant="A")
    add(admin, "bob", "Bob flies kites", tenant="A")
    add(admin, "ann", "Other tenant's Ann", tenant="B")

    tenant_view = client(proxy, tenant_key).get("/v1/users").json()
    assert [(u["tenant"], u["user_id"]) for u in tenant_view["data"]] == [("A", "ann"),
                                                                          ("A", "bob")]
    assert tenant_view["tenants"] == ["A"] and tenant_view["scope"] == {
        "admin": False, "tenant": "A", "user_id": None}
    ann_view = client(proxy, ann_key).get("/v1/users").json()
    assert [u["user_id"] for u in ann_view["data"]] == ["ann"]
    assert ann_view["scope"]["user_id"] == "ann"
    assert_openai_error(client(proxy, tenant_key).get("/v1/users", params={"tenant": "B"}), 403)
    # Explain, injections and jobs keep the same rules.
    ann = client(proxy, ann_key)
    explained = ann.post("/v1/memories/explain", json={"message": "what boats do I row?"})
    assert explained.status_code == 200, explained.text
    assert [c["memory"]["memory"] for c in explained.json()["candidates"]] == ["Ann rows boats"]
    assert_openai_error(ann.post("/v1/memories/explain",
                                 json={"user_id": "bob", "message": "kites"}), 403)
    assert_openai_error(ann.get("/v1/memories/injections", params={"user_id": "bob"}), 403)
    assert_openai_error(ann.get("/v1/memories/jobs"), 403, "admin_only")
    assert_openai_error(client(proxy, tenant_key).post("/v1/memories/jobs/retry",
                                                       json={"dead": True}), 403)


def test_explain_is_the_chat_injection_with_the_search_scores(
    admin_settings: Settings, start_proxy: Callable[..., ThreadedServer],
    upstream: FakeUpstream,
) -> None:
    admin_settings.retrieval.core_when_at_most = 3
    admin_settings.retrieval.top_k = 3
    proxy = start_proxy(admin_settings)
    api = client(proxy)
    add(api, "eve", "Eve drinks green tea every morning", "Eve has a cat named Miso",
        "Eve works on a compiler in Rust", "Eve's cat Miso likes green tea leaves",
        "Eve visited Lisbon in May", "Quantum chromodynamics homework")
    message = "what does my cat like to drink, green tea?"
    explained = api.post("/v1/memories/explain",
                         json={"user_id": "eve", "message": message, "model": "m"})
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["gating"] is True and body["memories"] == 6 and body["query"] == message
    outcomes = {c["memory"]["memory"]: c["outcome"] for c in body["candidates"]}
    assert outcomes["Quantum chromodynamics homework"] == "gated"
    assert "min_score" in next(c["reason"] for c in body["candidates"]
                               if c["outcome"] == "gated")
    injected = [c for c in body["candidates"] if c["outcome"] == "injected"]
    assert [c["memory"]["id"] for c in injected] == body["injected"] and len(injected) == 3
    assert body["budget"]["used_tokens"] == sum(c["tokens"] for c in injected)
    assert body["budget"]["used_tokens"] <= body["budget"]["max_tokens"]

    # The same scores as the search API's, for every memory both rank.
    searched = api.post("/v1/memories/search",
                        json={"user_id": "eve", "query": message, "limit": 100}).json()["data"]
    ranked = {c["memory"]["id"]: c for c in body["candidates"] if c["rank_score"] is not None}
    assert {hit["id"] for hit in searched} == set(ranked)
    for hit in searched:
        assert (hit["score"], hit["rank_score"]) == (ranked[hit["id"]]["score"],
                                                     ranked[hit["id"]]["rank_score"])

    # And exactly the block the upstream receives for that message.
    upstream.clear()
    sent = chat(proxy.base_url, {"model": "m", "messages": [{"role": "user", "content": message}]},
                **{"X-User-Id": "eve"})
    assert sent.status_code == 200 and sent.headers["x-memory-injected"] == "3"
    [forwarded] = forwarded_chats(upstream)
    blocks = [m["content"] for m in forwarded.json["messages"] if BLOCK_MARK in str(m["content"])]
    assert blocks == [body["block"]]

    # The ring: that chat request's ids and scores, no text.
    ring = api.get("/v1/memories/injections", params={"user_id": "eve"}).json()
    [record] = ring["data"]
    assert [m["id"] for m in record["injected"]] == body["injected"]
    assert [(m["score"], m["rank_score"]) for m in record["injected"]] == [
        (c["score"], c["rank_score"]) for c in injected]
    assert record["query"] is None and ring["keeps_text"] is False
    assert record["used_tokens"] == body["budget"]["used_tokens"]
    # Where its time went: the steps, each within the whole.
    phases = record["phases_ms"]
    assert set(phases) == {"embed", "candidates", "rank"}
    assert all(0 <= ms for ms in phases.values())
    assert sum(phases.values()) <= record["duration_ms"]
    # Explain and search record nothing; a forgotten user leaves no record.
    assert len(api.get("/v1/memories/injections").json()["data"]) == 1
    assert api.delete("/v1/users/eve").status_code == 200
    assert api.get("/v1/memories/injections").json()["data"] == []


def test_explain_budget_and_bad_input(
    admin_settings: Settings, start_proxy: Callable[..., ThreadedServer]
) -> None:
    admin_settings.retrieval.max_tokens = 20
    admin_settings.retrieval.recent_injections_text = True
    proxy = start_proxy(admin_settings)
    api = client(proxy)
    add(api, "max", "Max plays the violin in an orchestra on weekends",
        "Max has a very long story about violins " + "and more words " * 20)
    body = api.post("/v1/memories/explain",
                    json={"user_id": "max", "messages": [{"role": "user",
                                                          "content": "violin?"}]}).json()
    assert body["gating"] is False  # two memories: all ranked, none gated
    over = [c for c in body["candidates"] if c["outcome"] == "over_budget"]
    assert len(over) == 1 and over[0]["tokens"] > 20 and "max_tokens 20" in over[0]["reason"]
    assert body["budget"]["counted_with"] == "estimate"
    nothing = api.post("/v1/memories/explain", json={"user_id": "nobody", "message": "hi"})
    assert nothing.json()["block"] is None and nothing.json()["candidates"] == []

    chat(proxy.base_url, {"model": "m", "messages": [{"role": "user", "content": "violin?"}]},
         **{"X-User-Id": "max"})
    [record] = api.get("/v1/memories/injections").json()["data"]
    assert record["query"] == "violin?"  # kept: retrieval.recent_injections_text

    for bad in ({"user_id": "max"}, {"user_id": "max", "message": "a", "messages": []},
                {"user_id": "max", "message": " "}, {"message": "hi"},
                {"user_id": "max", "messages": [{"role": "assistant", "content": "x"}]},
                {"user_id": "max", "message": "a", "max_candidates": 0},
                {"user_id": "max", "message": "a", "model": 3}):
        assert_openai_error(api.post("/v1/memories/explain", json=bad), 400, "invalid_request")
    assert_openai_error(api.get("/v1/memories/explain"), 405)
    assert_openai_error(api.get("/v1/memories/injections", params={"limit": "x"}), 400)


def test_job_queue_for_the_admin(
    admin_settings: Settings, start_proxy: Callable[..., ThreadedServer]
) -> None:
    proxy = start_proxy(admin_settings)
    api = client(proxy)
    chat(proxy.base_url, {"model": "m", "messages": [{"role": "user",
                                                      "content": "I keep bees"}]},
         **{"X-User-Id": "kim"})
    deadline = time.monotonic() + 10
    while api.get("/v1/memories/jobs").json()["stats"]["done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    listed = api.get("/v1/memories/jobs", params={"state": "done"}).json()
    assert [(j["state"], j["user_id"]) for j in listed["data"]] == [("done", "kim")]
    assert listed["extraction"] == "raw"
    assert api.get("/v1/memories/jobs", params={"state": "dead"}).json()["data"] == []
    assert api.post("/v1/memories/jobs/retry", json={"dead": True}).json()["retried"] == 0
    assert api.post("/v1/memories/jobs/purge", json={"states": ["done"]}).json()["purged"] == 1
    assert api.get("/v1/memories/jobs").json()["stats"]["done"] == 0
    for path, bad in (("retry", {}), ("retry", {"ids": []}), ("retry", {"ids": [1], "dead": True}),
                      ("retry", {"ids": ["1"]}), ("purge", {"states": ["queued"]}),
                      ("purge", {"older_than_seconds": -1}), ("purge", {"colour": 1})):
        assert_openai_error(api.post(f"/v1/memories/jobs/{path}", json=bad), 400)
    assert_openai_error(api.get("/v1/memories/jobs", params={"state": "lost"}), 400)


def test_console_files_are_served_strictly(
    settings: Settings, start_proxy: Callable[..., ThreadedServer]
) -> None:
    proxy = start_proxy(settings)
    moved = httpx.get(proxy.base_url + "/console")
    assert moved.status_code == 308 and moved.headers["location"] == "/console/"
    page = httpx.get(proxy.base_url + "/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/console/console.js">' in page.text
    assert "://" not in page.text  # nothing fetched from another origin
    script = httpx.get(proxy.base_url + "/console/console.js")
    assert script.headers["content-type"].startswith("text/javascript")
    for name in ("users.js", "memories.js", "explain.js", "jobs.js", "api.js", "ui.js",
                 "console.css"):
        body = httpx.get(f"{proxy.base_url}/console/{name}").text
        assert "://" not in body, name  # no asset from the internet
        assert "innerHTML" not in body and "localStorage" not in body, name
    for bad in ("/console/..%2Fapp.py", "/console/routes.py", "/console/nope.js",
                "/console/%2e%2e%2f__init__.py"):
        assert_openai_error(httpx.get(proxy.base_url + bad), 404)


def test_console_can_be_turned_off(
    settings: Settings, start_proxy: Callable[..., ThreadedServer]
) -> None:
    settings.server.console = False
    proxy = start_proxy(settings)
    assert httpx.get(proxy.base_url + "/console/").status_code == 404


class FlakyEmbedder:
    """The test embedder, failing while ``broken`` (an embedding service that was down)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.broken = True

    @property
    def dimension(self) -> int:
        return int(self.inner.dimension)

    def embed(self, texts: Any) -> Any:
        if self.broken:
            raise RuntimeError("embedding service down")
        return self.inner.embed(texts)


def test_a_dead_letter_is_listed_with_its_error_and_retried_to_done(
    admin_settings: Settings, start_proxy: Callable[..., ThreadedServer], hashing_embedder: Any,
) -> None:
    admin_settings.jobs.max_attempts = 1
    admin_settings.jobs.poll_seconds = 0.05
    embedder = FlakyEmbedder(hashing_embedder)
    proxy = start_proxy(admin_settings, embedder=embedder)
    api = client(proxy)
    reply = chat(proxy.base_url, {"model": "m", "messages": [
        {"role": "user", "content": "I keep three beehives"}]}, **{"X-User-Id": "dee"})
    assert reply.status_code == 200 and reply.headers["x-memory-status"] == "degraded"
    deadline = time.monotonic() + 10
    while not (dead := api.get("/v1/memories/jobs", params={"state": "dead"}).json()["data"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [j["user_id"] for j in dead] == ["dee"]
    assert "embedding service down" in str(dead[0])
    embedder.broken = False
    assert api.post("/v1/memories/jobs/retry", json={"dead": True}).json()["retried"] == 1
    while "I keep three beehives" not in [
        m["memory"] for m in api.get("/v1/memories", params={"user_id": "dee"}).json()["data"]
    ]:
        assert time.monotonic() < deadline + 10
        time.sleep(0.05)
    assert api.get("/v1/memories/jobs", params={"state": "dead"}).json()["data"] == []
