"""Moving a user's memories in and out: ``GET /v1/users/{user_id}/export`` and
``POST /v1/memories/import``.

The export is JSON lines, oldest first: one ``{"object": "memory", …, "history": [...]}`` per
stored memory (superseded ones included), then one ``{"object": "memory.history", "id", …}``
per deleted memory whose trail remains. The import takes that format (or a JSON array of it),
validates every record before writing any, then embeds and writes in batches; ids, timestamps,
metadata, supersede marks and history come back as they were, so an export imported into an
empty data dir reproduces the user. Importing the same export twice changes nothing.
An id that belongs to another owner is a 409: an import never overwrites someone else.

``?vectors=true`` adds each memory's stored vector to its record (``embedding``: the model's
name and the float32 vector in base64). An import into a memproxy running the same model uses
it instead of embedding the text again — a migration then costs no model time; under another
model (or none named) the text is embedded as always.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from proxy import strict_json
from proxy.api.memories import (
    MemoriesAPI,
    bool_param,
    memory_id_problem,
    optional_id,
    read_raw,
)
from proxy.config import Settings, StoreSettings
from proxy.errors import Conflict, InvalidJSON, InvalidRequest
from proxy.gateway.auth import Scope
from proxy.memory.history import EVENTS, HistoryEvent
from proxy.memory.listing import parse_time
from proxy.memory.model import metadata_size_problem, text_size_problem
from proxy.memory.store import Memory, MemoryStore

EMBED_BATCH = 256


def model_name(embedder: Any) -> str:
    """What an exported vector says it was made by: the model and its precision."""
    return str(getattr(embedder, "name", None) or type(embedder).__name__)


def _gather(
    store: MemoryStore, tenant: str, user_id: str, model: str | None
) -> list[dict[str, Any]]:
    memories = store.all_memories(user_id, tenant=tenant)
    vectors = store.vectors_of(user_id, tenant=tenant) if model is not None else {}
    trails: dict[str, list[dict[str, Any]]] = {}
    for event in store.history.of_owner(tenant, user_id):
        row = event.to_json()
        for owned in ("memory_id", "tenant", "user_id", "id"):
            row.pop(owned)
        trails.setdefault(event.memory_id, []).append(row)
    records = [{**m.to_json(), "history": trails.pop(m.id, [])} for m in memories]
    for record in records:
        vector = vectors.get(record["id"])
        if vector is not None:
            record["embedding"] = {
                "model": model,
                "vector": base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode(),
            }
    records += [
        {"object": "memory.history", "id": memory_id, "tenant": tenant, "user_id": user_id,
         "history": rows}
        for memory_id, rows in trails.items()
    ]
    return records


async def export_user(api: MemoriesAPI, request: Request) -> Response:
    scope = api.scope(request)
    tenant, user_id = api.owner(
        scope, {**request.query_params, "user_id": request.path_params["user_id"]}
    )
    with_vectors = bool_param(request.query_params.get("vectors", "false"), "vectors")
    model = model_name(api.s.embedder) if with_vectors else None
    records = await api.run(_gather, api.s.store, tenant, user_id, model)

    async def lines() -> AsyncIterator[bytes]:
        for record in records:
            yield (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")

    return StreamingResponse(
        lines(), media_type="application/x-ndjson",
        headers={"x-export-records": str(len(records))},
    )


# -- import -------------------------------------------------------------------------------


def parse_records(raw: bytes) -> list[tuple[int, Any]]:
    """(line number or array position, record) from JSON lines or one JSON array."""
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"request body is not UTF-8: {exc}") from exc
    if text.lstrip().startswith("["):
        items = strict_json.parse(text, "request body (a JSON array)")
        if not isinstance(items, list):
            raise InvalidJSON("request body is not a JSON array")
        return list(enumerate(items, start=1))
    records: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        records.append((number, strict_json.parse(line, f"line {number}")))
    return records


# A lone surrogate can only come from a JSON escape (the body decoded as strict UTF-8): a
# body with no \ud800–\udfff escape is not checked record by record (a JSON dump of each,
# base64 vectors and all, was a fifth of an import's time).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _Record:
    """One import record, validated; errors name its line."""

    def __init__(self, where: int, record: Any, limits: StoreSettings, escapes: bool = True):
        self.where = where
        self.limits = limits
        if not isinstance(record, dict):
            self.fail("must be a JSON object")
        if escapes:
            strict_json.check_unicode(record, f"record {where}")
        self.data: dict[str, Any] = record

    def fail(self, message: str) -> None:
        raise InvalidRequest(f"record {self.where}: {message}", param="body")

    def text(self, name: str, required: bool = False) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self.fail(f"'{name}' is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(f"'{name}' must be a non-empty string")
        return str(value)

    def memory_id(self, required: bool = False) -> str | None:
        """The record's ``id``, one a route can reach afterwards."""
        value = self.data.get("id")
        if value is None and not required:
            return None
        if not isinstance(value, str):
            self.fail("'id' must be a string")
        problem = memory_id_problem(str(value))
        if problem is not None:
            self.fail(f"'id' {problem}")
        return str(value)

    def time(self, name: str, source: Mapping[str, Any] | None = None) -> float | None:
        value = (self.data if source is None else source).get(name)
        if value is None:
            return None
        try:
            return parse_time(value, name)
        except InvalidRequest:
            self.fail(f"'{name}' must be epoch seconds or ISO 8601")
        raise AssertionError  # unreachable

    def history(self, memory_id: str, owner: tuple[str, str]) -> list[HistoryEvent]:
        rows = self.data.get("history") or []
        if not isinstance(rows, list):
            self.fail("'history' must be an array")
        events: list[HistoryEvent] = []
        for row in rows:
            if not isinstance(row, dict) or row.get("event") not in EVENTS:
                self.fail(f"history rows need an 'event' of {', '.join(EVENTS)}")
            created_at = self.time("created_at", row)
            if created_at is None:
                self.fail("history rows need 'created_at'")
            old, new = row.get("old_text"), row.get("new_text")
            if not all(v is None or isinstance(v, str) for v in (old, new)):
                self.fail("history texts must be strings or null")
            events.append(HistoryEvent(
                memory_id, owner[0], owner[1], row["event"], old, new, float(created_at or 0),
                str(row.get("actor") or "import"),
            ))
        return events


def _vector(record: _Record, model: str, dimension: int) -> np.ndarray | None:
    """The record's exported vector when this memproxy's model made it, else None."""
    given = record.data.get("embedding")
    if given is None:
        return None
    if (not isinstance(given, dict) or not isinstance(given.get("model"), str)
            or not isinstance(given.get("vector"), str)):
        record.fail("'embedding' must be an object with 'model' and 'vector' (base64) strings")
    try:
        raw = base64.b64decode(given["vector"], validate=True)
    except (binascii.Error, ValueError):
        record.fail("'embedding.vector' is not base64")
    if len(raw) % 4:
        record.fail("'embedding.vector' is not float32 values")
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    norm = float(np.linalg.norm(vector)) if np.isfinite(vector).all() else 0.0
    if not norm > 0:
        record.fail("'embedding.vector' must be finite and not all zero")
    if given["model"] != model or len(vector) != dimension:
        return None  # another model's: the text is embedded here
    return vector / norm


def _memory(record: _Record, owner: tuple[str, str]) -> Memory:
    data = record.data
    text = record.text("memory") or record.text("text")
    if text is None:
        record.fail("'memory' (the text) is required")
    problem = text_size_problem(str(text), record.limits.max_memory_chars)
    if problem is not None:
        record.fail(f"'memory' {problem} (store.max_memory_chars)")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        record.fail("'metadata' must be an object")
    problem = metadata_size_problem(metadata, record.limits.max_metadata_bytes)
    if problem is not None:
        record.fail(f"'metadata' {problem} (store.max_metadata_bytes)")
    given: dict[str, Any] = {}
    created_at = record.time("created_at")
    if created_at is not None:
        given["created_at"] = created_at
    memory_id = record.memory_id()
    if memory_id is not None:
        given["id"] = memory_id
    return Memory(
        owner[1], str(text), tenant=owner[0],
        agent_id=record.text("agent_id"), session_id=record.text("session_id"),
        source=record.text("source") or "import", metadata=metadata,
        updated_at=record.time("updated_at") or 0.0,
        superseded_by=record.text("superseded_by"), valid_to=record.time("valid_to"),
        **given,
    )


@dataclass
class _Import:
    """An import's records, read and validated."""

    memories: list[Memory] = field(default_factory=list)
    given: dict[str, np.ndarray] = field(default_factory=dict)  # vectors this model made
    history: list[HistoryEvent] = field(default_factory=list)
    owner_of_id: dict[str, tuple[str, str]] = field(default_factory=dict)


def _read_import(
    raw: bytes, scope: Scope, query: Mapping[str, str], settings: Settings, model: str,
    dimension: int,
) -> _Import:
    """Blocking (a worker thread: 500 records took ~0.1 s, which the event loop and every chat
    on it would wait for)."""
    read = _Import()
    memories, given, history, owner_of_id = (read.memories, read.given, read.history,
                                             read.owner_of_id)
    max_id = settings.identity.max_id_length
    record_of_id: dict[str, int] = {}  # memory records only: one each
    records = parse_records(raw)
    if not records:
        raise InvalidRequest("the import holds no records: send JSON lines or a JSON array of "
                             "memory records (as GET /v1/users/{user_id}/export gives)",
                             param="body")
    escapes = _SURROGATE_ESCAPE.search(raw) is not None
    for where, item in records:
        record = _Record(where, item, settings.store, escapes)
        tenant = scope.tenant_for(
            optional_id(query, "tenant", max_id) or optional_id(record.data, "tenant", max_id)
        )
        user_id = scope.user_for(
            optional_id(query, "user_id", max_id) or optional_id(record.data, "user_id", max_id)
        )
        if user_id is None:
            record.fail("'user_id' is required (in the record or the query)")
        owner = (tenant, str(user_id))
        kind = record.data.get("object", "memory")
        if kind == "memory":
            memory = _memory(record, owner)
            memories.append(memory)
            vector = _vector(record, model, dimension)
            if vector is not None:
                given[memory.id] = vector
            memory_id = memory.id
            first = record_of_id.setdefault(memory_id, where)
            if first != where:
                record.fail(f"id {memory_id!r} appears twice (records {first} and {where})")
        elif kind == "memory.history":
            memory_id = str(record.memory_id(required=True))
        else:
            record.fail(f"unknown object {kind!r} (memory or memory.history)")
        if owner_of_id.setdefault(memory_id, owner) != owner:
            record.fail(f"id {memory_id!r} appears for two owners")
        history += record.history(memory_id, owner)
    return read


async def import_memories(api: MemoriesAPI, request: Request) -> Response:
    scope = api.scope(request)
    raw = await read_raw(request, api.s.settings.server.max_body_bytes)
    model, dimension = model_name(api.s.embedder), api.s.embedder.dimension
    read: _Import = await api.run(_read_import, raw, scope, request.query_params,
                                  api.s.settings, model, dimension)
    memories, given, history, owner_of_id = (read.memories, read.given, read.history,
                                             read.owner_of_id)
    known = await api.run(api.s.store.history.owners, list(owner_of_id))
    taken = sorted(i for i, owner in known.items() if owner != owner_of_id[i])
    if taken:
        raise Conflict(f"ids already used by another user: {', '.join(taken[:10])}", param="id")
    # A memory already imported keeps its history: importing twice adds no rows.
    history = [e for e in history if e.memory_id not in known]
    embedded = 0
    for start in range(0, len(memories), EMBED_BATCH):
        batch = memories[start : start + EMBED_BATCH]
        vectors = np.zeros((len(batch), dimension), dtype=np.float32)
        missing = [row for row, m in enumerate(batch) if m.id not in given]
        if missing:
            vectors[missing] = await api.run(
                api.s.embedder.embed, [batch[row].text for row in missing]
            )
            embedded += len(missing)
        for row, memory in enumerate(batch):
            if memory.id in given:
                vectors[row] = given[memory.id]
        ids = {m.id for m in batch}
        await api.run(
            api.s.store.restore, batch, vectors, [e for e in history if e.memory_id in ids]
        )
    stored = {m.id for m in memories}
    trails = [e for e in history if e.memory_id not in stored]
    if trails:
        await api.run(api.s.store.restore, [], np.zeros((0, 1), dtype=np.float32), trails)
    return JSONResponse({
        "object": "import.result", "imported": len(memories), "history": len(history),
        "embedded": embedded,
    })
