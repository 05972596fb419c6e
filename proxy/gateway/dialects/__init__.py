"""API dialects: what one chat API looks like to the memory flow (proxy/gateway/flow.py).

A dialect knows only its API:
- ``parse``: the request body, checked just enough to find the conversation (a bad body is
  an ``InvalidRequest`` — rendered by ``error_response`` in the API's own error shape);
- ``conversation``: the request's turns as chat-shaped text messages (``{"role", "content"}``:
  the query, the new user turn and the exchange's identity are read from them);
- ``inject``: the body with the memory block placed where this API keeps instructions;
- ``inject_late``: the body with a per-turn block at the newest user turn, where a block that
  changes every turn breaks no cached prefix (proxy/gateway/shaping.py);
- ``history`` / ``without``: the request's own history as trimmable turns, and the body with
  a range of them left out (proxy/memory/trimming.py);
- ``reply_text`` / ``stream_assembler``: the assistant's answer from a body or a stream;
- ``upstream_path``: where the body goes under its upstream's base URL;
- ``auth_view``: the request's headers with the caller's key where proxy auth looks for it.

Adding an API is one module here and its tests: the flow does not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from starlette.responses import Response

from proxy.errors import ProxyError
from proxy.memory.trimming import Turn


class StreamAssembler(Protocol):
    """Fed the raw bytes of a streamed answer as they pass; never alters or holds them."""

    def feed(self, data: bytes) -> None: ...

    @property
    def text(self) -> str: ...

    @property
    def complete(self) -> bool: ...


class Dialect(Protocol):
    name: str
    upstream_path: str
    # Model names listed under `models:` go through litellm (the chat completions API only).
    uses_model_routes: bool

    def parse(self, raw: bytes) -> dict[str, Any]: ...

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]: ...

    def inject(self, body: dict[str, Any], block: str) -> dict[str, Any]: ...

    def inject_late(self, body: dict[str, Any], block: str) -> dict[str, Any]: ...

    def history(self, body: dict[str, Any], count: Callable[[str], int]) -> list[Turn]: ...

    def without(self, body: dict[str, Any], start: int, end: int) -> dict[str, Any]: ...

    def wants_stream(self, body: dict[str, Any]) -> bool: ...

    def reply_text(self, content: bytes) -> str | None: ...

    def stream_assembler(self) -> StreamAssembler: ...

    def extraction_model(self, body: dict[str, Any]) -> str: ...

    def error_response(self, exc: ProxyError) -> Response: ...

    def auth_view(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """The headers as proxy keys and the admin-key check read them (``Authorization``)."""
        ...


def item_tokens(item: Any, text: str, count: Callable[[str], int]) -> int:
    """Tokens of one history item: its text, or its JSON when it carries more than text."""
    if isinstance(item, dict) and isinstance(item.get("content"), str) and len(item) <= 2:
        return count(text)
    return count(json.dumps(item, ensure_ascii=False, default=str))


class OpenAIShaped:
    """What the OpenAI-shaped dialects share: ``stream: true`` streams, the request's model
    extracts, errors in OpenAI's shape, the key in ``Authorization``."""

    def wants_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    def extraction_model(self, body: dict[str, Any]) -> str:
        return str(body.get("model", ""))

    def error_response(self, exc: ProxyError) -> Response:
        return exc.to_response()

    def auth_view(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        return headers


def without_items(body: dict[str, Any], key: str, start: int, end: int) -> dict[str, Any]:
    """The body with ``body[key][start:end]`` left out (the caller's list is not changed)."""
    items = body[key]
    return {**body, key: [*items[:start], *items[end:]]}
