"""Bad requests get a 4xx in OpenAI's error shape, are never forwarded, and never cause a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fake_upstream import FakeUpstream
from http_checks import CHAT_PATH, assert_openai_error, reset, shared_proxy
from servers import ThreadedServer

MAX_BODY = 1000
VALID: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def _shared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ThreadedServer, FakeUpstream]]:
    data_dir = tmp_path_factory.mktemp("bad-input-data")
    with shared_proxy(data_dir, **{"server.max_body_bytes": MAX_BODY}) as pair:
        yield pair


@pytest.fixture
def shared(_shared: tuple[ThreadedServer, FakeUpstream]) -> tuple[str, FakeUpstream]:
    proxy, upstream = _shared
    return proxy.base_url, reset(upstream)


def post(base_url: str, content: bytes | Iterator[bytes], **headers: Any) -> httpx.Response:
    return httpx.post(base_url + CHAT_PATH, content=content,
                      headers={"content-type": "application/json", **headers}, timeout=10)


@pytest.mark.parametrize(
    ("content", "code"),
    [
        pytest.param(b'{"model": "m", "messages": [', "invalid_json", id="truncated"),
        pytest.param(b"", "invalid_json", id="empty"),
        pytest.param(b"{'model': 'm'}", "invalid_json", id="single-quotes"),
        pytest.param(b'{"model": "\xff\xfe"}', "invalid_json", id="not-utf8"),
        pytest.param(json.dumps([VALID]).encode(), "invalid_request", id="array"),
        pytest.param(b'"a string"', "invalid_request", id="string"),
        pytest.param(b"null", "invalid_request", id="null"),
        pytest.param(b'{"model": "m"}', "invalid_request", id="messages-missing"),
        pytest.param(b'{"model": "m", "messages": null}', "invalid_request", id="messages-null"),
        pytest.param(b'{"model": "m", "messages": "hi"}', "invalid_request", id="messages-str"),
        pytest.param(b'{"model": "m", "messages": {"role": "user"}}', "invalid_request",
                     id="messages-object"),
        pytest.param(b'{"model": "m", "messages": []}', "invalid_request", id="messages-empty"),
        pytest.param(b'{"model": "m", "messages": ["hi"]}', "invalid_request",
                     id="message-not-object"),
    ],
)
def test_malformed_body_is_400(
    content: bytes, code: str, shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    assert_openai_error(post(base_url, content, **{"X-User-Id": "u1"}), 400, code)
    assert upstream.requests == []


def test_deeply_nested_json_is_400_not_500(settings, upstream: FakeUpstream, start_proxy) -> None:
    proxy = start_proxy(settings)  # default body limit: the nesting, not the size, is the issue
    for content in (b"[" * 100_000, b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        assert_openai_error(post(proxy.base_url, content), 400, "invalid_json")
    assert upstream.requests == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(chunked: bool, shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    big = json.dumps({**VALID, "padding": "x" * MAX_BODY}).encode()
    content: bytes | Iterator[bytes] = iter([big[:500], big[500:]]) if chunked else big
    assert_openai_error(post(base_url, content), 413, "payload_too_large")
    assert upstream.requests == []

    small = json.dumps({**VALID, "padding": "x" * (MAX_BODY - 200)}).encode()
    assert len(small) <= MAX_BODY
    assert post(base_url, iter([small]) if chunked else small).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-User-Id": ""}, id="empty-user"),
        pytest.param({"X-User-Id": "u" * 300}, id="long-user"),
        pytest.param({"X-User-Id": b"bad\x85id"}, id="c1-control-user"),
        pytest.param({"X-User-Id": "tab\there"}, id="tab-user"),
        pytest.param({"X-User-Id": "ok", "X-Agent-Id": ""}, id="empty-agent"),
        pytest.param({"X-User-Id": "ok", "X-Session-Id": b"s\x9b1"}, id="c1-control-session"),
        pytest.param({"X-User-Id": "ok", "X-Memory-Mode": "sometimes"}, id="bad-mode"),
    ],
)
def test_bad_identity_header_is_400(
    headers: dict[str, Any], shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    response = post(base_url, json.dumps(VALID).encode(), **headers)
    assert_openai_error(response, 400, "invalid_header")
    assert upstream.requests == []


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param({"user": "x" * 300}, id="long-user"),
        pytest.param({"user": "bell\u0007user"}, id="control-user"),
        pytest.param({"safety_identifier": "zero\u200bwidth"}, id="format-char"),
        pytest.param({"metadata": {"user_id": "line\nbreak"}}, id="newline-metadata"),
    ],
)
def test_bad_identity_in_body_is_400(
    identity: dict[str, Any], shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    response = post(base_url, json.dumps({**VALID, **identity}).encode())
    assert_openai_error(response, 400, "invalid_request")
    assert upstream.requests == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"messages": [{"role": "user", "content": None}]}, id="null-content"),
        pytest.param({"messages": [{"role": "user", "content": 42}]}, id="number-content"),
        pytest.param({"messages": [{"role": "user", "content": [1, None, {"type": "text",
                                                                          "text": 5}]}]},
                     id="odd-parts"),
        pytest.param({"messages": [{"content": "no role"}]}, id="no-role"),
        pytest.param({"messages": [{"role": "user", "content": "hi"}], "user": 42,
                      "metadata": "not-a-dict", "stream": "yes", "model": ["a"]},
                     id="odd-fields"),
    ],
)
def test_odd_but_parseable_bodies_are_forwarded_not_500(
    body: dict[str, Any], shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    content = json.dumps(body).encode()
    response = post(base_url, content, **{"X-User-Id": "odd"})
    assert response.status_code < 500, response.text
    assert upstream.requests[0].body == content  # odd messages get no memories: bytes as sent


def test_sdk_sees_a_bad_request_error(shared: tuple[str, FakeUpstream]) -> None:
    base_url, _ = shared
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[])
    assert caught.value.code == "invalid_request"
    assert caught.value.param == "messages"


def test_unknown_route_is_an_openai_shaped_404(shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    assert_openai_error(httpx.get(base_url + "/nope"), 404, "not_found")
    assert upstream.requests == []


def test_non_ascii_header_bytes_are_forwarded_as_sent_not_500(
    shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    headers = {"X-User-Id": "jürgen-🙂".encode(), "X-Trace": b"caf\xe9"}  # UTF-8, latin-1
    assert post(base_url, json.dumps(VALID).encode(), **headers).status_code == 200
    assert httpx.get(base_url + "/v1/models", headers=headers).status_code == 200
    for request in upstream.requests:
        # Starlette decodes header bytes as latin-1: the same bytes arrived upstream.
        assert request.headers["x-user-id"].encode("latin-1") == "jürgen-🙂".encode()
        assert request.headers["x-trace"].encode("latin-1") == b"caf\xe9"


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X-User-Id": ""}, "header X-User-Id must not be empty"),
        ({"X-User-Id": "u" * 257}, "header X-User-Id is longer than 256 characters"),
        ({"X-User-Id": b"bad\x85id"}, "header X-User-Id must not contain control characters"),
        ({"X-Memory-Mode": "always"}, "header X-Memory-Mode must be one of on, off, read, write"),
    ],
)
def test_bad_ids_and_modes_say_what_is_wrong(
    headers: dict[str, Any], says: str, shared: tuple[str, FakeUpstream]
) -> None:
    base_url, _ = shared
    response = post(base_url, json.dumps(VALID).encode(), **headers)
    assert_openai_error(response, 400, "invalid_header")
    assert response.json()["error"]["message"].startswith(says)
