"""Both upstream transports (upstream.transport: aiohttp, the default, and httpx's own) relay
the same bytes: bodies, repeated headers, streams, and header bytes that are no UTF-8."""

from __future__ import annotations

import httpx
import pytest
from fake_upstream import FakeUpstream

from proxy.config import Settings

MESSAGES = [{"role": "user", "content": "Hello there, how are you today?"}]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_each_transport_relays_chats_streams_and_raw_header_bytes(
    transport: str, settings: Settings, upstream: FakeUpstream, start_proxy,
) -> None:
    settings.upstream.transport = transport  # type: ignore[assignment]
    proxy = start_proxy(settings)
    plain = httpx.post(proxy.base_url + "/v1/chat/completions",
                       json={"model": "m", "messages": MESSAGES})
    assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", proxy.base_url + "/v1/chat/completions",
                      json={"model": "m", "messages": MESSAGES, "stream": True}) as streamed:
        body = b"".join(streamed.iter_raw())
    assert streamed.status_code == 200 and body.rstrip().endswith(b"data: [DONE]")
    models = httpx.get(proxy.base_url + "/v1/models",
                       headers=[(b"x-trace", b"caf\xe9"), (b"x-name", "zoë".encode())])
    assert models.status_code == 200
    seen = upstream.requests[-1].headers
    assert seen["x-trace"].encode("latin-1") == b"caf\xe9"
    assert seen["x-name"].encode("latin-1") == "zoë".encode()
