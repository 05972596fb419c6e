"""Server-sent events: tees that read a stream as it passes (never altering or holding it)."""

from __future__ import annotations

import json
from typing import Any


class ChatStreamAssembler:
    """Fed the raw bytes of a chat-completions SSE stream; never alters or holds them.

    Collects the text of choice 0 and whether the stream ended with ``[DONE]`` or a
    finish_reason, so extraction runs only on complete answers.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._parts: list[str] = []
        self.finished = False
        self.done = False
        self.usage: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def complete(self) -> bool:
        return self.done or self.finished

    def feed(self, data: bytes) -> None:
        self._buffer += data.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            self._event(event)

    def _event(self, event: bytes) -> None:
        payload = b"\n".join(
            line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not payload:
            return
        if payload.strip() == b"[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            return
        if not isinstance(chunk, dict):
            return
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self._parts.append(content)
            if choice.get("finish_reason"):
                self.finished = True


def encode_event(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class JsonEventReader:
    """Splits raw SSE bytes into the JSON objects of their ``data:`` lines, as they complete.

    For streams whose events are typed objects (the Responses and Anthropic Messages APIs);
    an event that is not a JSON object is skipped.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data.replace(b"\r\n", b"\n")
        events: list[dict[str, Any]] = []
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            payload = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            try:
                parsed = json.loads(payload) if payload else None
            except ValueError:
                continue
            if isinstance(parsed, dict):
                events.append(parsed)
        return events
