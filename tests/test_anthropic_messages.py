"""POST /v1/messages through the official anthropic SDK, on its own upstream (anthropic.url)."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest
from conftest import wait_until
from dialect_checks import FACT, STORED_FACT, files_holding, memories_of, settled_jobs
from fake_apis import anthropic_error
from fake_upstream import FakeUpstream

from proxy.config import AnthropicSettings, Settings

CALLER_KEY = "sk-ant-caller-secret"
SYSTEM = [
    {"type": "text", "text": "You are Claude, a coding assistant."},
    {"type": "text", "text": "Long style guide …", "cache_control": {"type": "ephemeral"}},
]


@pytest.fixture
def proxy(settings: Settings, start_proxy):  # type: ignore[no-untyped-def]
    return start_proxy(settings)


def claude(proxy, **kwargs) -> anthropic.Anthropic:  # type: ignore[no-untyped-def]
    return anthropic.Anthropic(base_url=proxy.base_url, api_key=CALLER_KEY, max_retries=0,
                               **kwargs)


def ask(client: anthropic.Anthropic, text: str, user: str,  # type: ignore[no-untyped-def]
        headers: dict[str, str] | None = None, **kwargs):
    return client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=256,
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-User-Id": user, **(headers or {})}, **kwargs,
    )


def test_chat_completions_fact_goes_into_one_more_system_block(
    proxy, upstream: FakeUpstream
) -> None:
    openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-x").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": FACT}],
        extra_headers={"X-User-Id": "a1"},
    )
    wait_until(lambda: memories_of(proxy.base_url, "a1"))
    upstream.clear()
    raw = ask(claude(proxy), "Which database do I use?", "a1", system=SYSTEM,
              extra_body={"metadata": {"user_id": "ignored-header-wins"}})
    assert raw.headers["x-memory-status"] == "injected"
    message = raw.parse()
    assert message.content[0].text == "echo: Which database do I use?"
    sent = upstream.messages_requests()[0]
    # The caller's blocks, cache_control included, exactly as sent; then the memories.
    assert sent.json["system"][:2] == SYSTEM
    assert len(sent.json["system"]) == 3
    memories = sent.json["system"][2]
    assert memories["type"] == "text" and "cache_control" not in memories
    assert "<memories>" in memories["text"] and "Postgres backend" in memories["text"]
    assert sent.json["messages"] == [{"role": "user", "content": "Which database do I use?"}]
    # Anthropic's headers pass; the caller's key goes to the Anthropic upstream only, as sent
    # (this SDK sends a bearer token, older ones and curl x-api-key: see count_tokens below).
    assert CALLER_KEY in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "")[7:])
    assert sent.headers["anthropic-version"] == claude(proxy).default_headers["anthropic-version"]


def test_a_streamed_messages_fact_reaches_chat_completions_and_responses(
    proxy, upstream: FakeUpstream
) -> None:
    client = claude(proxy)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=256, system="Be kind.",
        messages=[{"role": "user", "content": [{"type": "text", "text": FACT}]}],
        metadata={"user_id": "a2"},  # Anthropic's body field identifies the user
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == f"echo: {FACT}" and final.stop_reason == "end_turn"
    assert upstream.messages_requests()[0].headers["anthropic-beta"] == (
        "prompt-caching-2024-07-31"
    )
    assert wait_until(lambda: memories_of(proxy.base_url, "a2")) == [STORED_FACT]

    upstream.clear()
    oa = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-x")
    oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "Stack?"}],
                               user="a2")
    oa.responses.create(model="m", input="Stack?", extra_headers={"X-User-Id": "a2"})
    chat, responses = upstream.chat_requests()[0].json, upstream.responses_requests()[0].json
    assert "Postgres backend" in chat["messages"][0]["content"]
    assert "Postgres backend" in responses["input"][0]["content"]

    # A string system prompt becomes the same text as a block, memories after it.
    upstream.clear()
    ask(client, "Stack?", "a2", system="Be kind.")
    system = upstream.messages_requests()[0].json["system"]
    assert system[0] == {"type": "text", "text": "Be kind."}
    assert "Postgres backend" in system[1]["text"]


def test_users_stay_apart_across_apis(proxy, upstream: FakeUpstream) -> None:
    client = claude(proxy)
    ask(client, FACT, "a3")
    wait_until(lambda: memories_of(proxy.base_url, "a3"))
    upstream.clear()
    raw = ask(client, "Which database do I use?", "a4")
    assert raw.headers["x-memory-status"] == "none"
    assert "Postgres" not in str(upstream.messages_requests()[0].json)
    assert "system" not in upstream.messages_requests()[0].json
    assert memories_of(proxy.base_url, "a4") == []


def test_stream_events_arrive_before_the_upstream_finishes(
    proxy, upstream: FakeUpstream
) -> None:
    upstream.chunk_delay = 0.3
    upstream.stream_chunks = 4
    started = time.monotonic()
    arrivals = []
    with claude(proxy).messages.stream(
        model="c", max_tokens=10, messages=[{"role": "user", "content": "hello, how are you"}],
        extra_headers={"X-User-Id": "a5"},
    ) as stream:
        for _ in stream.text_stream:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    assert arrivals[0] < arrivals[-1] - 0.6  # 10 events 0.3 s apart: not all at the end


def test_upstream_errors_pass_in_anthropics_shape_with_retry_after(
    proxy, upstream: FakeUpstream
) -> None:
    overloaded = anthropic_error("overloaded_error", "Overloaded")
    upstream.errors.append((529, overloaded, {"retry-after": "12"}))
    with pytest.raises(anthropic.APIStatusError) as raised:
        ask(claude(proxy), "hi", "a6")
    assert raised.value.status_code == 529
    assert raised.value.response.headers["retry-after"] == "12"
    assert raised.value.body == overloaded
    upstream.errors.append((429, anthropic_error("rate_limit_error", "slow down"),
                            {"retry-after": "3"}))
    with pytest.raises(anthropic.RateLimitError) as limited:
        ask(claude(proxy), "hi", "a6")
    assert limited.value.response.headers["retry-after"] == "3"
    assert settled_jobs(proxy.base_url, "a6") and memories_of(proxy.base_url, "a6") == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'"text"', b'{"model": "c", "max_tokens": 5}',
     b'{"model": "c", "messages": []}', b'{"model": "c", "messages": ["hi"]}',
     b'{"model": "c", "messages": [{"role": "user", "content": "x"}], "system": 5}'],
)
def test_bad_bodies_are_a_400_in_anthropics_shape(proxy, upstream: FakeUpstream,
                                                  body: bytes) -> None:
    response = httpx.post(proxy.base_url + "/v1/messages", content=body,
                          headers={"content-type": "application/json", "x-api-key": "k",
                                   "anthropic-version": "2023-06-01", "X-User-Id": "a7"})
    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error" and payload["error"]["message"]
    assert upstream.messages_requests() == []


def test_proxy_errors_on_this_route_are_in_anthropics_shape(
    proxy, upstream: FakeUpstream
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        ask(claude(proxy), "hi", "a8", headers={"X-Memory-Mode": "sometimes"})
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert "X-Memory-Mode" in raised.value.body["error"]["message"]


def test_memory_off_forwards_the_body_as_sent_and_stores_nothing(
    proxy, upstream: FakeUpstream
) -> None:
    raw = ask(claude(proxy), FACT, "a9", system=SYSTEM,
              headers={"X-Memory-Mode": "off"})
    assert raw.headers["x-memory-status"] == "skipped"
    sent = upstream.messages_requests()[0]
    assert sent.json["system"] == SYSTEM and "x-memory-mode" not in sent.headers
    assert settled_jobs(proxy.base_url, "a9") and memories_of(proxy.base_url, "a9") == []


def test_truncated_stream_is_not_remembered(proxy, upstream: FakeUpstream) -> None:
    upstream.truncate_after = 4  # message_start … one delta, never message_stop
    with claude(proxy).messages.stream(
        model="c", max_tokens=10, messages=[{"role": "user", "content": FACT}],
        extra_headers={"X-User-Id": "a10"},
    ) as stream:
        text = "".join(stream.text_stream)
    assert text and text != f"echo: {FACT}"  # what came before the cut, relayed
    assert settled_jobs(proxy.base_url, "a10") and memories_of(proxy.base_url, "a10") == []


def test_count_tokens_goes_to_the_anthropic_upstream(proxy, upstream: FakeUpstream) -> None:
    httpx.post(proxy.base_url + "/v1/messages/count_tokens", json={"model": "c"},
               headers={"x-api-key": CALLER_KEY, "anthropic-version": "2023-06-01"})
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/messages/count_tokens")
    assert sent.headers["x-api-key"] == CALLER_KEY


def test_the_callers_key_is_never_written_to_disk(
    proxy, upstream: FakeUpstream, settings: Settings
) -> None:
    client = claude(proxy)
    ask(client, FACT, "a11")
    with client.messages.stream(model="c", max_tokens=5, extra_headers={"X-User-Id": "a11"},
                                messages=[{"role": "user", "content": "I like tea"}]) as s:
        s.get_final_message()
    wait_until(lambda: len(memories_of(proxy.base_url, "a11")) == 2)
    assert files_holding(settings.data_dir, CALLER_KEY.encode()) == []


def test_a_configured_key_replaces_the_callers(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    operator = AnthropicSettings(url=settings.anthropic.url, api_key="sk-ant-operator")
    proxy = start_proxy(settings.model_copy(update={"anthropic": operator}))
    ask(anthropic.Anthropic(base_url=proxy.base_url, auth_token="caller-oauth", max_retries=0),
        "hi", "a12")
    sent = upstream.messages_requests()[0].headers
    assert sent["x-api-key"] == "sk-ant-operator" and "authorization" not in sent


def test_llm_extraction_of_a_messages_exchange_asks_the_anthropic_upstream(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    settings.extraction.mode = "llm"
    proxy = start_proxy(settings)
    ask(claude(proxy), f"Hi! {FACT}. Any tips?", "a13")
    stored = wait_until(lambda: memories_of(proxy.base_url, "a13"))
    assert stored == ["User is building this in Next.js with a Postgres backend"]
    calls = upstream.extraction_requests()
    assert calls and {(r.path, r.json["model"]) for r in calls} == {
        ("/v1/messages", "claude-sonnet-4-5")}
    # The caller's Anthropic key, to Anthropic only: nothing went to the OpenAI upstream.
    assert all(r.headers["x-api-key"] == CALLER_KEY for r in calls)
    assert not [r for r in upstream.requests if r.path == "/v1/chat/completions"]


def test_a_wrong_method_on_messages_is_answered_in_anthropics_shape(proxy) -> None:
    response = httpx.get(proxy.base_url + "/v1/messages")
    assert response.status_code == 405
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["allow"] == "POST"
