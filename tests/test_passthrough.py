"""What the upstream says reaches the client unchanged: other /v1/* endpoints, response
headers, error statuses and bodies; and what the proxy says when the upstream cannot answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fake_upstream import FakeUpstream, _embedding
from http_checks import CHAT_PATH, assert_openai_error, closed_port, reset, shared_proxy
from servers import ThreadedServer

from proxy.config import Settings

RATE_LIMITED = {
    "error": {
        "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
SERVER_ERROR = {
    "error": {"message": "The server had an error while processing your request.",
              "type": "server_error", "param": None, "code": None}
}
MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def _shared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ThreadedServer, FakeUpstream]]:
    with shared_proxy(tmp_path_factory.mktemp("passthrough-data")) as pair:
        yield pair


@pytest.fixture
def shared(_shared: tuple[ThreadedServer, FakeUpstream]) -> tuple[str, FakeUpstream]:
    proxy, upstream = _shared
    return proxy.base_url, reset(upstream)


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0)


# --- passthrough -----------------------------------------------------------------------------

def test_models_list_with_query_through_sdk_and_raw_http(shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    direct = httpx.get(upstream.url + "/models", params={"x": "1"}).json()
    upstream.clear()

    page = sdk(base_url).models.with_raw_response.list(extra_query={"x": "1"})
    raw = httpx.get(base_url + "/v1/models?x=1&y=a%20b", headers={"authorization": "Bearer k"})

    assert [m.id for m in page.parse()] == [m["id"] for m in direct["data"]]
    assert page.headers["x-seen-query"] == "x=1"
    assert raw.status_code == 200
    assert raw.json() == direct
    assert raw.headers["x-seen-query"] == "x=1&y=a%20b"
    assert [(r.method, r.path, r.query) for r in upstream.requests] == [
        ("GET", "/v1/models", "x=1"), ("GET", "/v1/models", "x=1&y=a%20b")
    ]
    assert upstream.requests[1].headers["authorization"] == "Bearer k"


def test_embeddings_pass_through_the_sdk(shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    result = sdk(base_url).embeddings.create(
        model="text-embedding-3-small", input=["first text", "second text"]
    )
    assert [d.index for d in result.data] == [0, 1]
    for data, text in zip(result.data, ["first text", "second text"], strict=True):
        assert data.embedding == pytest.approx(_embedding(text), abs=1e-6)
    [request] = upstream.requests
    assert request.path == "/v1/embeddings"
    assert request.json["input"] == ["first text", "second text"]


def test_upstream_response_headers_reach_the_client(shared: tuple[str, FakeUpstream]) -> None:
    base_url, _ = shared
    raw = sdk(base_url).chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert raw.headers["x-request-id"].startswith("fake-")
    assert raw.parse()._request_id == raw.headers["x-request-id"]


def test_unknown_path_is_passed_through(shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    response = httpx.post(base_url + "/v1/files/abc/content?purpose=x", content=b"raw\x00bytes")
    assert_openai_error(response, 404, "unknown_url")
    [request] = upstream.requests
    assert (request.path, request.query, request.body) == (
        "/v1/files/abc/content", "purpose=x", b"raw\x00bytes"
    )


# --- upstream errors -------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_rate_limit_reaches_the_sdk_unchanged(
    stream: bool, shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    upstream.errors.append((429, RATE_LIMITED, {"retry-after": "7", "x-request-id": "req-429"}))
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(base_url).chat.completions.create(
            model="m", messages=MESSAGES, stream=stream, extra_headers={"X-User-Id": "rita"}
        )
    error = caught.value
    assert error.status_code == 429
    assert error.body == RATE_LIMITED["error"]
    assert error.response.json() == RATE_LIMITED
    assert error.response.headers["retry-after"] == "7"
    assert error.request_id == "req-429"


def test_server_error_passes_through_with_its_body(shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    upstream.errors.append((500, SERVER_ERROR, {}))
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(base_url).chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 500
    assert caught.value.response.json() == SERVER_ERROR

    upstream.errors.append((503, SERVER_ERROR, {"retry-after": "2"}))
    models = httpx.get(base_url + "/v1/models")
    assert models.status_code == 503 and models.json() == SERVER_ERROR
    assert models.headers["retry-after"] == "2"


@pytest.mark.parametrize(("method", "path"), [("POST", CHAT_PATH), ("GET", "/v1/models")])
def test_unreachable_upstream_is_502(
    method: str, path: str, settings: Settings, start_proxy
) -> None:
    settings.upstream.url = f"http://127.0.0.1:{closed_port()}/v1"
    proxy = start_proxy(settings)
    response = httpx.request(method, proxy.base_url + path, json={"model": "m",
                                                                  "messages": MESSAGES})
    assert_openai_error(response, 502, "upstream_unreachable")


def test_slow_upstream_is_504(settings: Settings, upstream: FakeUpstream, start_proxy) -> None:
    settings.upstream.read_timeout = 0.5
    upstream.response_delay = 1.2
    proxy = start_proxy(settings)
    started = time.monotonic()
    response = httpx.post(proxy.base_url + CHAT_PATH, json={"model": "m", "messages": MESSAGES},
                          timeout=10)
    assert_openai_error(response, 504, "upstream_timeout")
    assert time.monotonic() - started < 1.1


def test_repeated_upstream_headers_survive_a_non_streaming_chat(settings, hashing_embedder) -> None:
    from servers import ThreadedServer

    from proxy.app import create_app

    def upstream_reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers=[("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-request-id", "r1")],
            json={"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]},
        )

    app = create_app(
        settings, embedder=hashing_embedder, upstream_transport=httpx.MockTransport(upstream_reply)
    )
    with ThreadedServer(app) as proxy:
        response = httpx.post(
            proxy.base_url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["x-request-id"] == "r1"
    assert response.json()["choices"][0]["message"]["content"] == "hi"
