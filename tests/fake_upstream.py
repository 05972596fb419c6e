"""A small OpenAI-compatible fake LLM server for tests.

It speaks real HTTP (uvicorn on a loopback port, in a background thread) and real
SSE, so the proxy under test exercises the same client code paths as in production.
Behaviour is steered by plain public attributes (queues, delays, a callable) that a
test sets before making its request.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import itertools
import json
import re
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fake_apis import (
    ANTHROPIC_MESSAGES_PATH,
    RESPONSES_PATH,
    anthropic_error,
    message_object,
    messages_events,
    messages_last_user_text,
    response_object,
    responses_events,
    responses_last_user_text,
)
from servers import ThreadedServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CHAT_PATH = "/v1/chat/completions"
# A chat call asking for one of these is a structured-output (memory extraction) call.
STRUCTURED_TYPES = ("json_schema", "json_object")
EMBEDDING_DIMS = 8
# Sentence openers the default extraction rule rewrites into third person. Order
# matters: "I am " must be tried before its prefix "I ".
FIRST_PERSON_PREFIXES = (
    ("I'm ", "User is "),
    ("I am ", "User is "),
    ("My ", "User's "),
    ("I ", "User "),
)
# Split on sentence punctuation only when followed by whitespace or the end, so that
# "Next.js" or "3.5" survive as one sentence.
SENTENCE_END = re.compile(r"[.!?]+(?:\s+|$)")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # keys lowercase, as Starlette normalises them
    body: bytes
    json: Any  # parsed body, or None when empty or not JSON

    @property
    def is_chat(self) -> bool:
        return self.method == "POST" and self.path == CHAT_PATH

    @property
    def is_extraction(self) -> bool:
        if not isinstance(self.json, dict):
            return False
        if (self.method, self.path) == ("POST", ANTHROPIC_MESSAGES_PATH):
            return _is_anthropic_structured(self.json)
        return self.is_chat and _is_structured(self.json)


def _is_structured(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in STRUCTURED_TYPES


def _is_anthropic_structured(body: dict[str, Any]) -> bool:
    """A Messages call with structured output (litellm sends response_format this way)."""
    output_format = body.get("output_format")
    return isinstance(output_format, dict) and output_format.get("type") == "json_schema"


def _as_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """A structured Messages call in chat form, for the extraction stand-ins below."""
    system = body.get("system")
    system_text = system if isinstance(system, str) else message_text({"content": system})
    schema = (body.get("output_format") or {}).get("schema") or {}
    return {
        "messages": [{"role": "system", "content": system_text}, *body.get("messages", [])],
        "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
    }


def _asks_relation(body: dict[str, Any]) -> bool:
    """memproxy's relation call (OLD fact vs NEW fact → one word), by its schema or prompt."""
    response_format = body.get("response_format") or {}
    schema = json.dumps(response_format.get("json_schema") or {})
    prompt = " ".join(
        message_text(m) for m in body.get("messages") or []
        if isinstance(m, dict) and m.get("role") == "system"
    )
    return '"relation"' in schema or '"relation"' in prompt


def relation_pair(body: dict[str, Any]) -> tuple[str, str]:
    """The OLD and NEW facts a relation call compares."""
    prompt = last_user_text(body)
    old = re.search(r"^OLD: (.*)$", prompt, re.MULTILINE)
    new = re.search(r"^NEW: (.*)$", prompt, re.MULTILINE)
    return (old.group(1) if old else "", new.group(1) if new else "")


def default_relation(body: dict[str, Any]) -> str:
    """A cautious judge: the same words are "same", anything else "separate"."""
    old, new = (re.sub(r"\W+", " ", fact.casefold()).strip() for fact in relation_pair(body))
    return "same" if old == new else "separate"


def message_text(message: dict[str, Any]) -> str:
    """Text of a message: string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def default_extract_facts(body: dict[str, Any]) -> list[str]:
    """Deterministic stand-in for an LLM extracting facts from a transcript.

    Only "user:" lines of the last user message count; first-person sentences are
    rewritten in third person and anything else is treated as chit-chat.
    """
    facts: list[str] = []
    for raw_line in last_user_text(body).splitlines():
        line = raw_line.strip()
        if not line.lower().startswith("user:"):
            continue
        for raw_sentence in SENTENCE_END.split(line[len("user:") :]):
            sentence = raw_sentence.strip()
            for prefix, replacement in FIRST_PERSON_PREFIXES:
                if sentence.startswith(prefix):
                    facts.append(replacement + sentence[len(prefix) :])
                    break
    return facts


def _word_count(text: str) -> int:
    return len(text.split())


def _split_evenly(text: str, pieces: int) -> list[str]:
    """Split text into at most `pieces` contiguous, roughly equal, non-empty parts."""
    n = max(1, min(pieces, len(text)))
    bounds = [len(text) * i // n for i in range(n + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(n)] or [""]


def _embedding(item: Any) -> list[float]:
    # Hashing keeps vectors deterministic across runs and distinct across inputs.
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [round(b / 255 * 2 - 1, 4) for b in digest[:EMBEDDING_DIMS]]


def _error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class FakeUpstream:
    """OpenAI-compatible fake served over real HTTP on 127.0.0.1.

    Usage::

        with FakeUpstream() as up:
            up.replies.append("hello")
            client = openai.OpenAI(base_url=up.url, api_key="sk-test")
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        # Knobs tests set; queues are consumed first-in-first-out.
        self.replies: list[str] = []
        self.structured_replies: list[str] = []
        self.errors: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.extract_facts: Callable[[dict[str, Any]], list[str]] = default_extract_facts
        # memproxy's relation call: OLD vs NEW fact → same | replaces | more_detail | separate.
        self.judge_relation: Callable[[dict[str, Any]], str] = default_relation
        # Set to answer every structured call with raw content of its own (a misbehaving
        # model: tests/hostile_model.py); it wins over the two knobs above.
        self.structured_reply: Callable[[dict[str, Any]], str] | None = None
        self.stream_chunks = 5
        # A stream that stops after this many events, with no end (no [DONE], no
        # response.completed, no message_stop): a provider that dropped the connection.
        self.truncate_after: int | None = None
        # Responses the Responses API stored (store: true): previous_response_id must name one.
        self.stored_responses: set[str] = set()
        self.chunk_delay = 0.0
        # When the newest stream sent its last event (time.monotonic()): a client that got
        # content before it was not handed one burst at the end.
        self.last_event_sent_at = 0.0
        self.response_delay = 0.0
        self.extraction_delay = 0.0  # extra delay for structured (extraction) calls only
        # Set when a stream is abandoned mid-way, i.e. the client disconnected.
        self.stream_cancelled = threading.Event()
        self.requests: list[RecordedRequest] = []
        # The server thread appends/pops while the test thread reads and queues.
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._runner: ThreadedServer | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=ALL_METHODS)])

    # ----- lifecycle -------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._runner.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 10.0) -> FakeUpstream:
        if self._runner is not None:
            raise RuntimeError("FakeUpstream is already started")
        self._runner = ThreadedServer(self.app, lifespan="off", host=self.host).start(timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        # A stream with a long chunk_delay would hold graceful shutdown open: the runner
        # forces exit after the timeout.
        if self._runner is not None:
            self._runner.stop(timeout)
        self._runner = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- recorded traffic --------------------------------------------------------

    def chat_requests(self) -> list[RecordedRequest]:
        """POST /v1/chat/completions requests that are not extraction calls."""
        with self._lock:
            return [r for r in self.requests if r.is_chat and not r.is_extraction]

    def responses_requests(self) -> list[RecordedRequest]:
        """POST /v1/responses requests (OpenAI Responses API)."""
        with self._lock:
            return [r for r in self.requests if (r.method, r.path) == ("POST", RESPONSES_PATH)]

    def messages_requests(self) -> list[RecordedRequest]:
        """POST /v1/messages requests (Anthropic Messages API)."""
        with self._lock:
            return [r for r in self.requests
                    if (r.method, r.path) == ("POST", ANTHROPIC_MESSAGES_PATH)]

    def extraction_requests(self) -> list[RecordedRequest]:
        """Chat completion requests asking for structured (json) output."""
        with self._lock:
            return [r for r in self.requests if r.is_extraction]

    def clear(self) -> None:
        """Forget recorded requests and the cancellation flag; queued knobs stay."""
        with self._lock:
            self.requests.clear()
        self.stream_cancelled.clear()

    def _pop(self, queue: list[Any]) -> Any:
        with self._lock:
            return queue.pop(0) if queue else None

    # ----- HTTP handling -----------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        # One catch-all route so recording, delays and injected errors apply to every
        # path, including unknown ones.
        body = await request.body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=dict(request.headers),
            body=body,
            json=parsed,
        )
        with self._lock:
            self.requests.append(recorded)

        if self.response_delay:
            await asyncio.sleep(self.response_delay)
        if self.extraction_delay and recorded.is_extraction:
            # Setting the knob back to 0 releases calls already waiting.
            deadline = time.monotonic() + self.extraction_delay
            while self.extraction_delay and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        error = self._pop(self.errors)
        if error is not None:
            status, error_json, headers = error
            return JSONResponse(error_json, status_code=status, headers=headers)

        route = (recorded.method, recorded.path.rstrip("/"))
        if route == ("POST", CHAT_PATH):
            return self._chat_completions(recorded)
        if route == ("POST", RESPONSES_PATH):
            return self._responses(recorded)
        if route == ("POST", ANTHROPIC_MESSAGES_PATH):
            return self._messages(recorded)
        if route == ("GET", "/v1/models"):
            return self._models(recorded)
        if route == ("POST", "/v1/embeddings"):
            return self._embeddings(recorded)
        message = f"Unknown path: {recorded.method} {recorded.path}"
        return JSONResponse(
            _error_body(message, "invalid_request_error", "unknown_url"), status_code=404
        )

    def _chat_completions(self, req: RecordedRequest) -> Response:
        body = req.json
        if not isinstance(body, dict):
            return JSONResponse(
                _error_body("Request body must be a JSON object", "invalid_request_error", None),
                status_code=400,
            )
        if _is_structured(body):
            content = self._structured_content(body)
        else:
            queued = self._pop(self.replies)
            # A lone surrogate ("\ud800") parses as JSON but cannot be sent back as UTF-8.
            echo = LONE_SURROGATE.sub("\ufffd", last_user_text(body))
            content = queued if queued is not None else "echo: " + echo

        n = next(self._ids)
        completion_id = f"chatcmpl-fake-{n}"
        headers = {"x-request-id": f"fake-{n}"}
        model = str(body.get("model") or "fake-model")
        created = int(time.time())
        prompt_tokens = sum(
            _word_count(message_text(m)) for m in body.get("messages") or [] if isinstance(m, dict)
        )
        completion_tokens = _word_count(content)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

        if body.get("stream"):
            stream_options = body.get("stream_options") or {}
            include_usage = isinstance(stream_options, dict) and bool(
                stream_options.get("include_usage")
            )
            events = self._stream_events(
                completion_id, created, model, content, usage if include_usage else None
            )
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)

        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
            headers=headers,
        )

    async def _stream_events(
        self,
        completion_id: str,
        created: int,
        model: str,
        content: str,
        usage: dict[str, int] | None,
    ) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n"

        def choice(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        pieces = _split_evenly(content, self.stream_chunks)
        events = [
            chunk([choice({"role": "assistant", "content": pieces[0]})]),
            *(chunk([choice({"content": piece})]) for piece in pieces[1:]),
            chunk([choice({}, "stop")]),
        ]
        if usage is not None:
            events.append(chunk([], usage=usage))

        # Starlette cancels (or later closes) this generator when the client goes
        # away; the flag tells a normal finish apart from that in `finally`.
        completed = False
        try:
            for i, event in enumerate(events):
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                yield event
            self.last_event_sent_at = time.monotonic()
            yield "data: [DONE]\n\n"
            completed = True
        finally:
            if not completed:
                self.stream_cancelled.set()

    def _structured_content(self, body: dict[str, Any]) -> str:
        """The answer to a structured-output (memory extraction) call, in chat form."""
        queued = self._pop(self.structured_replies)
        if queued is not None:
            return str(queued)
        if self.structured_reply is not None:
            return self.structured_reply(body)
        if _asks_relation(body):
            return json.dumps({"relation": self.judge_relation(body)})
        return json.dumps({"facts": self.extract_facts(body)})

    def _reply_for(self, last_user_text: str) -> str:
        queued = self._pop(self.replies)
        echo = LONE_SURROGATE.sub("\ufffd", last_user_text)
        return queued if queued is not None else "echo: " + echo

    async def _relay(self, events: list[str]) -> AsyncIterator[str]:
        """Events with chunk_delay between them; truncate_after cuts the stream short."""
        completed = False
        try:
            for i, event in enumerate(events):
                if self.truncate_after is not None and i >= self.truncate_after:
                    completed = True  # cut short on purpose: not a client disconnect
                    return
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if i == len(events) - 1:
                    self.last_event_sent_at = time.monotonic()
                yield event
            completed = True
        finally:
            if not completed:
                self.stream_cancelled.set()

    def _responses(self, req: RecordedRequest) -> Response:
        body = req.json
        if not isinstance(body, dict):
            return JSONResponse(
                _error_body("Request body must be a JSON object", "invalid_request_error", None),
                status_code=400,
            )
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored_responses:
            error = _error_body(f"Previous response with id '{previous}' not found.",
                                "invalid_request_error", "previous_response_not_found")
            error["error"]["param"] = "previous_response_id"
            return JSONResponse(error, status_code=400)
        n = next(self._ids)
        response_id = f"resp_fake{n}"
        if body.get("store", True) is not False:
            self.stored_responses.add(response_id)
        content = self._reply_for(responses_last_user_text(body))
        headers = {"x-request-id": f"fake-{n}"}
        if body.get("stream"):
            events = responses_events(response_id, body,
                                      _split_evenly(content, self.stream_chunks))
            return StreamingResponse(self._relay(events), media_type="text/event-stream",
                                     headers=headers)
        return JSONResponse(response_object(response_id, body, content, "completed"),
                            headers=headers)

    def _messages(self, req: RecordedRequest) -> Response:
        body = req.json
        if "anthropic-version" not in req.headers:
            return JSONResponse(anthropic_error(
                "invalid_request_error", "anthropic-version: header is required"
            ), status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return JSONResponse(anthropic_error(
                "invalid_request_error", "messages: Field required"), status_code=400)
        n = next(self._ids)
        message_id = f"msg_fake{n}"
        if _is_anthropic_structured(body):
            content = self._structured_content(_as_chat_body(body))
        else:
            content = self._reply_for(messages_last_user_text(body))
        headers = {"request-id": f"req_fake{n}"}
        if body.get("stream"):
            events = messages_events(message_id, body, _split_evenly(content, self.stream_chunks))
            return StreamingResponse(self._relay(events), media_type="text/event-stream",
                                     headers=headers)
        return JSONResponse(message_object(message_id, body, content), headers=headers)

    def _models(self, req: RecordedRequest) -> Response:
        listing = {
            "object": "list",
            "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
        }
        # Lets passthrough tests check the proxy forwarded the query string intact.
        headers = {"x-seen-query": req.query}
        if "gzip" in req.headers.get("accept-encoding", ""):
            # Like a real provider behind a CDN: compressed for any client that accepts it.
            return Response(gzip.compress(json.dumps(listing).encode()),
                            media_type="application/json",
                            headers={**headers, "content-encoding": "gzip"})
        return JSONResponse(listing, headers=headers)

    def _embeddings(self, req: RecordedRequest) -> Response:
        body = req.json if isinstance(req.json, dict) else {}
        raw = body.get("input", "")
        # OpenAI accepts a string, a token list, or a list of either.
        if isinstance(raw, str) or (raw and all(isinstance(t, int) for t in raw)):
            inputs: list[Any] = [raw]
        else:
            inputs = list(raw) if isinstance(raw, list) else [raw]
        # The openai SDK asks for base64 by default and decodes it client-side.
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = _embedding(item)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(i) if isinstance(i, list) else _word_count(str(i)) for i in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model") or "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
