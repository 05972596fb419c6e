"""The memory flow, written once for every API dialect (proxy/gateway/dialects/):

identify → retrieve → inject → forward → tee → enqueue extraction.

Fail open: a memory layer that is down, slow or failing costs the request its memories, never
the request itself (``X-Memory-Status: degraded``). Streams are relayed as they arrive; the
extraction job is stored only after the answer completed.
"""

from __future__ import annotations

import json
import logging
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

from proxy.config import Settings
from proxy.errors import PayloadTooLarge, ProxyError
from proxy.extraction.workers import ExtractionWorkers
from proxy.gateway.auth import Authenticator
from proxy.gateway.dialects import Dialect, StreamAssembler
from proxy.gateway.finish import Finish, valid_text
from proxy.gateway.forwarding import outgoing_headers
from proxy.gateway.identity import Identity, resolve_identity
from proxy.gateway.providers import complete_via_litellm, open_litellm_stream
from proxy.gateway.relay import RelayResponse
from proxy.gateway.shaping import RequestShaper, Shaped
from proxy.gateway.upstream import (
    HttpUpstream,
    iter_raw,
    response_headers,
    translate_transport_error,
)
from proxy.memory.embedding import Embedder
from proxy.memory.injection import render_late_block, render_memory_block
from proxy.memory.retrieval import Retriever, build_query, message_text
from proxy.memory.store import MemoryStore, ScoredMemory
from proxy.memory.trimming import Turn, render_recalled
from proxy.memory.when import TimeAsked, read_time
from proxy.metrics import Metrics

log = logging.getLogger("memproxy.flow")

STATUS_HEADER = "x-memory-status"
COUNT_HEADER = "x-memory-injected"


@dataclass
class GatewayServices:
    settings: Settings
    upstream: HttpUpstream
    retriever: Retriever | None
    jobs: ExtractionWorkers | None
    metrics: Metrics
    memory_error: str | None = None  # the memory layer could not be opened
    store: MemoryStore | None = None
    auth: Authenticator | None = None  # None: no proxy keys, no signatures (tests)
    embedder: Embedder | None = None
    shaper: RequestShaper | None = None  # made from the above on first use
    slots: anyio.CapacityLimiter | None = None  # retrievals running at once; on first use

    def request_shaper(self) -> RequestShaper:
        if self.shaper is None:
            self.shaper = RequestShaper(self.settings, self.store, self.embedder)
        return self.shaper

    def retrieval_slots(self) -> anyio.CapacityLimiter:
        if self.slots is None:  # made inside the event loop, as anyio requires
            self.slots = anyio.CapacityLimiter(self.settings.retrieval.max_concurrent)
        return self.slots


@dataclass
class MemoryOutcome:
    status: str  # injected | none | skipped | degraded
    count: int = 0
    block: str | None = None  # the rendered memory block, when there is one to inject
    late: str | None = None  # this turn's additions, at the newest user turn
    shaped: Shaped | None = None

    def headers(self) -> list[tuple[str, str]]:
        extra = self.shaped.headers() if self.shaped is not None else []
        return [(STATUS_HEADER, self.status), (COUNT_HEADER, str(self.count)), *extra]


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


async def _tee(
    source: AsyncGenerator[bytes, None], assembler: StreamAssembler
) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in source:
            assembler.feed(chunk)
            yield chunk
    finally:
        await source.aclose()


class MemoryFlow:
    """One endpoint: ``dialect`` reads and writes its API's bodies, ``upstream`` answers."""

    def __init__(self, services: GatewayServices, dialect: Dialect,
                 upstream: HttpUpstream | None = None):
        self.s = services
        self.dialect = dialect
        self.upstream = upstream or services.upstream

    async def __call__(self, request: Request) -> Response | RelayResponse:
        try:
            return await self._handle(request)
        except ProxyError as exc:
            return self.dialect.error_response(exc)

    async def _handle(self, request: Request) -> Response | RelayResponse:
        settings = self.s.settings
        dialect = self.dialect
        raw = await read_body(request, settings.server.max_body_bytes)
        body = dialect.parse(raw)
        auth = self.s.auth
        identity = (
            auth.identify(dialect.auth_view(request.headers), body) if auth is not None
            else resolve_identity(request.headers, body, settings.identity)
        )
        conversation = dialect.conversation(body)
        budget = self.s.request_shaper().budget(request.headers)
        outcome = await self._memories(identity, conversation, body, budget)
        self.s.metrics.memory_status[outcome.status] += 1
        forwarded = body
        shaped = outcome.shaped
        if shaped is not None and shaped.plan.trimmed:
            forwarded = dialect.without(forwarded, shaped.plan.start, shaped.plan.end)
        if outcome.block is not None:
            forwarded = dialect.inject(forwarded, outcome.block)
        if outcome.late is not None:
            forwarded = dialect.inject_late(forwarded, outcome.late)
        if forwarded is not body:
            raw = _dump_json(forwarded)
        finish = Finish(
            self.s.jobs, identity, self.upstream.caller_api_key(request.headers),
            [valid_text(text) for text in new_user_turn(conversation)],
            dialect.extraction_model(body), conversation,
        )
        route = settings.models.get(str(body.get("model"))) if dialect.uses_model_routes else None
        if route is not None:
            if dialect.wants_stream(body):
                assembler = dialect.stream_assembler()
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
                background=BackgroundTask(
                    finish, dialect.reply_text(json.dumps(result).encode())
                ),
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
        upstream = self.upstream
        incoming = outgoing_headers(request.headers.items(), self.s.settings)
        response = await upstream.send(
            "POST", self.dialect.upstream_path,
            query=request.url.query.encode("latin-1"),
            headers=upstream.request_headers(incoming, identity_encoding=True),
            content=raw,
        )
        headers = response_headers(response, keep_encoding=False) + outcome.headers()
        streaming = self.dialect.wants_stream(body) and response.is_success
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
                background = BackgroundTask(finish, self.dialect.reply_text(content))
            return _raw_response(content, response.status_code, headers, background)
        assembler = self.dialect.stream_assembler()
        finish.announce()

        async def on_finish(completed: bool) -> None:
            await finish(assembler.text if completed and assembler.complete else None)

        return RelayResponse(
            response.status_code, headers, _tee(iter_raw(response), assembler), on_finish
        )

    async def _memories(
        self, identity: Identity, messages: list[Any], body: dict[str, Any], budget: int
    ) -> MemoryOutcome:
        model = body.get("model")
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
        model_name = model if isinstance(model, str) else None
        shaper = self.s.request_shaper()

        phases: dict[str, float] = {}  # filled in the retrieval thread
        clock = retriever.clock()  # "yesterday" is the day before this one

        def retrieve_and_shape() -> tuple[list[ScoredMemory], Shaped, TimeAsked]:
            entered = time.perf_counter()
            asked = read_time(query, clock)
            found = retriever.retrieve(user_id, query, tenant=identity.tenant, model=model_name,
                                       phases=phases, asked=asked)
            retrieved = time.perf_counter()
            turns: list[Turn] = []
            if budget > 0:
                count = partial(retriever.tokens.count, model=model_name)
                turns = self.dialect.history(body, lambda text: count(text))
            plan = shaper.plan(turns, budget)
            shaped = shaper.shape(
                identity.tenant, user_id, identity.session_id, messages, found, query,
                turns, plan, budget,
            )
            _log_if_late(started, entered, retrieved, phases, timeout_ms=settings.timeout_ms)
            return found, shaped, asked

        # Fail open is for faults, not for load. Retrievals take turns (a few at a time: more
        # threads on the same cores only make each one slower), and the timeout counts the
        # retrieval's own work, not its turn in the queue; a queue that does not move within
        # queue_timeout_ms is an overload, and the request goes on without memories.
        settings = self.s.settings.retrieval
        slots = self.s.retrieval_slots()
        try:
            with anyio.fail_after(settings.queue_timeout_ms / 1000):
                await slots.acquire()
        except TimeoutError:
            self.s.metrics.memory_failures["overloaded"] += 1
            log.warning("retrieval queue did not move in %d ms; forwarding without memories",
                        settings.queue_timeout_ms)
            return MemoryOutcome("degraded")
        try:
            started = time.perf_counter()
            with anyio.fail_after(settings.timeout_ms / 1000):
                found, shaped, asked = await anyio.to_thread.run_sync(
                    retrieve_and_shape, abandon_on_cancel=True
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
        finally:
            slots.release()
        self.s.metrics.observe_retrieval(time.perf_counter() - started, phases)
        block = render_memory_block(shaped.stable, clock) if shaped.stable else None
        recalled = [render_recalled([turn]) for turn in shaped.recalled]
        if not (block or shaped.late or recalled):
            return MemoryOutcome("none", shaped=shaped)
        # Dated memories answer "what did I do yesterday?" only if the model knows the date.
        late = render_late_block(shaped.late, recalled, clock, dated=asked.relative) \
            if shaped.late or recalled or asked.relative else None
        return MemoryOutcome("injected", shaped.count, block, late, shaped)


def _log_if_late(started: float, entered: float, retrieved: float, phases: dict[str, float],
                 *, timeout_ms: int) -> None:
    """Where a retrieval past its timeout spent the time (its chat went out without memories;
    this runs when the abandoned work ends)."""
    done = time.perf_counter()
    total = (done - started) * 1000
    if total <= timeout_ms:
        return
    steps = ", ".join(f"{name} {ms:.0f}" for name, ms in phases.items())
    log.warning(
        "a retrieval took %.0f ms (timeout %d): %.0f waiting for a thread, %.0f retrieving%s, "
        "%.0f shaping", total, timeout_ms, (entered - started) * 1000,
        (retrieved - entered) * 1000, f" ({steps})" if steps else "", (done - retrieved) * 1000,
    )


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
