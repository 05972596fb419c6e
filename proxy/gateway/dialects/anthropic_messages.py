"""Anthropic Messages (``POST /v1/messages``), forwarded to ``anthropic.url``.

The query and the new user turn are the trailing ``user`` messages' text blocks (a user
message that only carries ``tool_result`` blocks is a tool turn: it ends the user turn). The
memory block is one more text block appended to ``system``: the caller's blocks, and their
``cache_control`` breakpoints, stay exactly as sent, so a cached prefix (tools + the caller's
system blocks) still hits; a string ``system`` becomes the equivalent one-block list. The
reply: the ``text`` blocks of ``content``; streamed, the ``text_delta`` of
``content_block_delta`` events, complete once ``message_stop`` arrived. Errors memproxy
raises itself on this route are in Anthropic's shape
(``{"type": "error", "error": {"type", "message"}}``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from proxy.errors import InvalidRequest, MethodNotAllowed, ProxyError
from proxy.gateway.dialects import item_tokens, without_items
from proxy.gateway.dialects.chat_completions import parse_json_object
from proxy.gateway.sse import JsonEventReader
from proxy.memory.retrieval import message_text
from proxy.memory.trimming import Turn

# litellm's provider prefix: extraction calls for these exchanges go to anthropic.url.
EXTRACTION_PREFIX = "anthropic/"
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _as_message(message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    content = message.get("content")
    if role == "user" and isinstance(content, list) and content and all(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    ):
        return {"role": "tool", "content": ""}
    return {"role": role, "content": message_text(content)}


class MessagesStreamAssembler:
    """The text of a streamed message, from its typed events."""

    def __init__(self) -> None:
        self._events = JsonEventReader()
        self._parts: list[str] = []
        self.stopped = False
        self.failed = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def complete(self) -> bool:
        return self.stopped and not self.failed

    def feed(self, data: bytes) -> None:
        for event in self._events.feed(data):
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta")
                if isinstance(delta, dict) and delta.get("type") == "text_delta":
                    text = delta.get("text")
                    if isinstance(text, str):
                        self._parts.append(text)
            elif kind == "message_stop":
                self.stopped = True
            elif kind == "error":
                self.failed = True


class AnthropicMessagesDialect:
    name = "anthropic_messages"
    upstream_path = "/v1/messages"
    uses_model_routes = False

    def parse(self, raw: bytes) -> dict[str, Any]:
        body = parse_json_object(raw)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages: must be a non-empty array", param="messages")
        if not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("messages: each item must be an object", param="messages")
        system = body.get("system")
        if system is not None and not (
            isinstance(system, str)
            or (isinstance(system, list) and all(isinstance(b, dict) for b in system))
        ):
            raise InvalidRequest("system: must be a string or an array of text blocks",
                                 param="system")
        return body

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return [_as_message(message) for message in body["messages"]]

    def inject(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        system = body.get("system")
        if isinstance(system, str):
            blocks: list[Any] = [{"type": "text", "text": system}] if system else []
        else:
            blocks = list(system or [])
        return {**body, "system": [*blocks, {"type": "text", "text": block}]}

    def inject_late(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        # Messages alternate user/assistant: the block is one more text block at the end of
        # the newest user message, after the caller's blocks, so a cache_control breakpoint
        # there still marks the very prefix the caller sent.
        messages: list[Any] = list(body["messages"])
        at = next((i for i in range(len(messages) - 1, -1, -1)
                   if _as_message(messages[i])["role"] == "user"), None)
        if at is None:
            return body
        content = messages[at].get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) \
            else list(content or [])
        messages[at] = {**messages[at], "content": [*blocks, {"type": "text", "text": block}]}
        return {**body, "messages": messages}

    def history(self, body: dict[str, Any], count: Callable[[str], int]) -> list[Turn]:
        turns = []
        for message in body["messages"]:
            plain = _as_message(message)
            role = str(plain["role"])
            turns.append(Turn(role, str(plain["content"]),
                              item_tokens(message, str(plain["content"]), count),
                              attached=role == "tool"))
        return turns

    def without(self, body: dict[str, Any], start: int, end: int) -> dict[str, Any]:
        return without_items(body, "messages", start, end)

    def wants_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    def reply_text(self, content: bytes) -> str | None:
        try:
            data = json.loads(content)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            return None
        return message_text(
            [b for b in data["content"] if isinstance(b, dict) and b.get("type") == "text"]
        )

    def stream_assembler(self) -> MessagesStreamAssembler:
        return MessagesStreamAssembler()

    def extraction_model(self, body: dict[str, Any]) -> str:
        return EXTRACTION_PREFIX + str(body.get("model", ""))

    def error_response(self, exc: ProxyError) -> Response:
        headers = {"Allow": ", ".join(exc.allow)} if isinstance(exc, MethodNotAllowed) else None
        return JSONResponse(
            anthropic_error_body(exc.status_code, exc.message),
            status_code=exc.status_code, headers=headers,
        )

    def auth_view(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """Anthropic clients send their key as ``x-api-key``: a proxy key (keys mode) or the
        admin key (refused) is looked for there too."""
        key = headers.get("x-api-key")
        if key is None or "authorization" in headers or not isinstance(headers, Headers):
            return headers
        return Headers(raw=[*headers.raw, (b"authorization", f"Bearer {key}".encode("latin-1"))])
