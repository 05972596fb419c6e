"""OpenAI Chat Completions (``POST /v1/chat/completions``).

The query and the new user turn are the trailing ``user`` messages; the memory block is one
system message right after the caller's leading system/developer messages (the caller's
prompt-cache prefix stays as it was); the reply is ``choices[0].message.content``, or the
``delta.content`` of choice 0 in a stream that ends with ``[DONE]`` or a finish reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from proxy import strict_json
from proxy.errors import InvalidRequest
from proxy.gateway.dialects import OpenAIShaped, item_tokens, without_items
from proxy.gateway.sse import ChatStreamAssembler
from proxy.memory.injection import inject_memory_block
from proxy.memory.retrieval import message_text
from proxy.memory.trimming import Turn


def parse_json_object(raw: bytes) -> dict[str, Any]:
    body = strict_json.parse(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def newest_user_turn(items: list[Any], is_user: Callable[[Any], bool]) -> int:
    """Where the trailing run of user items starts (the new user turn); the end if none."""
    at = len(items)
    while at > 0 and is_user(items[at - 1]):
        at -= 1
    if at == len(items):  # the last item is not the user's: place before the last user item
        at = next((i for i in range(len(items) - 1, -1, -1) if is_user(items[i])), len(items))
    return at


class ChatCompletionsDialect(OpenAIShaped):
    name = "chat_completions"
    upstream_path = "/chat/completions"
    uses_model_routes = True

    def parse(self, raw: bytes) -> dict[str, Any]:
        body = parse_json_object(raw)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", param="messages")
        if not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("each item of 'messages' must be an object", param="messages")
        return body

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = body["messages"]
        return messages

    def inject(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        messages, _ = inject_memory_block(body["messages"], block)
        return {**body, "messages": messages}

    def inject_late(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        messages: list[Any] = body["messages"]
        at = newest_user_turn(messages, lambda m: m.get("role") == "user")
        late = {"role": "system", "content": block}
        return {**body, "messages": [*messages[:at], late, *messages[at:]]}

    def history(self, body: dict[str, Any], count: Callable[[str], int]) -> list[Turn]:
        turns = []
        for message in body["messages"]:
            role = str(message.get("role"))
            text = message_text(message.get("content"))
            turns.append(Turn(role, text, item_tokens(message, text, count),
                              attached=role in ("tool", "function")))
        return turns

    def without(self, body: dict[str, Any], start: int, end: int) -> dict[str, Any]:
        return without_items(body, "messages", start, end)

    def reply_text(self, content: bytes) -> str | None:
        try:
            data = json.loads(content)
            text = data["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
        return message_text(text)

    def stream_assembler(self) -> ChatStreamAssembler:
        return ChatStreamAssembler()
