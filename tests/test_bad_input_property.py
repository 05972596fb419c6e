"""Generated bodies and headers thrown at the chat endpoint (hypothesis): never a 500, never a
crash, and never a memory written for a request that was rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from conftest import HashingEmbedder, wait_until
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config_sources import load_settings

KNOWN_USERS = ["prop-ann", "prop-bob", "prop-cyd"]
SPECIAL = ["", " ", "\x00", "\ud800", "🙂", "مرحبا", "\u202e", "a" * 300, "</memories>", "\n"]

text = st.text(max_size=20) | st.sampled_from(SPECIAL)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio"]) | text},
    optional={"text": text | json_values, "image_url": json_values, "input_audio": json_values},
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "function"])
        | json_values,
        "content": text | st.none() | st.lists(parts | json_values, max_size=3) | json_values,
        "tool_calls": json_values,
        "name": text,
    },
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just("m") | json_values,
        "messages": st.lists(messages | json_values, max_size=4) | json_values,
        "stream": st.booleans() | json_values,
        "user": st.sampled_from(KNOWN_USERS) | json_values,
        "metadata": st.fixed_dictionaries({"user_id": text}) | json_values,
        "safety_identifier": text,
    },
)
header_values = st.sampled_from(KNOWN_USERS).map(str.encode) | st.binary(max_size=40).filter(
    lambda b: b"\r" not in b and b"\n" not in b
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "X-User-Id": header_values,
        "X-Agent-Id": header_values,
        "X-Session-Id": header_values,
        "X-Memory-Mode": st.sampled_from([b"on", b"off", b"read", b"write", b"ON "])
        | header_values,
    },
)
# Mostly well-formed chats (so memories are read, injected and written), odd in the details.
plausible_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "user", "assistant", "system", "tool"]),
     "content": text | st.lists(parts, max_size=2)},
    optional={"tool_calls": json_values, "name": text},
)
plausible_bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(plausible_messages, min_size=1, max_size=4)},
    optional={"stream": st.booleans(), "user": st.sampled_from(KNOWN_USERS) | json_values,
              "n": json_values, "tools": json_values},
)
raw_bodies = st.one_of(
    plausible_bodies.map(lambda body: json.dumps(body).encode()),
    plausible_bodies.map(lambda body: json.dumps(body).encode()),
    chat_bodies.map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=100),
)


def echo_upstream(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible upstream that answers whatever it is sent."""
    try:
        body = json.loads(request.content)
    except ValueError:
        return httpx.Response(400, json={"error": {"message": "bad json", "type": "x"}})
    if isinstance(body, dict) and body.get("stream") is True:
        chunk = {"id": "c", "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
        events = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
        return httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json={
        "id": "c", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
    })


def named_users(body: bytes, sent_headers: dict[str, bytes]) -> set[str]:
    """Every user id a request names, in its header or its body."""
    names = {sent_headers.get("X-User-Id", b"").decode("latin-1")}
    try:
        parsed = json.loads(body)
    except ValueError:
        return names
    if isinstance(parsed, dict):
        metadata = parsed.get("metadata")
        candidates = [parsed.get("user"), parsed.get("safety_identifier"),
                      metadata.get("user_id") if isinstance(metadata, dict) else None]
        names |= {name for name in candidates if isinstance(name, str)}
    return names


def test_generated_requests_never_500_and_rejected_ones_store_nothing(tmp_path: Path) -> None:
    settings = load_settings(None, environ={}, overrides={
        "data_dir": str(tmp_path / "data"), "upstream.url": "http://upstream.invalid/v1",
        "extraction.mode": "raw", "store.shards": 2, "server.max_body_bytes": 4000,
        "jobs.poll_seconds": 0.05,
    })
    app = create_app(settings, embedder=HashingEmbedder(),
                     upstream_transport=httpx.MockTransport(echo_upstream))
    accepted_users: set[str] = set()
    rejected_users: set[str] = set()

    with TestClient(app) as client:
        jobs = app.state.services.jobs

        @examples(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(body=raw_bodies, sent_headers=headers)
        def check(body: bytes, sent_headers: dict[str, bytes]) -> None:
            enqueued = jobs.counts["enqueued"]
            response = client.post("/v1/chat/completions", content=body,
                                   headers={"content-type": "application/json", **sent_headers})
            assert response.status_code < 500, (response.status_code, response.text)
            users = named_users(body, sent_headers)
            if response.status_code >= 400:
                error: Any = response.json()["error"]
                assert isinstance(error["message"], str) and error["message"]
                assert jobs.counts["enqueued"] == enqueued  # nothing to remember
                rejected_users.update(users)
            else:
                accepted_users.update(users)

        check()
        assert client.get("/healthz").status_code == 200
        wait_until(lambda: jobs.queue.stats().queued + jobs.queue.stats().running == 0)
        store = app.state.services.store
        for user in (rejected_users - accepted_users) & set(KNOWN_USERS):
            assert store.count_user(user) == 0, user
        assert jobs.counts["enqueue_failures"] == 0
        assert jobs.queue.stats().dead == 0
