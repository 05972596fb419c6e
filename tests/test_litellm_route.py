"""Model names under `models:` go through litellm, translated to and from the OpenAI format."""

from __future__ import annotations

import openai
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream

from proxy.config import ModelRoute, Settings


@pytest.fixture
def routed(settings: Settings, upstream: FakeUpstream) -> Settings:
    # litellm's OpenAI provider pointed at the fake: the route, not the provider, is under test.
    settings.models["my-claude"] = ModelRoute(
        model="openai/fake-provider-model", api_key="sk-route-key", api_base=upstream.url
    )
    return settings


def test_routed_model_non_streaming_and_streaming(
    routed: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    proxy = start_proxy(routed)
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-caller", max_retries=0)
    headers = {"X-User-Id": "user_42"}
    reply = client.chat.completions.with_raw_response.create(
        model="my-claude", messages=[{"role": "user", "content": "I'm a rust developer"}],
        extra_headers=headers,
    )
    completion = reply.parse()
    assert completion.choices[0].message.content == "echo: I'm a rust developer"
    assert completion.model == "my-claude"  # the client sees the name it asked for
    assert reply.headers["x-memory-status"] == "none"
    sent = upstream.chat_requests()[0]
    assert sent.json["model"] == "fake-provider-model"
    assert sent.headers["authorization"] == "Bearer sk-route-key"  # the route's own key
    wait_until(lambda: upstream.chat_requests() and proxy_memories(proxy.base_url))

    upstream.clear()
    stream = client.chat.completions.create(
        model="my-claude", messages=[{"role": "user", "content": "What language do I use?"}],
        stream=True, stream_options={"include_usage": True}, extra_headers=headers,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: What language do I use?"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert any(c.usage is not None for c in chunks)
    forwarded = upstream.chat_requests()[0].json["messages"]
    assert "rust developer" in forwarded[0]["content"] and forwarded[0]["role"] == "system"


def test_routed_provider_errors_keep_their_status(
    routed: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    proxy = start_proxy(routed)
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-caller", max_retries=0)
    upstream.errors += [
        (400, {"error": {"message": "bad thing", "type": "invalid_request_error"}}, {})
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="my-claude", messages=[{"role": "user", "content": "hi"}]
        )
    assert "bad thing" in caught.value.message


def proxy_memories(base_url: str) -> list[object]:
    import httpx

    return httpx.get(base_url + "/v1/memories", params={"user_id": "user_42"}).json()["data"]
