"""The ASGI application: routes, lifespan (resources), error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from proxy import collector
from proxy.access_log import AccessLog
from proxy.api.memories import MemoriesAPI, MemoryServices
from proxy.api.routes import memory_routes
from proxy.config import Settings
from proxy.console.routes import console_routes
from proxy.errors import MemoryUnavailable, MethodNotAllowed, ProxyError, error_body
from proxy.extraction.extractor import Extractor
from proxy.extraction.queue import JobQueue
from proxy.extraction.workers import ExtractionWorkers
from proxy.gateway.anthropic_upstream import AnthropicUpstream
from proxy.gateway.auth import open_authenticator
from proxy.gateway.dialects.anthropic_messages import (
    AnthropicMessagesDialect,
    anthropic_error_body,
)
from proxy.gateway.dialects.chat_completions import ChatCompletionsDialect
from proxy.gateway.dialects.responses import ResponsesDialect
from proxy.gateway.flow import GatewayServices, MemoryFlow
from proxy.gateway.passthrough import Passthrough
from proxy.gateway.providers import load_litellm, warm_litellm
from proxy.gateway.upstream import HttpUpstream
from proxy.health import readiness, warm_up
from proxy.heap_scrub import scrub_freed_memory
from proxy.memory.embedding import Embedder, open_embedder
from proxy.memory.retrieval import Retriever
from proxy.memory.store import ChromaStore, MemoryStore
from proxy.metrics import Metrics, render_job_metrics
from proxy.state.engine import database_target

log = logging.getLogger("memproxy")


async def _open_memory(
    settings: Settings, embedder: Embedder | None, store: MemoryStore | None
) -> tuple[Embedder, MemoryStore]:
    if embedder is None:
        embedder = await anyio.to_thread.run_sync(
            open_embedder, settings.embedding, settings.data_dir
        )
    if store is None:
        dimension = embedder.dimension
        store = await anyio.to_thread.run_sync(lambda: ChromaStore(
            settings.store, settings.data_dir, dimension,
            state=database_target(settings), pool_size=settings.state.pool_size,
        ))
    return embedder, store


async def _open_jobs(settings: Settings, extractor: Extractor | None) -> ExtractionWorkers | None:
    """The durable job queue, opened even when the store is not: jobs wait, never get lost."""
    if settings.extraction.mode == "off":
        return None
    try:
        target = database_target(settings)  # the data dir's SQLite, or the shared Postgres
        queue = await anyio.to_thread.run_sync(lambda: JobQueue(
            target, settings.jobs, pool_size=settings.state.pool_size
        ))
    except Exception as exc:
        log.error("extraction jobs unavailable (%s: %s); exchanges will not be remembered",
                  type(exc).__name__, exc)
        return None
    workers = ExtractionWorkers(queue, extractor, settings.jobs)
    await workers.start()
    return workers


def _log_started(
    settings: Settings, memory_error: str | None, jobs: ExtractionWorkers | None
) -> None:
    """'ready' only when everything opened; otherwise say plainly what runs degraded."""
    missing = []
    if memory_error is not None:
        missing.append(f"memory layer ({memory_error}): chats are forwarded without memories")
    if jobs is None and settings.extraction.mode != "off":
        missing.append("extraction jobs: exchanges are not remembered")
    if missing:
        log.error("memproxy started DEGRADED; upstream %s; unavailable: %s",
                  settings.upstream_base, "; ".join(missing))
    else:
        log.info("memproxy ready; upstream %s", settings.upstream_base)


def create_app(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    store: MemoryStore | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """Build the app. ``embedder``/``store`` replace the real ones (tests, benchmarks)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scrub_freed_memory()  # before any request: no caller's key left in reused memory
        # First: in keys mode no key table means no start (fail closed), before anything opens.
        auth = await anyio.to_thread.run_sync(open_authenticator, settings)
        app.state.auth = auth
        metrics = Metrics()
        metrics.gauges["memproxy_gc_frozen_objects"] = collector.frozen_count
        upstream = HttpUpstream(settings, upstream_transport)
        anthropic = AnthropicUpstream(settings, upstream_transport)
        memory_error: str | None = None
        retriever: Retriever | None = None
        extractor: Extractor | None = None
        opened_store: MemoryStore | None = None
        opened_embedder: Embedder | None = None
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            opened_embedder, opened_store = await _open_memory(settings, embedder, store)
            retriever = Retriever(opened_embedder, opened_store, settings.retrieval)
            if isinstance(opened_store, ChromaStore) and opened_store.pacer is not None:
                opened_store.pacer.contended = retriever.activity.busy
            if isinstance(opened_store, ChromaStore) and opened_store.journal is not None:
                journal = opened_store.journal
                metrics.gauges["memproxy_store_journal_pending"] = lambda: journal.pending
            extractor = Extractor(settings, opened_embedder, opened_store)
            # Before "ready": the first chat is not the one that pays for cold code paths.
            await anyio.to_thread.run_sync(warm_up, retriever)
        except Exception as exc:
            # Fail open: chats still flow, marked X-Memory-Status: degraded.
            memory_error = f"{type(exc).__name__}: {exc}"
            log.error("memory layer unavailable, proxying without memory: %s", memory_error)
        jobs = await _open_jobs(settings, extractor)
        if settings.extraction.mode == "llm" or settings.models:
            # Imported before "ready", off the loop: an import holds the interpreter for
            # ~3 s, and behind it the first chats' retrievals timed out (soak, minute 1).
            try:
                litellm = await anyio.to_thread.run_sync(load_litellm)
            except Exception as exc:  # its calls will say so; chats without it still flow
                log.warning("litellm could not be imported: %s: %s", type(exc).__name__, exc)
            else:
                await anyio.to_thread.run_sync(warm_litellm, litellm)
        collector.settle()  # start-up state, litellm's tables included (proxy/collector.py)
        if settings.admin_key is None:
            if settings.auth.mode == "keys" and not settings.auth.loopback_admin:
                log.warning("no admin key set: the memory API answers proxy keys only")
            else:
                log.warning("no admin key set: the memory API answers loopback clients only")
        if extractor is not None:
            metrics.extraction_usage = extractor.usage
            metrics.extraction_guards = extractor.guard_events
        services = GatewayServices(settings, upstream, retriever, jobs, metrics, memory_error)
        services.store = opened_store
        services.embedder = opened_embedder
        services.auth = auth
        app.state.services = services
        app.state.chat = MemoryFlow(services, ChatCompletionsDialect())
        app.state.responses = MemoryFlow(services, ResponsesDialect())
        app.state.messages = MemoryFlow(services, AnthropicMessagesDialect(), anthropic)
        app.state.passthrough = Passthrough(upstream, settings)
        app.state.anthropic_passthrough = Passthrough(anthropic, settings, "/v1/messages/")
        app.state.memories = None
        if opened_store is not None and opened_embedder is not None and retriever is not None:
            app.state.memories = MemoriesAPI(MemoryServices(
                settings, opened_store, opened_embedder, retriever, auth, extractor,
                jobs.queue if jobs is not None else None,
            ))
        _log_started(settings, memory_error, jobs)
        try:
            yield
        finally:
            if jobs is not None:
                await jobs.stop(settings.jobs.shutdown_grace_seconds)
                jobs.queue.close()
            await upstream.aclose()
            await anthropic.aclose()
            auth.close()
            if opened_store is not None and store is None:
                opened_store.close()
            close_embedder = getattr(opened_embedder, "close", None)
            if close_embedder is not None and embedder is None:
                close_embedder()

    async def chat(request: Request) -> Any:
        return await request.app.state.chat(request)

    async def responses(request: Request) -> Any:
        return await request.app.state.responses(request)

    async def messages(request: Request) -> Any:
        if request.method != "POST":  # not passed on to the OpenAI upstream by /v1/{path}
            refused = MethodNotAllowed(f"{request.method} is not allowed on /v1/messages",
                                       allow=["POST"])
            return AnthropicMessagesDialect().error_response(refused)
        return await request.app.state.messages(request)

    async def passthrough(request: Request) -> Any:
        request.app.state.auth.admit(request.headers)  # keys mode: a proxy key, or 401
        return await request.app.state.passthrough(request)

    async def anthropic_passthrough(request: Request) -> Any:
        """count_tokens, batches …: Anthropic's other /v1/messages/* routes, unchanged."""
        state = request.app.state
        try:
            state.auth.admit(AnthropicMessagesDialect().auth_view(request.headers))
            return await state.anthropic_passthrough(request)
        except ProxyError as exc:
            return AnthropicMessagesDialect().error_response(exc)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await readiness(request.app.state.services)
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        services: GatewayServices = request.app.state.services
        text = services.metrics.render()
        if services.jobs is not None:
            text += render_job_metrics(await services.jobs.stats(), services.jobs.counts)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/responses", responses, methods=["POST"]),
        Route("/v1/messages", messages, methods=methods),
        Route("/v1/messages/{path:path}", anthropic_passthrough, methods=methods),
        *memory_routes(settings.identity.max_id_length),
        *(console_routes() if settings.server.console else []),
        Route("/v1/{path:path}", passthrough, methods=methods),
    ]

    async def proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return exc.to_response()

    async def memory_unavailable(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            error_body(f"memory store unavailable: {exc}", "server_error", "memory_unavailable"),
            status_code=503,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/v1/messages"):  # GET /v1/messages: Anthropic's shape
            return JSONResponse(anthropic_error_body(exc.status_code, str(exc.detail)),
                                status_code=exc.status_code, headers=exc.headers)
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", "not_found"
                       if exc.status_code == 404 else "http_error"),
            status_code=exc.status_code, headers=exc.headers,
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            error_body("internal error in memproxy", "server_error", "internal_error"),
            status_code=500,
        )

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(AccessLog)] if settings.server.access_log else [],
        exception_handlers={
            ProxyError: proxy_error, HTTPException: http_error,
            MemoryUnavailable: memory_unavailable, Exception: unexpected,
        },
    )
