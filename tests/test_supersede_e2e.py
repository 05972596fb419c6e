"""End to end with the real embedding model and the openai SDK: a moved user's old city is
superseded (kept in history), and a new conversation gets the new city injected, not the old."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream, default_extract_facts, last_user_text, relation_pair

from proxy.config import Settings


def facts(body: dict[str, Any]) -> list[str]:
    if "user: I moved to Paris" in last_user_text(body):
        return ["User lives in Paris"]
    return default_extract_facts(body)


def judge(body: dict[str, Any]) -> str:
    """The fake LLM's judgement: a move replaces the old city."""
    old, new = relation_pair(body)
    return "replaces" if "Berlin" in old and "Paris" in new else "separate"


def chat(client: openai.OpenAI, text: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}],
        extra_headers={"X-User-Id": "mover"},
    )


@pytest.mark.e2e
def test_moving_supersedes_the_old_city(
    settings: Settings, upstream: FakeUpstream, start_proxy, real_embedder
) -> None:
    settings.extraction.mode = "llm"
    upstream.extract_facts = facts
    upstream.judge_relation = judge
    proxy = start_proxy(settings, embedder=real_embedder)
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-caller")
    api = proxy.base_url + "/v1/memories"

    chat(client, "I live in Berlin")
    wait_until(lambda: httpx.get(api, params={"user_id": "mover"}).json()["data"])
    chat(client, "I moved to Paris last month")

    def current() -> list[str]:
        data = httpx.get(api, params={"user_id": "mover"}).json()["data"]
        return [m["memory"] for m in data]

    wait_until(lambda: current() == ["User lives in Paris"])
    everything = httpx.get(api, params={"user_id": "mover", "include_superseded": "true"})
    berlin = next(m for m in everything.json()["data"] if "Berlin" in m["memory"])
    assert berlin["superseded_by"] and berlin["valid_to"]
    history = httpx.get(f"{api}/{berlin['id']}/history").json()["data"]
    assert [e["event"] for e in history] == ["ADD", "SUPERSEDE"]
    assert history[1]["new_text"] == "User lives in Paris"
    assert history[1]["actor"].startswith("job:")

    upstream.clear()
    answer = chat(client, "Where do I live these days?")
    assert answer.headers["x-memory-status"] == "injected"
    block = next(m["content"] for m in upstream.chat_requests()[0].json["messages"]
                 if m["role"] == "system" and "<memories>" in m["content"])
    assert "User lives in Paris" in block and "Berlin" not in block
