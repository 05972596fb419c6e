"""Checks and a shared proxy for the HTTP-level tests (chat_http, passthrough, bad_input)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
from conftest import HashingEmbedder, wait_until
from fake_upstream import FakeUpstream
from servers import ThreadedServer

from proxy.app import create_app
from proxy.config_sources import load_settings

CHAT_PATH = "/v1/chat/completions"
BLOCK_MARK = "<memories>"


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """``response`` is an error in OpenAI's shape: {"error": {"message", "type", "code"}}."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    if code is not None:
        assert error["code"] == code, error


def sdk(base_url: str, api_key: str = "sk-test", **kwargs: Any) -> openai.OpenAI:
    """The official client, no retries: every status the proxy answers is seen as is."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, **kwargs)


def chat(base_url: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(base_url + CHAT_PATH, json=body, headers=headers, timeout=10)


def seed(base_url: str, user_id: str, text: str) -> None:
    """Store ``text`` for the user (raw extraction keeps a statement verbatim)."""
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    response = chat(base_url, body, **{"X-User-Id": user_id})
    assert response.status_code == 200, response.text
    wait_until(lambda: text in memories_of(base_url, user_id), timeout=10)


def forwarded_chats(upstream: FakeUpstream) -> list[Any]:
    """Chat requests the upstream received (chat_requests() would hide a client's own
    response_format json_schema request, taking it for an extraction call)."""
    return [r for r in upstream.requests if r.is_chat]


def memories_of(base_url: str, user_id: str) -> list[str]:
    response = httpx.get(f"{base_url}/v1/memories", params={"user_id": user_id})
    assert response.status_code == 200, response.text
    return [m["memory"] for m in response.json()["data"]]


def injected_positions(body: dict[str, Any]) -> list[int]:
    """Indexes of the messages that hold memproxy's memory block."""
    return [
        i
        for i, message in enumerate(body["messages"])
        if message.get("role") in ("system", "developer") and BLOCK_MARK in str(message["content"])
    ]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def shared_proxy(data_dir: Path, **overrides: Any) -> Iterator[tuple[ThreadedServer, FakeUpstream]]:
    """A fake upstream and a proxy in front of it, for a module's tests that can share one.

    Starting and stopping the pair costs ~0.5 s; tests that only need distinct users (and
    clear ``upstream`` first) share it. Anything needing fresh settings, metrics or store
    uses ``start_proxy``.
    """
    with FakeUpstream() as upstream:
        settings = load_settings(
            None,
            environ={},
            overrides={
                "data_dir": str(data_dir),
                "upstream.url": upstream.url,
                "anthropic.url": upstream.url,  # the fake speaks /v1/messages too
                "upstream.connect_timeout": 2.0,
                "extraction.mode": "raw",
                "store.shards": 4,
                **overrides,
            },
        )
        with ThreadedServer(create_app(settings, embedder=HashingEmbedder())) as proxy:
            yield proxy, upstream


def reset(upstream: FakeUpstream) -> FakeUpstream:
    """Forget recorded traffic and put every knob back to its default."""
    upstream.clear()
    upstream.replies.clear()
    upstream.structured_replies.clear()
    upstream.errors.clear()
    upstream.chunk_delay = upstream.response_delay = upstream.extraction_delay = 0.0
    upstream.stream_chunks = 5
    return upstream
