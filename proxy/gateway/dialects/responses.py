"""OpenAI Responses (``POST /v1/responses``).

``input`` is a string (one user message) or a list of items: messages with text parts, and
items the model or tools produced (``function_call``, ``function_call_output``, reasoning …),
which end a user turn like assistant and tool messages do. With ``previous_response_id`` or
``conversation`` the history lives at the provider and ``input`` holds only the new turn: it
is the turn to remember and the query.

Placement: ``instructions`` is left exactly as the caller wrote it (it is the start of the
prompt, so the caller's prompt-cache prefix is kept), and the memory block is one
``developer`` message item in ``input``, right after the input's own leading system/developer
items. A string ``input`` becomes the equivalent list ``[memories, {"role": "user", …}]``.
With ``previous_response_id`` the new input follows the stored history, so the block lands
late in the prompt, where a per-turn addition belongs. Every other field (``tools``,
``text.format``, ``store``, ``reasoning`` …) is passed on untouched.

The reply: the ``output_text`` parts of the ``message`` items in ``output``; streamed, the
``response.output_text.delta`` events, complete once ``response.completed`` (or
``response.incomplete``) arrived.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from proxy.errors import InvalidRequest
from proxy.gateway.dialects import OpenAIShaped, item_tokens, without_items
from proxy.gateway.dialects.chat_completions import newest_user_turn, parse_json_object
from proxy.gateway.sse import JsonEventReader
from proxy.memory.retrieval import message_text
from proxy.memory.trimming import Turn

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
LEADING_ROLES = ("system", "developer")
FINISHED = ("completed", "incomplete")


def _item_as_message(item: dict[str, Any]) -> dict[str, Any] | None:
    """An input item as a chat-shaped message (text only), or None for a reference."""
    kind = item.get("type")
    role = item.get("role")
    if (kind is None or kind == "message") and role in MESSAGE_ROLES:
        return {"role": role, "content": message_text(item.get("content"))}
    if kind == "item_reference":
        return None
    if isinstance(kind, str) and kind.endswith("_output"):
        return {"role": "tool", "content": ""}  # function_call_output and the like
    return {"role": "assistant", "content": ""}  # function_call, reasoning, tool calls …


def _output_text(response: Any) -> str | None:
    if not isinstance(response, dict):
        return None
    texts: list[str] = []
    for item in response.get("output") or []:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "output_text":
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
    return "".join(texts) if texts else None


def _input_items(body: dict[str, Any]) -> list[Any]:
    raw = body.get("input")
    return [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])


def _is_user_item(item: Any) -> bool:
    return item.get("type", "message") == "message" and item.get("role") == "user"


class ResponsesStreamAssembler:
    """The text of a streamed response, from its typed events."""

    def __init__(self) -> None:
        self._events = JsonEventReader()
        self._parts: list[str] = []
        self._final: str | None = None
        self.finished = False
        self.failed = False

    @property
    def text(self) -> str:
        return self._final if self._final is not None else "".join(self._parts)

    @property
    def complete(self) -> bool:
        return self.finished and not self.failed

    def feed(self, data: bytes) -> None:
        for event in self._events.feed(data):
            kind = event.get("type")
            if kind == "response.output_text.delta":
                delta = event.get("delta")
                if isinstance(delta, str):
                    self._parts.append(delta)
            elif kind in ("response.completed", "response.incomplete"):
                self.finished = True
                self._final = _output_text(event.get("response"))
            elif kind in ("response.failed", "error"):
                self.failed = True


class ResponsesDialect(OpenAIShaped):
    name = "responses"
    upstream_path = "/responses"
    uses_model_routes = False

    def parse(self, raw: bytes) -> dict[str, Any]:
        body = parse_json_object(raw)
        items = body.get("input")
        if items is not None and not isinstance(items, str | list):
            raise InvalidRequest(
                "'input' must be a string or an array of input items", param="input"
            )
        if isinstance(items, list) and not all(isinstance(item, dict) for item in items):
            raise InvalidRequest("each item of 'input' must be an object", param="input")
        return body

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        items = body.get("input")
        if isinstance(items, str):
            messages = [{"role": "user", "content": items}]
        else:
            found = (_item_as_message(item) for item in items or [])
            messages = [m for m in found if m is not None]
        # The stored history this input continues: part of what makes the exchange unique.
        context = {
            key: body[key] for key in ("previous_response_id", "conversation")
            if body.get(key) is not None
        }
        return [{"role": "context", "content": context}, *messages] if context else messages

    def inject(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        raw = body.get("input")
        items: list[Any] = (
            [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])
        )
        position = 0
        role = "developer"
        while position < len(items):
            item = items[position]
            if item.get("type", "message") != "message" or item.get("role") not in LEADING_ROLES:
                break
            role = item["role"]
            position += 1
        memories = {"type": "message", "role": role, "content": block}
        return {**body, "input": [*items[:position], memories, *items[position:]]}

    def inject_late(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        items = _input_items(body)
        at = newest_user_turn(items, _is_user_item)
        late = {"type": "message", "role": "developer", "content": block}
        return {**body, "input": [*items[:at], late, *items[at:]]}

    def history(self, body: dict[str, Any], count: Callable[[str], int]) -> list[Turn]:
        if not isinstance(body.get("input"), list):
            return []  # a string input is only the new turn: nothing to leave out
        turns = []
        for item in body["input"]:
            message = _item_as_message(item) or {"role": "assistant", "content": ""}
            role = str(message["role"])
            turns.append(Turn(role, str(message["content"]),
                              item_tokens(item, str(message["content"]), count),
                              attached=role == "tool"))
        return turns

    def without(self, body: dict[str, Any], start: int, end: int) -> dict[str, Any]:
        return without_items({**body, "input": _input_items(body)}, "input", start, end)

    def reply_text(self, content: bytes) -> str | None:
        try:
            data = json.loads(content)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("status", "completed") not in FINISHED:
            return None  # background: true answers "queued" — there is no reply yet
        return _output_text(data)

    def stream_assembler(self) -> ResponsesStreamAssembler:
        return ResponsesStreamAssembler()
