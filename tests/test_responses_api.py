"""POST /v1/responses through the official openai SDK: memory in, memory out, transparent."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from conftest import wait_until
from dialect_checks import FACT, STORED_FACT, files_holding, memories_of, settled_jobs
from fake_upstream import FakeUpstream

from proxy.config import Settings

CALLER_KEY = "sk-caller-responses-secret"


@pytest.fixture
def proxy(settings: Settings, start_proxy):  # type: ignore[no-untyped-def]
    return start_proxy(settings)


def client_of(proxy) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=CALLER_KEY, max_retries=0)


def test_a_fact_said_through_chat_completions_reaches_a_responses_call(
    proxy, upstream: FakeUpstream
) -> None:
    client = client_of(proxy)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": FACT}],
        extra_headers={"X-User-Id": "u1"},
    )
    assert wait_until(lambda: memories_of(proxy.base_url, "u1")) == [STORED_FACT]

    upstream.clear()
    caller_input = [
        {"role": "developer", "content": "Answer in one sentence."},
        {"role": "user", "content": [{"type": "input_text", "text": "Which database do I use?"}]},
    ]
    raw = client.responses.with_raw_response.create(
        model="gpt-4.1-mini", instructions="You are a terse assistant.", input=caller_input,
        tools=[{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
        text={"format": {"type": "json_schema", "name": "answer", "strict": True,
                         "schema": {"type": "object", "properties": {}}}},
        store=False, extra_headers={"X-User-Id": "u1"},
    )
    assert raw.headers["x-memory-status"] == "injected"
    assert raw.headers["x-memory-injected"] == "1"
    assert raw.parse().output_text == "echo: Which database do I use?"
    sent = upstream.responses_requests()[0].json
    # The caller's prefix is kept: instructions untouched, their leading developer item first,
    # then exactly one memory item, then the rest of their input.
    assert sent["instructions"] == "You are a terse assistant."
    assert sent["input"][0] == caller_input[0]
    memory_item = sent["input"][1]
    assert memory_item["role"] == "developer" and "<memories>" in memory_item["content"]
    assert "Next.js with a Postgres backend" in memory_item["content"]
    assert sent["input"][2:] == caller_input[1:]
    # Everything else passed through intact.
    assert sent["tools"][0]["name"] == "lookup"
    assert sent["text"]["format"]["name"] == "answer" and sent["store"] is False


def test_string_input_becomes_the_same_user_turn_after_the_memories(
    proxy, upstream: FakeUpstream
) -> None:
    client = client_of(proxy)
    client.responses.create(model="m", input=FACT, extra_headers={"X-User-Id": "u2"})
    wait_until(lambda: memories_of(proxy.base_url, "u2"))
    upstream.clear()
    client.responses.create(model="m", input="What stack am I on?",
                            extra_headers={"X-User-Id": "u2"})
    sent = upstream.responses_requests()[0].json["input"]
    assert [item["role"] for item in sent] == ["developer", "user"]
    assert sent[1] == {"role": "user", "content": "What stack am I on?"}
    assert "instructions" not in upstream.responses_requests()[0].json


@pytest.mark.anyio
async def test_streamed_response_is_relayed_and_remembered_then_previous_response_id(
    proxy, upstream: FakeUpstream
) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=CALLER_KEY)
    stream = await client.responses.create(
        model="m", input=FACT, stream=True, extra_headers={"X-User-Id": "u3"}
    )
    kinds, text, response_id = [], "", None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            response_id = event.response.id
    assert text == f"echo: {FACT}"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert wait_until(lambda: memories_of(proxy.base_url, "u3")) == [STORED_FACT]

    # The history lives at the provider: only the new input is the query and the new turn.
    upstream.clear()
    follow_up = await client.responses.with_raw_response.create(
        model="m", previous_response_id=response_id, input="I also deploy on Fly.io",
        extra_headers={"X-User-Id": "u3"},
    )
    assert follow_up.headers["x-memory-status"] == "injected"
    sent = upstream.responses_requests()[0].json
    assert sent["previous_response_id"] == response_id
    assert "Postgres backend" in sent["input"][0]["content"]
    assert sent["input"][1] == {"role": "user", "content": "I also deploy on Fly.io"}
    wait_until(lambda: len(memories_of(proxy.base_url, "u3")) == 2)
    assert sorted(memories_of(proxy.base_url, "u3")) == sorted(
        [STORED_FACT, "I also deploy on Fly.io"]
    )


def test_stream_chunks_arrive_before_the_upstream_finishes(
    proxy, upstream: FakeUpstream
) -> None:
    upstream.chunk_delay = 0.3
    upstream.stream_chunks = 4
    client = client_of(proxy)
    started = time.monotonic()
    arrivals = []
    for event in client.responses.create(model="m", input="hello there, how are you",
                                         stream=True, extra_headers={"X-User-Id": "u4"}):
        if event.type == "response.output_text.delta":
            arrivals.append(time.monotonic() - started)
    # 12 events 0.3 s apart: ~3.3 s in all. The first delta comes after ~1 s, not at the end.
    assert len(arrivals) == 4
    assert arrivals[0] < arrivals[-1] - 0.6


def test_upstream_error_and_retry_after_reach_the_caller_unchanged(
    proxy, upstream: FakeUpstream
) -> None:
    error = {"error": {"message": "Rate limit reached", "type": "requests",
                       "param": None, "code": "rate_limit_exceeded"}}
    upstream.errors.append((429, error, {"retry-after": "7", "x-request-id": "req-9"}))
    with pytest.raises(openai.RateLimitError) as raised:
        client_of(proxy).responses.create(model="m", input="hi there",
                                          extra_headers={"X-User-Id": "u5"})
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.response.headers["x-request-id"] == "req-9"
    assert raised.value.response.json() == error
    # The provider's own 400 for an unknown previous_response_id, unchanged.
    with pytest.raises(openai.BadRequestError) as bad:
        client_of(proxy).responses.create(model="m", input="hi", previous_response_id="resp_x",
                                          extra_headers={"X-User-Id": "u5"})
    assert bad.value.code == "previous_response_not_found"
    assert settled_jobs(proxy.base_url, "u5") and memories_of(proxy.base_url, "u5") == []


@pytest.mark.parametrize(
    ("body", "param"),
    [(b"{not json", None), (b"[1, 2]", None), (b'{"model": "m", "input": 5}', "input"),
     (b'{"model": "m", "input": ["text"]}', "input")],
)
def test_bad_bodies_are_a_400_in_openai_shape(proxy, upstream: FakeUpstream,
                                              body: bytes, param: str | None) -> None:
    response = httpx.post(proxy.base_url + "/v1/responses", content=body,
                          headers={"content-type": "application/json", "X-User-Id": "u6"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert upstream.responses_requests() == []


def test_memory_off_and_the_control_header_stays_here(proxy, upstream: FakeUpstream) -> None:
    client = client_of(proxy)
    raw = client.responses.with_raw_response.create(
        model="m", input=FACT, extra_headers={"X-User-Id": "u7", "X-Memory-Mode": "off"}
    )
    assert raw.headers["x-memory-status"] == "skipped"
    sent = upstream.responses_requests()[0]
    assert sent.json["input"] == FACT  # the body as the caller sent it
    assert "x-memory-mode" not in sent.headers
    assert settled_jobs(proxy.base_url, "u7") and memories_of(proxy.base_url, "u7") == []


def test_truncated_stream_is_relayed_as_is_and_not_remembered(
    proxy, upstream: FakeUpstream
) -> None:
    upstream.truncate_after = 5  # two deltas, never response.completed
    response = httpx.post(
        proxy.base_url + "/v1/responses", json={"model": "m", "input": FACT, "stream": True},
        headers={"X-User-Id": "u8", "Authorization": f"Bearer {CALLER_KEY}"},
    )
    assert response.status_code == 200
    assert "response.output_text.delta" in response.text
    assert "response.completed" not in response.text
    assert settled_jobs(proxy.base_url, "u8") and memories_of(proxy.base_url, "u8") == []


def test_other_responses_routes_pass_through(proxy, upstream: FakeUpstream) -> None:
    for method, path in [("GET", "/v1/responses/resp_1"), ("DELETE", "/v1/responses/resp_1"),
                         ("GET", "/v1/responses/resp_1/input_items"),
                         ("POST", "/v1/responses/resp_1/cancel")]:
        httpx.request(method, proxy.base_url + path, headers={"X-User-Id": "u9"})
    seen = [(r.method, r.path) for r in upstream.requests]
    assert seen == [("GET", "/v1/responses/resp_1"), ("DELETE", "/v1/responses/resp_1"),
                    ("GET", "/v1/responses/resp_1/input_items"),
                    ("POST", "/v1/responses/resp_1/cancel")]


def test_the_callers_key_is_never_written_to_disk(
    proxy, upstream: FakeUpstream, settings: Settings
) -> None:
    client = client_of(proxy)
    client.responses.create(model="m", input=FACT, extra_headers={"X-User-Id": "u10"})
    for _ in client.responses.create(model="m", input="I like tea", stream=True,
                                     extra_headers={"X-User-Id": "u10"}):
        pass
    wait_until(lambda: len(memories_of(proxy.base_url, "u10")) == 2)
    assert upstream.responses_requests()[0].headers["authorization"] == f"Bearer {CALLER_KEY}"
    assert files_holding(settings.data_dir, CALLER_KEY.encode()) == []


def test_a_conversation_turn_is_the_query_and_the_turn_remembered(
    proxy, upstream: FakeUpstream
) -> None:
    client = client_of(proxy)
    client.responses.create(model="m", conversation="conv_1", input=FACT,
                            extra_headers={"X-User-Id": "u11"})
    assert wait_until(lambda: memories_of(proxy.base_url, "u11")) == [STORED_FACT]
    upstream.clear()
    client.responses.create(model="m", conversation={"id": "conv_1"},
                            input=[{"role": "user", "content": "Which database?"}],
                            extra_headers={"X-User-Id": "u11"})
    sent = upstream.responses_requests()[0].json
    assert sent["conversation"] == {"id": "conv_1"}
    assert "Postgres backend" in sent["input"][0]["content"]
    assert sent["input"][1:] == [{"role": "user", "content": "Which database?"}]
