"""The README scenario end to end: real embedding model, real Chroma, official SDK."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream

from proxy.config import Settings

FACT = "I'm building this in Next.js with a Postgres backend"


def memories_of(base_url: str, user_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base_url}/v1/memories", params={"user_id": user_id})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def injected_block(request_json: dict[str, Any]) -> str | None:
    blocks = [
        m["content"]
        for m in request_json["messages"]
        if m["role"] == "system" and "<memories>" in str(m["content"])
    ]
    assert len(blocks) <= 1
    return blocks[0] if blocks else None


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["raw", "llm"])
def test_new_conversation_gets_the_fact_and_other_users_do_not(
    mode: str, settings: Settings, upstream: FakeUpstream, start_proxy, real_embedder
) -> None:
    settings.extraction.mode = mode  # type: ignore[assignment]
    proxy = start_proxy(settings, embedder=real_embedder)
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-caller-key")

    first = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are a helpful coding assistant."},
            {"role": "user", "content": f"Hi! {FACT}. Any tips?"},
        ],
        extra_headers={"X-User-Id": "user_42"},
    )
    assert first.headers["x-memory-status"] == "none"
    assert first.parse().choices[0].message.content.startswith("echo: Hi!")

    stored = wait_until(lambda: memories_of(proxy.base_url, "user_42"))
    texts = [m["memory"] for m in stored]
    if mode == "llm":
        assert texts == ["User is building this in Next.js with a Postgres backend"]
        extraction = upstream.extraction_requests()[0].json
        assert extraction["response_format"]["type"] == "json_schema"
        # The caller's system prompt is never a source of facts.
        assert "helpful coding assistant" not in str(extraction["messages"])
    else:
        assert texts == [f"{FACT}."]  # the statement; not the greeting, not the question

    upstream.clear()
    second = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What tech stack am I using?"}],
        user="user_42",  # the OpenAI body field identifies the user too
    )
    assert second.headers["x-memory-status"] == "injected"
    assert second.headers["x-memory-injected"] == "1"
    block = injected_block(upstream.chat_requests()[0].json)
    assert block is not None and "Next.js with a Postgres backend" in block

    upstream.clear()
    other = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What tech stack am I using?"}],
        extra_headers={"X-User-Id": "user_43"},
    )
    assert other.headers["x-memory-status"] == "none"
    sent = upstream.chat_requests()[0].json
    assert injected_block(sent) is None
    assert "Next.js" not in str(sent)
    assert all("Next.js" not in m["memory"] for m in memories_of(proxy.base_url, "user_43"))


@pytest.mark.e2e
@pytest.mark.anyio
async def test_streamed_exchange_is_remembered_and_injected(
    settings: Settings, upstream: FakeUpstream, start_proxy, real_embedder
) -> None:
    proxy = start_proxy(settings, embedder=real_embedder)
    client = openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key="sk-caller-key")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": FACT}],
        stream=True,
        extra_headers={"X-User-Id": "user_42"},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == f"echo: {FACT}"
    wait_until(lambda: memories_of(proxy.base_url, "user_42"))

    upstream.clear()
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Which database do I use?"}],
        stream=True,
        extra_headers={"X-User-Id": "user_42"},
    )
    async for _ in stream:
        pass
    block = injected_block(upstream.chat_requests()[0].json)
    assert block is not None and "Postgres" in block
