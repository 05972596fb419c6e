"""Every id the memory API accepts is addressable, and nothing under the memory API's paths
is ever passed through to the upstream (it would carry the admin key there)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from fake_upstream import FakeUpstream
from http_checks import assert_openai_error
from servers import ThreadedServer

from proxy.cli.main import main
from proxy.config import Settings
from proxy.config_sources import load_settings

ADMIN = {"authorization": "Bearer adm-secret"}


@pytest.fixture
def proxy(settings: Settings, start_proxy: Callable[..., ThreadedServer]) -> ThreadedServer:
    settings.admin_key = load_settings(
        None, environ={"MEMPROXY_ADMIN_KEY": "adm-secret"}).admin_key
    return start_proxy(settings)


def api(proxy: ThreadedServer) -> httpx.Client:
    return httpx.Client(base_url=proxy.base_url, headers=ADMIN, timeout=20)


def add(client: httpx.Client, user: str, text: str) -> None:
    response = client.post("/v1/memories", json={"user_id": user, "text": text, "infer": False})
    assert response.status_code == 201, response.text


def never_forwarded(upstream: FakeUpstream) -> None:
    assert [r.path for r in upstream.requests] == []


@pytest.mark.parametrize("user", ["team/alice", "bob/export", "/lead", "a/b/jobs", "x%2Fy"])
def test_user_ids_with_slashes_are_exported_and_forgotten_never_forwarded(
    proxy: ThreadedServer, upstream: FakeUpstream, user: str
) -> None:
    client = api(proxy)
    add(client, user, "likes tea")
    add(client, "team", "someone else")
    encoded = httpx.URL(f"/v1/users/{user.replace('%', '%25').replace('/', '%2F')}")
    # Percent-encoded, or as is (a "%" must be encoded, as in any URL).
    plain = [] if "%" in user else [f"/v1/users/{user}"]
    for path in (encoded.raw_path.decode(), *plain):
        exported = client.get(f"{path}/export")
        assert exported.status_code == 200, exported.text
        assert [json.loads(line)["user_id"] for line in exported.text.splitlines()] == [user]
        assert client.get(f"{path}/jobs").status_code == 200
    if user.endswith(("/export", "/jobs")):  # as sent, that last segment is the route
        assert_openai_error(client.delete(f"/v1/users/{user}"), 405)
    forgotten = client.delete(encoded.raw_path.decode())
    assert forgotten.status_code == 200, forgotten.text
    assert forgotten.json()["user_id"] == user and forgotten.json()["deleted"]["memories"] == 1
    assert client.get("/v1/memories", params={"user_id": user}).json()["data"] == []
    assert len(client.get("/v1/memories", params={"user_id": "team"}).json()["data"]) == 1
    never_forwarded(upstream)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/users", 405), ("GET", "/v1/usersX", 404), ("GET", "/v1/users/", 405),
    ("GET", "/v1/users/ann/unknown", 405), ("POST", "/v1/users/ann", 405),
    ("PUT", "/v1/memories", 405), ("GET", "/v1/memories/a/b/c", 404),
    ("GET", "/v1/memories/", 404), ("PUT", "/v1/memories/import", 405),
    ("POST", "/v1/memories/x/history", 405), ("OPTIONS", "/v1/memories/search", 405),
    ("OPTIONS", "/v1/users/ann/export", 405), ("DELETE", "/v1/users/ann/export", 405),
    ("DELETE", "/v1/users/ann/jobs", 405), ("GET", "/v1/memories/explain", 405),
    ("DELETE", "/v1/memories/jobs", 405), ("GET", "/v1/memories/jobs/retry", 405),
    ("PATCH", "/v1/memories/injections", 405),
])
def test_no_memory_api_path_reaches_the_upstream(
    proxy: ThreadedServer, upstream: FakeUpstream, method: str, path: str, status: int
) -> None:
    response = api(proxy).request(method, path)
    assert_openai_error(response, status)
    if status == 405:
        assert response.headers["allow"]
        if path.endswith("/ann/export") or path.endswith("/x/history"):
            assert response.headers["allow"] == "GET, HEAD"  # the path's own route only
    never_forwarded(upstream)


@pytest.mark.parametrize("memory_id", ["a/b", "search", "import", "explain", "injections",
                                       "jobs", ".", "..", " padded "])
def test_import_refuses_memory_ids_no_route_can_reach(
    proxy: ThreadedServer, upstream: FakeUpstream, memory_id: str
) -> None:
    record = {"id": memory_id, "user_id": "ann", "memory": "likes tea"}
    response = api(proxy).post("/v1/memories/import", content=json.dumps(record))
    assert_openai_error(response, 400, "invalid_request")
    assert "id" in response.json()["error"]["message"]
    assert api(proxy).get("/v1/memories", params={"user_id": "ann"}).json()["data"] == []


def test_cli_forgets_and_exports_a_user_with_a_slash(
    proxy: ThreadedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    add(api(proxy), "team/alice", "likes tea")
    monkeypatch.setenv("MEMPROXY_ADMIN_KEY", "adm-secret")
    common = ["--url", proxy.base_url]
    assert main(["users", "export", "--user", "team/alice", *common]) == 0
    assert json.loads(capsys.readouterr().out)["user_id"] == "team/alice"
    assert main(["users", "forget", "--user", "team/alice", "--yes", *common]) == 0
    assert "1 memories" in capsys.readouterr().out


def test_the_admin_key_is_never_forwarded_upstream(
    proxy: ThreadedServer, upstream: FakeUpstream
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for method, path, sent in (("POST", "/v1/chat/completions", body),
                               ("POST", "/chat/completions", body), ("GET", "/v1/models", None),
                               ("GET", "/v1/", None)):
        response = httpx.request(method, proxy.base_url + path, json=sent, headers=ADMIN)
        assert_openai_error(response, 403, "admin_key")
    never_forwarded(upstream)
    assert httpx.post(proxy.base_url + "/v1/chat/completions", json=body,
                      headers={"authorization": "Bearer sk-provider"}).status_code == 200


@pytest.mark.parametrize("user", [".", ".."])
def test_cli_reaches_dot_user_ids(
    proxy: ThreadedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream, user: str,
) -> None:
    add(api(proxy), user, "likes tea")
    monkeypatch.setenv("MEMPROXY_ADMIN_KEY", "adm-secret")
    assert main(["users", "forget", "--user", user, "--yes", "--url", proxy.base_url]) == 0
    assert "1 memories" in capsys.readouterr().out
    never_forwarded(upstream)
