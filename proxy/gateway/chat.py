"""The /chat/completions flow: identify → retrieve → inject → forward → enqueue extraction."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy import strict_json
from proxy.config import Settings
from proxy.errors import InvalidRequest, PayloadTooLarge
from proxy.extraction.jobs import ExtractionJob, owner_of
from proxy.extraction.workers import ExtractionWorkers
from proxy.gateway.auth import Authenticator
from proxy.gateway.identity import Identity, resolve_identity
from proxy.gateway.providers import complete_via_litellm, open_litellm_stream
from proxy.gateway.relay import RelayResponse
from proxy.gateway.sse import ChatStreamAssembler
from proxy.gateway.upstream import (
    HttpUpstream,
    iter_raw,
    response_headers,
    translate_transport_error,
)
from proxy.memory.injection import inject_memory_block, render_memory_block
from proxy.memory.retrieval import Retriever, build_query, message_text
from proxy.memory.store import MemoryStore
from proxy.metrics import Metrics

log = logging.getLogger("memproxy.chat")

STATUS_HEADER = "x-memory-status"
COUNT_HEADER = "x-memory-injected"
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ChatServices:
    settings: Settings
    upstream: HttpUpstream
    retriever: Retriever | None
    jobs: ExtractionWorkers | None
    metrics: Metrics
    memory_error: str | None = None  # the memory layer could not be opened
    store: MemoryStore | None = None
    auth: Authenticator | None = None  # None: no proxy keys, no signatures (tests)


@dataclass
class MemoryOutcome:
    status: str  # injected | none | skipped | degraded
    count: int = 0
    messages: list[Any] | None = None  # the messages to forward, when changed

    def headers(self) -> list[tuple[str, str]]:
        return [(STATUS_HEADER, self.status), (COUNT_HEADER, str(self.count))]


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_chat_body(raw: bytes) -> dict[str, Any]:
    body = strict_json.parse(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("each item of 'messages' must be an object", param="messages")
    return body


def valid_text(text: str) -> str:
    """Text fit for the store: a lone surrogate ("\\ud800" parses as JSON but is no valid
    Unicode) becomes U+FFFD; everything else (NUL, emoji, right-to-left) stays as it is."""
    return LONE_SURROGATE.sub("\ufffd", text)


def new_user_turn(messages: list[Any]) -> list[str]:
    """The user's messages after the last assistant message: what is new in this request."""
    texts: list[str] = []
    for message in reversed(messages):
        role = message.get("role")
        if role == "user":
            texts.append(message_text(message.get("content")))
        elif role in ("assistant", "tool", "function"):
            break
    return [t for t in reversed(texts) if t.strip()]


def assistant_text_of(completion: bytes) -> str | None:
    try:
        data = json.loads(completion)
        content = data["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return message_text(content)


async def _tee(
    source: AsyncGenerator[bytes, None], assembler: ChatStreamAssembler
) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in source:
            assembler.feed(chunk)
            yield chunk
    finally:
        await source.aclose()


class ChatCompletions:
    def __init__(self, services: ChatServices):
        self.s = services

    async def __call__(self, request: Request) -> Response | RelayResponse:
        settings = self.s.settings
        raw = await read_body(request, settings.server.max_body_bytes)
        body = parse_chat_body(raw)
        auth = self.s.auth
        identity = (
            auth.identify(request.headers, body) if auth is not None
            else resolve_identity(request.headers, body, settings.identity)
        )
        outcome = await self._memories(identity, body["messages"], body.get("model"))
        self.s.metrics.memory_status[outcome.status] += 1
        if outcome.messages is not None:
            forwarded = {**body, "messages": outcome.messages}
            raw = _dump_json(forwarded)
        else:
            forwarded = body
        finish = self._finisher(request, identity, body)
        route = settings.models.get(str(body.get("model")))
        if route is not None:
            if body.get("stream") is True:
                assembler = ChatStreamAssembler()
                source = await open_litellm_stream(forwarded, route)
                finish.announce()
                return RelayResponse(
                    200,
                    [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                     *outcome.headers()],
                    _tee(source, assembler),
                    lambda completed: finish(assembler.text if completed and assembler.complete
                                             else None),
                )
            result = await complete_via_litellm(forwarded, route)
            finish.announce()
            return JSONResponse(
                result, headers=dict(outcome.headers()),
                background=BackgroundTask(finish, assistant_text_of(json.dumps(result).encode())),
            )
        return await self._forward_http(request, raw, body, outcome, finish)

    async def _forward_http(
        self,
        request: Request,
        raw: bytes,
        body: dict[str, Any],
        outcome: MemoryOutcome,
        finish: Finish,
    ) -> Response | RelayResponse:
        upstream = self.s.upstream
        response = await upstream.send(
            "POST", "/chat/completions",
            query=request.url.query.encode("latin-1"),
            headers=upstream.request_headers(request.headers.items(), identity_encoding=True),
            content=raw,
        )
        headers = response_headers(response, keep_encoding=False) + outcome.headers()
        streaming = body.get("stream") is True and response.is_success
        if not streaming:
            try:
                content = await response.aread()
            except httpx.HTTPError as exc:
                raise translate_transport_error(exc) from exc
            finally:
                await response.aclose()
            # Enqueued once the response is sent: the client never waits for the job row.
            background = None
            if response.is_success:
                finish.announce()
                background = BackgroundTask(finish, assistant_text_of(content))
            return _raw_response(content, response.status_code, headers, background)
        assembler = ChatStreamAssembler()
        finish.announce()

        async def on_finish(completed: bool) -> None:
            await finish(assembler.text if completed and assembler.complete else None)

        return RelayResponse(
            response.status_code, headers, _tee(iter_raw(response), assembler), on_finish
        )

    async def _memories(
        self, identity: Identity, messages: list[Any], model: Any = None
    ) -> MemoryOutcome:
        retriever = self.s.retriever
        if not identity.reads:
            return MemoryOutcome("skipped")
        if retriever is None:
            self.s.metrics.memory_failures["unavailable"] += 1
            return MemoryOutcome("degraded")
        query = valid_text(build_query(messages, self.s.settings.retrieval.short_query_chars))
        if not query:
            return MemoryOutcome("none")
        user_id = identity.user_id
        assert user_id is not None
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.s.settings.retrieval.timeout_ms / 1000):
                found = await anyio.to_thread.run_sync(
                    partial(retriever.retrieve, user_id, query, tenant=identity.tenant,
                            model=model if isinstance(model, str) else None),
                    abandon_on_cancel=True,
                )
        except TimeoutError:
            self.s.metrics.memory_failures["timeout"] += 1
            log.warning("retrieval timed out; forwarding without memories")
            return MemoryOutcome("degraded")
        except Exception as exc:
            self.s.metrics.memory_failures[type(exc).__name__] += 1
            log.warning("retrieval failed (%s: %s); forwarding without memories",
                        type(exc).__name__, exc)
            return MemoryOutcome("degraded")
        self.s.metrics.observe_retrieval(time.perf_counter() - started)
        if not found:
            return MemoryOutcome("none")
        injected, _ = inject_memory_block(messages, render_memory_block(found))
        return MemoryOutcome("injected", len(found), injected)

    def _finisher(self, request: Request, identity: Identity, body: dict[str, Any]) -> Finish:
        # Read the key now: the request object is gone when a stream finishes.
        api_key = self.s.upstream.caller_api_key(request.headers)
        user_texts = [valid_text(text) for text in new_user_turn(body["messages"])]
        return Finish(self.s.jobs, identity, api_key, user_texts, body)



class Finish:
    """After a successful response: enqueue the exchange (durable, off the hot path).

    ``announce()`` runs when the response is known to succeed, before it is sent, so that
    ``GET /v1/users/{id}/jobs`` counts the exchange from the moment the client has its answer.
    """

    def __init__(
        self, jobs: ExtractionWorkers | None, identity: Identity, api_key: str | None,
        user_texts: list[str], body: dict[str, Any],
    ):
        self._jobs = jobs
        self._identity = identity
        self._api_key = api_key
        self._user_texts = user_texts
        self._body = body
        self._token: int | None = None
        # When the user spoke: the job's time, so a forget while the upstream answers covers
        # this exchange too (proxy/memory/forget_fence.py).
        self._said_at = time.time()

    def announce(self) -> None:
        jobs = self._jobs
        if jobs is not None and self._identity.writes and self._user_texts and self._token is None:
            self._token = jobs.answered.add(owner_of(self._identity))

    async def __call__(self, assistant_text: str | None) -> None:
        jobs = self._jobs
        try:
            if jobs is None or assistant_text is None:
                return
            identity = self._identity
            await jobs.saw_caller(identity, self._api_key)  # may wake this user's parked jobs
            if not identity.writes or not self._user_texts:
                return
            job = ExtractionJob(
                identity=identity, user_texts=self._user_texts,
                assistant_text=valid_text(assistant_text), model=str(self._body.get("model", "")),
                created_at=self._said_at,
            )
            await jobs.submit(job, self._api_key, self._body["messages"])
        finally:
            if jobs is not None and self._token is not None:
                jobs.answered.discard(self._token)
                self._token = None


def _dump_json(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON, not valid UTF-8
        return json.dumps(body, separators=(",", ":")).encode()


def _raw_response(
    content: bytes, status: int, headers: list[tuple[str, str]],
    background: BackgroundTask | None = None,
) -> Response:
    """A response carrying the upstream's headers as a list: repeated ones (set-cookie) stay."""
    response = Response(content, status_code=status, background=background)
    response.raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
    ] + [(b"content-length", str(len(content)).encode())]
    return response
