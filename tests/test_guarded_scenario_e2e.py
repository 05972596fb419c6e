"""The README scenario end to end (openai SDK, real HTTP, real embedding model) against a model
that answers the way a real 1.5B model was seen to: first-person facts, the assistant's reply
and the prompt's annotations echoed as updates, "replaces" for anything it is asked about.
The guards keep the memory right: Next.js kept, Postgres forgotten, Paris current, Berlin in
history."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import openai
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream, last_user_text

from proxy.config import Settings

TURNS = [
    "I'm building this in Next.js with a Postgres backend",
    "What tech stack am I using?",
    "I live in Berlin, by the way.",
    "Big news: I just moved to Paris last week.",
    "Please forget that I use Postgres.",
]


class WeakModel:
    """Scripted on what the real model answered in the failing runs."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str:
        prompt = last_user_text(body)
        self.asked.append(prompt)
        if prompt.startswith("OLD:"):
            return json.dumps({"relation": "replaces"})
        if "user: I'm building this" in prompt:
            return json.dumps({"facts": [TURNS[0]]})  # stored verbatim, first person
        if "user: I live in Berlin" in prompt:
            return json.dumps({"operations": [
                {"op": "update", "id": 1,
                 "text": "You are using Next.js with a Postgres backend. Since 2026-12-01"},
                {"op": "add", "id": None, "text": "User lives in Berlin (since 2026-12-01)"},
            ]})
        if "user: I just moved to Paris" in prompt:  # "Big news: " is no fact
            return json.dumps({"facts": ["User lives in Paris"]})
        return '{"operations": [{"op": "delete", "id": 1'  # truncated: never asked, we hope


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.e2e
def test_readme_scenario_stays_right_with_a_weak_model(
    settings: Settings, upstream: FakeUpstream, start_proxy, real_embedder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings.extraction.mode = "llm"
    settings.jobs.poll_seconds = 0.05
    model = WeakModel()
    upstream.structured_reply = model
    proxy = start_proxy(settings, embedder=real_embedder)
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-caller")
    api = proxy.base_url + "/v1/memories"
    upstream.replies += [
        "Noted!", "You are using Next.js with a Postgres backend.", "Berlin is lovely.",
        "Congratulations!", "Done.",
    ]

    for n, text in enumerate(TURNS, 1):
        client.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": text}],
            extra_headers={"X-User-Id": "readme"},
        )
        wait_until(lambda n=n: metric(proxy.base_url, 'memproxy_jobs{state="done"}') == n)

    data = httpx.get(api, params={"user_id": "readme"}).json()["data"]
    assert sorted(m["memory"] for m in data) == [
        "User is building this in Next.js", "User lives in Paris",
    ]
    everything = httpx.get(api, params={"user_id": "readme", "include_superseded": "true"})
    berlin = [m for m in everything.json()["data"] if m["superseded_by"]]
    assert [m["memory"] for m in berlin] == ["User lives in Berlin"]
    history = httpx.get(f"{api}/{berlin[0]['id']}/history").json()["data"]
    assert [(e["event"], e["new_text"]) for e in history] == [
        ("ADD", "User lives in Berlin"), ("SUPERSEDE", "User lives in Paris"),
    ]

    # The question and the forget request needed no model; the Berlin and Paris turns one
    # facts call each, Paris one relation call (Berlin); Next.js was never asked about.
    assert len(model.asked) == 4 and model.asked[3].startswith("OLD: User lives in Berlin")
    guard = 'memproxy_extraction_guard_total{event="%s"}'
    assert metric(proxy.base_url, guard % "no_statement") == 1
    assert metric(proxy.base_url, guard % "rejected_not_grounded") == 1
    assert metric(proxy.base_url, guard % "forget_partial") == 1
    # litellm's per-call INFO lines stay out of the log.
    assert not [r for r in caplog.records if r.name.startswith("LiteLLM") and r.levelno < 30]
