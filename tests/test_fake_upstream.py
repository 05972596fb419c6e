"""Checks the fake upstream against the official openai SDK.

If the real client parses what the fake sends, proxy tests built on the fake are
exercising realistic wire formats rather than the fake's own assumptions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from fake_upstream import FakeUpstream, default_extract_facts


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def client(up: FakeUpstream) -> openai.OpenAI:
    # No retries: error-injection tests must see the first response, not a retry.
    return openai.OpenAI(base_url=up.url, api_key="sk-test", max_retries=0)


def test_non_stream_reply_echoes_then_uses_queue(up: FakeUpstream, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hello there"}]
    )
    completion = raw.parse()
    assert raw.headers["x-request-id"].startswith("fake-")
    assert completion.id.startswith("chatcmpl-fake-")
    assert completion.model == "gpt-test"
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3

    up.replies.append("queued answer")
    second = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "again"}]
    )
    assert second.choices[0].message.content == "queued answer"

    recorded = up.chat_requests()
    assert len(recorded) == 2 and up.extraction_requests() == []
    assert recorded[0].headers["authorization"] == "Bearer sk-test"
    assert recorded[0].json["messages"][0]["content"] == "hello there"


def test_stream_with_usage(up: FakeUpstream, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == up.stream_chunks
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me please"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert not up.stream_cancelled.is_set()


def test_structured_output_returns_extracted_facts(up: FakeUpstream, client: openai.OpenAI) -> None:
    transcript = "user: I'm building this in Next.js with a Postgres backend. nice weather"
    completion = client.chat.completions.create(
        model="gpt-test",
        messages=[
            {"role": "system", "content": "extract facts"},
            {"role": "user", "content": transcript},
        ],
        response_format={"type": "json_object"},
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {
        "facts": ["User is building this in Next.js with a Postgres backend"]
    }
    assert len(up.extraction_requests()) == 1 and up.chat_requests() == []

    up.structured_replies.append("{not json")
    malformed = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": transcript}],
        response_format={"type": "json_object"},
    )
    assert malformed.choices[0].message.content == "{not json"


def test_default_extraction_rule() -> None:
    text = (
        "assistant: I am a bot.\n"
        "User: I am vegan! My dog is Rex? I like tea. i'm lowercase. It rains.\n"
        "unrelated line"
    )
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    assert default_extract_facts(body) == [
        "User is vegan",
        "User's dog is Rex",
        "User like tea",
    ]


def test_queued_429_raises_rate_limit_error(up: FakeUpstream, client: openai.OpenAI) -> None:
    error = {"error": {"message": "slow down", "type": "rate_limit_error", "code": None}}
    up.errors.append((429, error, {"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
    assert excinfo.value.response.headers["retry-after"] == "7"
    # The error was consumed; the next call succeeds.
    assert client.models.list().data[0].id == "fake-model"


def test_models_list_and_query_echo(up: FakeUpstream, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["fake-model"]
    response = httpx.get(f"{up.url}/models?limit=2&after=x")
    assert response.headers["x-seen-query"] == "limit=2&after=x"
    assert up.requests[-1].query == "limit=2&after=x"


def test_embeddings_are_deterministic(client: openai.OpenAI) -> None:
    first = client.embeddings.create(model="emb", input=["alpha", "beta"])
    again = client.embeddings.create(model="emb", input="alpha")
    assert [len(d.embedding) for d in first.data] == [8, 8]
    assert first.data[0].embedding != first.data[1].embedding
    assert again.data[0].embedding == pytest.approx(first.data[0].embedding)


def test_unknown_path_is_openai_shaped_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-test", prompt="legacy")


def test_client_disconnect_marks_stream_cancelled(up: FakeUpstream) -> None:
    up.chunk_delay = 0.2
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{up.url}/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        next(response.iter_lines())  # leave after the first event
    assert up.stream_cancelled.wait(5)


def test_response_delay_triggers_client_timeout(up: FakeUpstream) -> None:
    up.response_delay = 0.5
    client = openai.OpenAI(base_url=up.url, api_key="sk-test", max_retries=0, timeout=0.1)
    with pytest.raises(openai.APITimeoutError):
        client.models.list()
