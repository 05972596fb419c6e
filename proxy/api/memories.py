"""The memory API: list, read, add, change, delete, search, history, forget a user.

Every call is scoped (proxy/gateway/auth.py): the admin key reaches every tenant (``tenant`` in the
query or body, default ``default``); a proxy key only its own tenant and, when bound, its own
user. Another owner's memory answers 404, as if it did not exist. Import and export live in
proxy/api/transfer.py, the OpenAPI document in proxy/api/openapi.py.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy import strict_json
from proxy.config import Settings
from proxy.errors import (
    InvalidJSON,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
)
from proxy.extraction.extractor import ExtractionFailed, Extractor
from proxy.extraction.jobs import ExtractionJob
from proxy.extraction.queue import JobQueue
from proxy.gateway.auth import Authenticator, Scope
from proxy.gateway.identity import Identity, check_id
from proxy.memory.embedding import Embedder
from proxy.memory.forget_fence import work_started
from proxy.memory.listing import Condition, parse_filters, parse_time
from proxy.memory.model import metadata_size_problem, text_size_problem
from proxy.memory.retrieval import Retriever, message_text
from proxy.memory.store import Memory, MemoryStore

# Fields that say whose memory it is or where it came from: PATCH cannot change them.
IDENTITY_FIELDS = frozenset(
    {"id", "object", "tenant", "user_id", "agent_id", "session_id", "source", "created_at",
     "updated_at", "superseded_by", "valid_to"}
)


@dataclass
class MemoryServices:
    settings: Settings
    store: MemoryStore
    embedder: Embedder
    retriever: Retriever
    auth: Authenticator
    extractor: Extractor | None = None
    jobs: JobQueue | None = None


# -- request helpers ----------------------------------------------------------------------


async def read_raw(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(raw)


async def read_json(request: Request, limit: int) -> Any:
    return strict_json.parse(await read_raw(request, limit))


def json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object")
    return value


def optional_id(source: Mapping[str, Any], name: str, max_length: int) -> str | None:
    value = source.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)
    return check_id(value, name, max_length, header=False)


# Path words after /v1/memories/ that are routes, not memory ids.
RESERVED_MEMORY_IDS = frozenset(
    {"import", "search", "explain", "injections", "jobs", ".", ".."}
)


def memory_id_problem(value: str, max_length: int = 256) -> str | None:
    """Why ``value`` cannot be a memory id (no route could reach it), or None."""
    if not value or value != value.strip():
        return "must not be empty or start or end with whitespace"
    if len(value) > max_length:
        return f"is longer than {max_length} characters"
    if "/" in value or value in RESERVED_MEMORY_IDS:
        return "must not contain '/' nor be one of " + ", ".join(sorted(RESERVED_MEMORY_IDS))
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") for ch in value):
        return "must not contain control characters"
    return None


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}", param=name)
    return int(raw)


def bool_param(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    raise InvalidRequest(f"'{name}' must be true or false", param=name)


def user_metadata(value: Any, max_bytes: int) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("'metadata' must be a JSON object", param="metadata")
    return check_metadata_size(value, max_bytes)


def check_metadata_size(metadata: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    problem = metadata_size_problem(metadata, max_bytes)
    if problem is not None:
        raise InvalidRequest(f"'metadata' {problem} (store.max_metadata_bytes)",
                             param="metadata")
    return metadata


def memory_text(value: Any, name: str = "text", max_chars: int | None = None) -> str:
    """A non-empty text; with ``max_chars``, one a memory can hold."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    text = value.strip()
    problem = text_size_problem(text, max_chars) if max_chars is not None else None
    if problem is not None:
        raise InvalidRequest(f"'{name}' {problem} (store.max_memory_chars)", param=name)
    return text


def identity_filters(
    source: Mapping[str, Any], max_length: int, raw_filters: Any
) -> list[Condition]:
    """``filters`` plus the agent_id/session_id shortcuts, as conditions."""
    conditions = parse_filters(raw_filters)
    for name in ("agent_id", "session_id"):
        value = optional_id(source, name, max_length)
        if value is not None:
            conditions += parse_filters({name: value})
    return conditions


class MemoriesAPI:
    def __init__(self, services: MemoryServices):
        self.s = services
        self._max_id = services.settings.identity.max_id_length
        self._max_chars = services.settings.store.max_memory_chars
        self._max_metadata = services.settings.store.max_metadata_bytes

    def scope(self, request: Request) -> Scope:
        return self.s.auth.memory_scope(
            request.headers, request.client.host if request.client else None
        )

    def owner(self, scope: Scope, source: Mapping[str, Any]) -> tuple[str, str]:
        """(tenant, user) named by a query or body, within the caller's scope."""
        tenant = scope.tenant_for(optional_id(source, "tenant", self._max_id))
        user_id = scope.user_for(optional_id(source, "user_id", self._max_id))
        if user_id is None:
            raise InvalidRequest("'user_id' is required", param="user_id")
        return tenant, user_id

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def body(self, request: Request) -> dict[str, Any]:
        body = json_object(await read_json(request, self.s.settings.server.max_body_bytes))
        strict_json.check_unicode(body)
        return body

    async def memory_in_scope(self, request: Request, scope: Scope) -> Memory:
        memory_id = request.path_params["memory_id"]
        memory: Memory | None = await self.run(self.s.store.get, memory_id)
        if memory is None:
            raise NotFound(f"no memory with id {memory_id!r}")
        scope.check(memory.tenant, memory.user_id, f"memory with id {memory_id!r}")
        query = request.query_params
        for name, actual in (("tenant", memory.tenant), ("user_id", memory.user_id)):
            if name in query and query[name] != actual:
                raise NotFound(f"no memory with id {memory_id!r}")
        return memory

    # -- handlers ---------------------------------------------------------------------------
    async def list_memories(self, request: Request) -> Response:
        scope = self.scope(request)
        query = request.query_params
        tenant, user_id = self.owner(scope, query)
        raw_filters = query.get("filters")
        try:
            filters_value = strict_json.parse(raw_filters, "'filters'") if raw_filters else None
        except InvalidJSON as exc:
            raise InvalidRequest(exc.message, param="filters") from exc
        memories, cursor = await self.run(
            self.s.store.list_page, user_id, tenant=tenant,
            filters=identity_filters(query, self._max_id, filters_value),
            limit=int_param(request, "limit", 100, 1, 1000), cursor=query.get("cursor"),
            include_superseded=bool_param(query.get("include_superseded", "false"),
                                          "include_superseded"),
        )
        return JSONResponse({
            "object": "list", "data": [m.to_json() for m in memories],
            "has_more": cursor is not None, "next_cursor": cursor,
        })

    async def create(self, request: Request) -> Response:
        scope = self.scope(request)
        body = await self.body(request)
        tenant, user_id = self.owner(scope, body)
        agent_id = optional_id(body, "agent_id", self._max_id)
        session_id = optional_id(body, "session_id", self._max_id)
        metadata = user_metadata(body.get("metadata"), self._max_metadata)
        # A fact's real date (history brought in from elsewhere); default: now.
        created_at = (
            parse_time(body["created_at"], "created_at")
            if body.get("created_at") is not None else time.time()
        )
        infer = bool_param(body.get("infer", True), "infer")
        user_texts, assistant_text = self._texts(body)
        if not infer:  # stored as given: each text is a memory
            for text in user_texts:
                memory_text(text, "text" if "text" in body else "messages", self._max_chars)
        if not infer:
            memories = [
                Memory(user_id, text, tenant=tenant, agent_id=agent_id, session_id=session_id,
                       source="api", metadata=dict(metadata), created_at=created_at)
                for text in user_texts
            ]
            vectors = await self.run(self.s.embedder.embed, [m.text for m in memories])
            await self.run(self.s.store.add, memories, vectors, actor="api")
            return JSONResponse(
                {"object": "list", "data": [m.to_json() for m in memories]}, status_code=201
            )
        identity = Identity(user_id, agent_id, session_id, tenant=tenant)
        job = ExtractionJob(
            identity=identity, user_texts=user_texts, assistant_text=assistant_text,
            model=str(body.get("model") or ""), created_at=created_at,
        )
        stored = await self._infer(job)
        if metadata:
            stored = [
                await self.run(self.s.store.update, m.id, metadata=metadata) or m for m in stored
            ]
        return JSONResponse(
            {"object": "list", "data": [m.to_json() for m in stored]},
            status_code=201 if stored else 200,
        )

    def _texts(self, body: Mapping[str, Any]) -> tuple[list[str], str]:
        """The user's texts (and the last assistant reply) from ``text`` or ``messages``."""
        has_text, has_messages = "text" in body, "messages" in body
        if has_text == has_messages:
            raise InvalidRequest("give exactly one of 'text' and 'messages'")
        if has_text:
            return [memory_text(body["text"])], ""
        messages = body["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) for m in messages
        ):
            raise InvalidRequest("'messages' must be a non-empty array of objects",
                                 param="messages")
        users = [message_text(m.get("content")).strip() for m in messages
                 if m.get("role") == "user"]
        replies = [message_text(m.get("content")).strip() for m in messages
                   if m.get("role") == "assistant"]
        users = [text for text in users if text]
        if not users:
            raise InvalidRequest("'messages' holds no user message with text", param="messages")
        return users, replies[-1] if replies else ""

    async def _infer(self, job: ExtractionJob) -> list[Memory]:
        extractor = self.s.extractor
        settings = self.s.settings.extraction
        if extractor is None or settings.mode == "off":
            raise InvalidRequest("extraction is off on this proxy: send infer=false",
                                 param="infer")
        if settings.mode == "llm" and not (settings.model or job.model):
            raise InvalidRequest(
                "infer=true needs a model: name one in 'model' or set extraction.model",
                param="model",
            )
        if extractor.needs_caller_key(job):
            raise InvalidRequest(
                "infer=true needs a key for the extraction model: set extraction.api_key or "
                "upstream.api_key", param="infer",
            )
        try:
            # In flight like a job: a forget of this user meanwhile drops its writes.
            with work_started(time.time()):
                stored: list[Memory] = await extractor.process(job)
        except ExtractionFailed as exc:
            raise UpstreamError(f"extraction failed: {exc}") from exc
        # What the store really holds: a forget meanwhile dropped the writes.
        kept = [m for m in stored if await self.run(self.s.store.get, m.id) is not None]
        return kept

    async def get(self, request: Request) -> Response:
        memory = await self.memory_in_scope(request, self.scope(request))
        return JSONResponse(memory.to_json())

    async def patch(self, request: Request) -> Response:
        scope = self.scope(request)
        memory = await self.memory_in_scope(request, scope)
        body = await self.body(request)
        for key in body:
            if key in IDENTITY_FIELDS:
                raise InvalidRequest(f"'{key}' cannot be changed", param=key)
            if key not in ("text", "memory", "metadata"):
                raise InvalidRequest(f"unknown field {key!r}", param=key)
        if not body:
            raise InvalidRequest("give 'text' and/or 'metadata' to change")
        text_key = "text" if "text" in body else "memory" if "memory" in body else None
        text = memory_text(body[text_key], text_key, self._max_chars) if text_key else None
        metadata = None
        if "metadata" in body:
            # JSON merge patch: given keys are set, null removes a key.
            merged = {**memory.metadata, **user_metadata(body["metadata"], self._max_metadata)}
            metadata = check_metadata_size(
                {k: v for k, v in merged.items() if v is not None}, self._max_metadata
            )
        vector = None
        if text is not None and text != memory.text:
            vector = (await self.run(self.s.embedder.embed, [text]))[0]
        changed = await self.run(
            self.s.store.update, memory.id, text=text, vector=vector, metadata=metadata
        )
        if changed is None:
            raise NotFound(f"no memory with id {memory.id!r}")
        return JSONResponse(changed.to_json())

    async def delete(self, request: Request) -> Response:
        memory = await self.memory_in_scope(request, self.scope(request))
        if await self.run(self.s.store.delete, memory.id) is None:
            raise NotFound(f"no memory with id {memory.id!r}")
        return JSONResponse({"id": memory.id, "object": "memory.deleted", "deleted": True})

    async def history(self, request: Request) -> Response:
        scope = self.scope(request)
        memory_id = request.path_params["memory_id"]
        events = await self.run(self.s.store.history.of_memory, memory_id)
        query = request.query_params
        events = [
            e for e in events
            if scope.allows(e.tenant, e.user_id)
            and query.get("tenant", e.tenant) == e.tenant
            and query.get("user_id", e.user_id) == e.user_id
        ]
        if not events:
            raise NotFound(f"no history for memory id {memory_id!r}")
        return JSONResponse({"object": "list", "data": [e.to_json() for e in events]})

    async def search(self, request: Request) -> Response:
        scope = self.scope(request)
        body = await self.body(request)
        tenant, user_id = self.owner(scope, body)
        query = memory_text(body.get("query"), "query")
        limit = body.get("limit", 10)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)  # 10.0 is an integer to JSON Schema (and JavaScript)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100:
            raise InvalidRequest("'limit' must be an integer from 1 to 100", param="limit")
        found = await self.run(
            self.s.retriever.retrieve, user_id, query, tenant=tenant, limit=limit,
            filters=identity_filters(body, self._max_id, body.get("filters")),
            include_superseded=bool_param(body.get("include_superseded", False),
                                          "include_superseded"),
            budget=False,  # and so not recorded as an injection
        )
        return JSONResponse({
            "object": "list",
            # score: the absolute cosine, readable alone (one match is not "0.0");
            # rank_score: the relative fused score the results are ordered by.
            "data": [{**hit.memory.to_json(), "score": round(hit.similarity or 0.0, 6),
                      "rank_score": round(hit.score, 6)} for hit in found],
        })

    async def forget_user(self, request: Request) -> Response:
        scope = self.scope(request)
        tenant, user_id = self.owner(
            scope, {**request.query_params, "user_id": request.path_params["user_id"]}
        )
        counts: dict[str, int] = await self.run(self.s.store.delete_user, user_id, tenant=tenant)
        jobs = self.s.jobs
        counts["jobs"] = (
            await self.run(jobs.delete_owner, Identity(user_id, tenant=tenant)) if jobs else 0
        )
        self.s.retriever.recent.forget(tenant, user_id)  # a forgotten user leaves no trace
        return JSONResponse({
            "object": "user.deleted", "tenant": tenant, "user_id": user_id, "deleted": counts,
        })
