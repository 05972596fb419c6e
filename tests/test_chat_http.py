"""/chat/completions through the real app over real HTTP: transparency, identity and memory
modes, routes and health, and the caller's API key. (Streaming: test_streaming.py; fail-open:
test_fail_open.py; passthrough and upstream errors: test_passthrough.py.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream
from http_checks import (
    CHAT_PATH,
    assert_openai_error,
    chat,
    forwarded_chats,
    injected_positions,
    memories_of,
    reset,
    sdk,
    seed,
    shared_proxy,
)
from pydantic import SecretStr
from servers import ThreadedServer

from proxy.config import Settings

SEED = "I keep three beehives on my roof in Lisbon"


class SentBodies:
    """httpx request hook for the SDK's client: the JSON bodies the client actually sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> None:
        if request.url.path.endswith("/chat/completions"):
            self.bodies.append(json.loads(request.content))


@pytest.fixture(scope="module")
def _shared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ThreadedServer, FakeUpstream]]:
    with shared_proxy(tmp_path_factory.mktemp("chat-data")) as (proxy, upstream):
        seed(proxy.base_url, "alice", SEED)
        yield proxy, upstream


@pytest.fixture
def shared(_shared: tuple[ThreadedServer, FakeUpstream]) -> tuple[str, FakeUpstream]:
    """A running proxy (base URL) whose user "alice" remembers SEED; upstream reset."""
    proxy, upstream = _shared
    return proxy.base_url, reset(upstream)


# --- transparency ----------------------------------------------------------------------------

IMAGE = {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
                "nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg==", "detail": "low"}
FEATURES: dict[str, dict[str, Any]] = {
    "tools": {
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}],
        "tool_choice": "auto", "parallel_tool_calls": False,
    },
    "response_format": {
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "strict": True,
            "schema": {"type": "object", "properties": {"a": {"type": "string"}},
                       "required": ["a"], "additionalProperties": False}}},
    },
    "n_logprobs": {"n": 2, "logprobs": True, "top_logprobs": 3, "seed": 7, "temperature": 0.0},
    "unknown_fields": {"extra_body": {"vendor_knob": {"nested": [1, "two", None, 3.5]},
                                      "top_k": 40}},
    "body_user": {"user": "alice"},
}


def user_turn(feature: str) -> dict[str, Any]:
    if feature == "multimodal":
        return {"role": "user", "content": [
            {"type": "text", "text": "What do you see in this picture?"},
            {"type": "image_url", "image_url": IMAGE},
        ]}
    return {"role": "user", "content": "What should I plant for my bees this spring?"}


@pytest.mark.parametrize("feature", [*FEATURES, "multimodal"])
def test_upstream_gets_the_client_body_plus_one_memory_message(
    feature: str, shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    sent = SentBodies()
    client = sdk(base_url + "/v1",
                 http_client=openai.DefaultHttpxClient(event_hooks={"request": [sent]}))

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "You are a gardener."}, user_turn(feature)],
        extra_headers={"X-User-Id": "alice"},
        **FEATURES.get(feature, {}),
    )

    assert raw.headers["x-memory-status"] == "injected"
    [client_body] = sent.bodies
    [request] = forwarded_chats(upstream)
    forwarded = request.json
    [position] = injected_positions(forwarded)
    injected = forwarded["messages"].pop(position)
    assert position == 1
    assert injected["role"] == "system" and SEED in injected["content"]
    assert injected["content"].count("\n- [") == int(raw.headers["x-memory-injected"])
    assert forwarded == client_body  # everything else, unknown fields included, unchanged


@pytest.mark.parametrize("leading", [0, 1, 2])
def test_memory_message_sits_right_after_the_leading_system_messages(
    leading: int, shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    systems = [{"role": "system", "content": f"System rule {i}."} for i in range(leading)]
    rest = [
        {"role": "user", "content": "Hello there, gardener."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "system", "content": "A later system note stays where it is."},
        {"role": "user", "content": "Which flowers do bees like best?"},
    ]
    body = {"model": "m", "messages": systems + rest}

    response = chat(base_url, body, **{"X-User-Id": "alice"})

    assert response.status_code == 200
    forwarded = forwarded_chats(upstream)[0].json
    assert injected_positions(forwarded) == [leading]
    del forwarded["messages"][leading]
    assert forwarded == body


# --- identity and memory modes ---------------------------------------------------------------

ODD_BYTES = (b'{ "messages" :[{"role":"user","content":"caf\\u00e9 \xc3\xa9t\xc3\xa9"}],\n'
             b'  "model":"m",  "temperature": 1.50, "zzz": [1e3, null] }')


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, "skipped"),
        ({"X-User-Id": "alice", "X-Memory-Mode": "off"}, "skipped"),
        ({"X-User-Id": "newcomer-without-memories"}, "none"),
    ],
)
def test_without_memory_the_upstream_gets_the_clients_bytes(
    headers: dict[str, str], status: str, shared: tuple[str, FakeUpstream]
) -> None:
    base_url, upstream = shared
    response = httpx.post(base_url + CHAT_PATH, content=ODD_BYTES,
                          headers={"content-type": "application/json", **headers})

    assert response.status_code == 200
    assert response.headers["x-memory-status"] == status
    assert response.headers["x-memory-injected"] == "0"
    assert forwarded_chats(upstream)[0].body == ODD_BYTES


@pytest.mark.parametrize("field", ["user", "safety_identifier", "metadata.user_id"])
def test_body_fields_identify_the_user(field: str, shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    user_id = f"carol-{field}"
    identity: dict[str, Any] = (
        {"metadata": {"user_id": user_id}} if field == "metadata.user_id" else {field: user_id}
    )
    client = sdk(base_url + "/v1")
    first = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "I grow purple tomatoes"}],
        extra_body=identity,
    )
    assert first.headers["x-memory-status"] == "none"
    wait_until(lambda: memories_of(base_url, user_id) == ["I grow purple tomatoes"])

    upstream.clear()
    second = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "What vegetables do I grow?"}],
        extra_body=identity,
    )
    assert second.headers["x-memory-status"] == "injected"
    forwarded = forwarded_chats(upstream)[0].json
    assert all(forwarded[key] == value for key, value in identity.items())


def test_user_header_wins_over_the_body(shared: tuple[str, FakeUpstream]) -> None:
    base_url, _ = shared
    body = {"model": "m", "user": "erin", "messages": [{"role": "user", "content": "I sail"}]}
    assert chat(base_url, body, **{"X-User-Id": "dave"}).status_code == 200
    wait_until(lambda: memories_of(base_url, "dave") == ["I sail"])
    assert memories_of(base_url, "erin") == []


def test_memory_modes(shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    seed(base_url, "mo", "I play the cello")

    def send(text: str, mode: str) -> tuple[httpx.Response, dict[str, Any]]:
        upstream.clear()
        body = {"model": "m", "messages": [{"role": "user", "content": text}]}
        response = chat(base_url, body, **{"X-User-Id": "mo", "X-Memory-Mode": mode})
        assert response.status_code == 200, response.text
        return response, forwarded_chats(upstream)[0].json

    off, forwarded = send("Quiet zebra grapefruit", "off")
    assert off.headers["x-memory-status"] == "skipped" and injected_positions(forwarded) == []
    read, forwarded = send("Loud walrus marmalade", "READ")
    assert read.headers["x-memory-status"] == "injected" and injected_positions(forwarded) == [0]
    write, forwarded = send("Sleepy otter pancakes", "write")
    assert write.headers["x-memory-status"] == "skipped" and injected_positions(forwarded) == []
    assert write.headers["x-memory-injected"] == "0"
    # Jobs are applied in order: once this one is stored, every earlier one was handled.
    send("Final heron sentinel", "on")
    wait_until(lambda: "Final heron sentinel" in memories_of(base_url, "mo"))
    assert sorted(memories_of(base_url, "mo")) == sorted(
        ["I play the cello", "Sleepy otter pancakes", "Final heron sentinel"]
    )


def test_invalid_memory_mode_is_rejected(shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    response = chat(base_url, body, **{"X-User-Id": "mo", "X-Memory-Mode": "sometimes"})
    assert_openai_error(response, 400, "invalid_header")
    assert upstream.requests == []


# --- routes, health, metrics -----------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_both_chat_routes_work(prefix: str, shared: tuple[str, FakeUpstream]) -> None:
    base_url, upstream = shared
    completion = sdk(base_url + prefix).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "ping"}]
    )
    assert completion.choices[0].message.content == "echo: ping"
    assert [r.path for r in upstream.requests] == [CHAT_PATH]


def test_health_readiness_and_metrics(start_proxy) -> None:
    proxy = start_proxy()
    assert httpx.get(proxy.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proxy.base_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    chat(proxy.base_url, body)
    chat(proxy.base_url, body)
    chat(proxy.base_url, body, **{"X-User-Id": "nobody-yet"})
    metrics = httpx.get(proxy.base_url + "/metrics")
    assert metrics.status_code == 200
    assert 'memproxy_memory_status_total{status="skipped"} 2' in metrics.text
    assert 'memproxy_memory_status_total{status="none"} 1' in metrics.text
    # The one retrieval's steps: embedded, looked up; a user with no memories is not ranked.
    assert 'memproxy_retrieval_phase_seconds_count{phase="embed"} 1' in metrics.text
    assert 'memproxy_retrieval_phase_seconds_count{phase="candidates"} 1' in metrics.text
    assert 'phase="rank"' not in metrics.text


# --- the caller's API key --------------------------------------------------------------------

CALLER_KEY = "sk-RECOGNISABLE-123"


def exercise_with_key(base_url: str, upstream: FakeUpstream) -> None:
    client = sdk(base_url + "/v1", api_key=CALLER_KEY)
    messages: Any = [{"role": "user", "content": "I repair old clocks"}]
    headers = {"X-User-Id": "kay"}
    client.chat.completions.create(model="m", messages=messages, extra_headers=headers)
    for _ in client.chat.completions.create(model="m", messages=messages, stream=True,
                                            extra_headers=headers):
        pass
    client.models.list()
    upstream.errors.append((401, {"error": {"message": "bad key", "type": "invalid_request_error",
                                            "param": None, "code": "invalid_api_key"}}, {}))
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=messages, extra_headers=headers)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[], extra_headers=headers)
    wait_until(lambda: memories_of(base_url, "kay"))


def test_caller_key_is_passed_through_and_never_logged(
    caplog: pytest.LogCaptureFixture, upstream: FakeUpstream, start_proxy
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = start_proxy()
    exercise_with_key(proxy.base_url, upstream)

    assert len(upstream.requests) == 4
    assert {r.headers["authorization"] for r in upstream.requests} == {f"Bearer {CALLER_KEY}"}
    proxy_records = [r for r in caplog.records if r.name.startswith("memproxy")]
    assert proxy_records, "expected the proxy to log something at DEBUG"
    for record in caplog.records:
        if record.name.startswith("openai"):
            continue  # the client SDK's own logs are not ours to judge
        text = " ".join([record.getMessage(), str(record.args), record.exc_text or ""])
        assert CALLER_KEY not in text, (record.name, text)


def test_configured_upstream_key_replaces_the_callers(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    settings.upstream.api_key = SecretStr("sk-proxy-own-456")
    proxy = start_proxy(settings)
    exercise_with_key(proxy.base_url, upstream)

    assert len(upstream.requests) == 4
    for request in upstream.requests:
        assert request.headers["authorization"] == "Bearer sk-proxy-own-456"
        assert CALLER_KEY not in json.dumps(request.headers) + request.body.decode()
