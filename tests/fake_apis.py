"""The OpenAI Responses and Anthropic Messages APIs as tests/fake_upstream.py speaks them.

Bodies and SSE events follow the real formats (field names, event names, order), so the
official ``openai`` and ``anthropic`` SDKs parse them as they would a provider's.
"""

from __future__ import annotations

import json
import time
from typing import Any

ANTHROPIC_MESSAGES_PATH = "/v1/messages"
RESPONSES_PATH = "/v1/responses"


def part_text(content: Any) -> str:
    """A string, or the text parts of a content list (input_text, output_text, text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def responses_last_user_text(body: dict[str, Any]) -> str:
    items = body.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("role") == "user":
            return part_text(item.get("content"))
    return ""


def messages_last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return part_text(message.get("content"))
    return ""


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


# ----- OpenAI Responses ------------------------------------------------------------------


def response_object(
    response_id: str, body: dict[str, Any], text: str | None, status: str
) -> dict[str, Any]:
    output = [] if text is None else [{
        "type": "message", "id": f"msg_{response_id}", "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }]
    words_in = len(responses_last_user_text(body).split())
    words_out = len((text or "").split())
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()),
        "status": status, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": None,
        "model": str(body.get("model") or "fake-model"), "output": output,
        "parallel_tool_calls": True, "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True),
        "temperature": 1.0, "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": body.get("tools") or [], "top_p": 1.0,
        "truncation": "disabled", "user": body.get("user"), "metadata": {},
        "usage": {
            "input_tokens": words_in, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": words_out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": words_in + words_out,
        },
    }


def responses_events(
    response_id: str, body: dict[str, Any], pieces: list[str]
) -> list[str]:
    text = "".join(pieces)
    item_id = f"msg_{response_id}"
    started = response_object(response_id, body, None, "in_progress")
    item = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
            "content": []}
    empty_part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {"type": "output_text", "text": text, "annotations": []}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {"item_id": item_id, "output_index": 0,
                                         "content_index": 0, "part": empty_part}),
        *(("response.output_text.delta", {"item_id": item_id, "output_index": 0,
                                          "content_index": 0, "delta": piece,
                                          "logprobs": []}) for piece in pieces),
        ("response.output_text.done", {"item_id": item_id, "output_index": 0,
                                       "content_index": 0, "text": text, "logprobs": []}),
        ("response.content_part.done", {"item_id": item_id, "output_index": 0,
                                        "content_index": 0, "part": done_part}),
        ("response.output_item.done", {"output_index": 0, "item": {
            **item, "status": "completed", "content": [done_part]}}),
        ("response.completed", {"response": response_object(response_id, body, text,
                                                             "completed")}),
    ]
    return [sse(kind, {"type": kind, "sequence_number": n, **data})
            for n, (kind, data) in enumerate(events)]


# ----- Anthropic Messages ------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def message_object(message_id: str, body: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": message_id, "type": "message", "role": "assistant",
        "model": str(body.get("model") or "claude-fake"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": len(messages_last_user_text(body).split()),
                  "output_tokens": len(text.split())},
    }


def messages_events(message_id: str, body: dict[str, Any], pieces: list[str]) -> list[str]:
    start = {**message_object(message_id, body, ""), "content": [], "stop_reason": None}
    start["usage"] = {**start["usage"], "output_tokens": 1}
    events = [
        sse("message_start", {"type": "message_start", "message": start}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}),
        sse("ping", {"type": "ping"}),
        *(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": piece}})
          for piece in pieces),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": len("".join(pieces).split())}}),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return events
