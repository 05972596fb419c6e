"""The memory API described as OpenAPI 3.1 (served at ``/openapi.json``), written by hand.

It documents every status the server answers (a wrong method on a memory path is a 405 with
``Allow``, a body over server.max_body_bytes a 413 …) and the constraints it enforces (id
lengths, exactly one of ``text``/``messages``, a non-empty PATCH), so a client generated
from it, or a fuzzer run against it, meets no surprise. The chat endpoint and the health and
metrics endpoints are listed too, briefly: their bodies are OpenAI's and Prometheus's.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

from proxy import __version__
from proxy.api.openapi_inspection import inspection_paths, inspection_schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def _path(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/{ERROR_RESPONSES[code][0]}"}
            for code in codes}


# status → (component name, description)
ERROR_RESPONSES = {
    "400": ("BadRequest", "Invalid request (the message says what is wrong)"),
    "401": ("Unauthorized", "Missing or wrong key"),
    "403": ("Forbidden", "Outside the caller's tenant or user"),
    "404": ("NotFound", "No such memory, user history or route"),
    "405": ("MethodNotAllowed", "Wrong method for this path (see the Allow header)"),
    "409": ("Conflict", "An id already belongs to another user"),
    "413": ("TooLarge", "Request body over server.max_body_bytes"),
    "500": ("ServerError", "Internal error in memproxy"),
    "502": ("UpstreamFailed", "The extraction model's provider failed or is unreachable"),
    "503": ("Unavailable", "The memory store is unavailable"),
    "504": ("UpstreamTimeout", "The extraction model's provider timed out"),
}
ERRORS = _errors("400", "401", "403", "404", "405", "500", "503")
BODY_ERRORS = _errors("413")
MEMORY_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^/]+$"}
TEXT = {"type": "string", "minLength": 1, "pattern": "\\S"}  # not only whitespace


@functools.cache
def _id_pattern() -> str:
    """What identity.check_id takes: something besides whitespace, and no character of the
    Unicode categories Cc, Cf, Zl, Zp or Cs (from the running Python's Unicode tables).

    Basic Multilingual Plane only: \\u escapes are what every JSON Schema (ECMA 262) regex
    reads; the few refused characters above it (tags, musical formatting) are left out."""
    refused = [c for c in range(0x10000)
               if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp", "Cs")]
    ranges: list[tuple[int, int]] = []
    for c in refused:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))

    def escape(c: int) -> str:
        return f"\\u{c:04x}"

    excluded = "".join(escape(a) if a == b else f"{escape(a)}-{escape(b)}" for a, b in ranges)
    return f"^(?=.*\\S)[^{excluded}]*$"
NULLABLE_STRING = {"type": ["string", "null"]}
TIMESTAMP = {"type": "number", "description": "Unix time in seconds"}

def _schemas(ident: dict[str, Any]) -> dict[str, Any]:
    """The schemas; ``ident`` is the schema of a user, tenant, agent or session id."""
    nullable_ident = {**ident, "type": ["string", "null"]}
    return {
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["message", "type"],
                                     "properties": {
                                         "message": {"type": "string"}, "type": {"type": "string"},
                                         "param": NULLABLE_STRING, "code": NULLABLE_STRING}}},
        },
        "Memory": {
            "type": "object",
            "required": ["id", "object", "memory", "tenant", "user_id", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "string"}, "object": {"const": "memory"},
                "memory": {"type": "string", "description": "The remembered fact"},
                "tenant": {"type": "string"}, "user_id": {"type": "string"},
                "agent_id": NULLABLE_STRING, "session_id": NULLABLE_STRING,
                "source": {"type": "string", "description": "llm, raw, api or import"},
                "metadata": {"type": "object", "additionalProperties": True},
                "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
                "superseded_by": {**NULLABLE_STRING, "description": "Id of the memory that "
                                  "replaced this one; superseded memories are not retrieved"},
                "valid_to": {"type": ["number", "null"]},
            },
        },
        "ScoredMemory": {"allOf": [_ref("Memory"), {
            "type": "object", "required": ["score", "rank_score"],
            "properties": {
                "score": {"type": "number", "description": "Cosine similarity of the memory and "
                          "the query (all-MiniLM-L6-v2: ~0.1 already relates, >0.5 is close): "
                          "absolute, comparable across searches"},
                "rank_score": {"type": "number", "description": "The hybrid (dense + keyword) "
                               "score the results are ordered by: 0–1, relative to this user's "
                               "other candidates for this query"},
            }}]},
        "MemoryList": {
            "type": "object", "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array",
                                                                 "items": _ref("Memory")},
                           "has_more": {"type": "boolean"}, "next_cursor": NULLABLE_STRING},
        },
        "HistoryEvent": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"}, "memory_id": {"type": "string"},
                "tenant": {"type": "string"}, "user_id": {"type": "string"},
                "event": {"enum": ["ADD", "UPDATE", "SUPERSEDE", "DELETE"]},
                "old_text": NULLABLE_STRING, "new_text": NULLABLE_STRING,
                "created_at": TIMESTAMP,
                "actor": {"type": "string", "description": "api, import or job:<id>"},
            },
        },
        "Filters": {
            "type": "object", "additionalProperties": True,
            "description": "Every key must match. Keys: agent_id, session_id, source, created_at, "
            "updated_at, valid_to, superseded_by, id, or a metadata key ('metadata.topic' or "
            "'topic'). Values: a value (equality) or operators $eq $ne $in $nin $gt $gte $lt "
            "$lte; timestamps take epoch seconds or ISO 8601.",
            "example": {"topic": {"$in": ["work", "stack"]}, "created_at": {"$gte": "2025-01-01"}},
        },
        "CreateMemories": {
            "type": "object", "required": ["user_id"],
            "description": "Exactly one of text and messages.",
            "oneOf": [{"required": ["text"]}, {"required": ["messages"]}],
            "properties": {
                "user_id": ident, "tenant": nullable_ident,
                "text": {**TEXT, "description": "At most "
                         "store.max_memory_chars characters when stored as given"},
                "messages": {"type": "array", "minItems": 1, "items": {"type": "object"},
                             "contains": {"type": "object", "required": ["role", "content"],
                                          "properties": {"role": {"const": "user"},
                                                         "content": TEXT}},
                             "description": "Chat messages; the user's ones are remembered "
                             "(at least one with text)"},
                "created_at": {"type": ["number", "string"], "description": "When the fact was "
                               "said: epoch seconds or ISO 8601 (default: now)"},
                "infer": {"type": "boolean", "default": True,
                          "description": "true: extract facts with the LLM; false: store the text "
                          "(or each user message) as given"},
                "model": {"type": "string", "description": "Model for infer=true"},
                "metadata": {"type": ["object", "null"], "description": "At most "
                             "store.max_metadata_bytes as JSON"},
                "agent_id": nullable_ident, "session_id": nullable_ident,
            },
        },
        "PatchMemory": {
            "type": "object", "minProperties": 1, "additionalProperties": False,
            "properties": {"text": TEXT,
                           "memory": {**TEXT, "description": "Same as text"},
                           "metadata": {"type": ["object", "null"],
                                        "description": "Merged; null removes a key"}},
        },
        "Search": {
            "type": "object", "required": ["user_id", "query"],
            "properties": {
                "user_id": ident, "tenant": nullable_ident,
                "query": TEXT,
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                "filters": {"anyOf": [_ref("Filters"), {"type": "null"}]},
                "agent_id": nullable_ident,
                "session_id": nullable_ident, "include_superseded": {"type": "boolean"},
            },
        },
    }


RESPONSES = {name: _json(_ref("Error"), description)
             for name, description in ERROR_RESPONSES.values()}
RESPONSES["MethodNotAllowed"]["headers"] = {"Allow": {
    "description": "The methods this path takes", "schema": {"type": "string"}}}


def _op(summary: str, responses: dict[str, Any], *errors: str, **extra: Any) -> dict[str, Any]:
    """An operation; ``errors``: statuses beyond the common ones (413 with a body …)."""
    more = {**BODY_ERRORS} if "requestBody" in extra else {}
    return {"summary": summary, "responses": {**responses, **ERRORS, **more, **_errors(*errors)},
            **extra}


def _plain(summary: str, description: str, media: str = "application/json") -> dict[str, Any]:
    return {"summary": summary, "security": [], "responses": {"200": {
        "description": description, "content": {media: {"schema": {}}}}}}


def _chat_path() -> dict[str, Any]:
    return {"post": {
        "summary": "OpenAI chat completions, with the user's memories injected",
        "description": "The body is OpenAI's (forwarded unchanged but for one injected system "
        "message); the user comes from X-User-Id (or the body's user field). Answers, "
        "streams and errors are the upstream's; X-Memory-Status and X-Memory-Injected say "
        "what memory did.",
        "security": [],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["messages"]}}}},
        "responses": {
            "200": {"description": "The upstream's answer (JSON, or text/event-stream)",
                    "content": {"application/json": {"schema": {}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_errors("400", "401", "413", "500", "502", "504"),
        },
    }}


def openapi_document(max_id_length: int = 256) -> dict[str, Any]:
    """The document; ``max_id_length``: identity.max_id_length (user, tenant … ids)."""
    ident = {"type": "string", "minLength": 1, "maxLength": max_id_length,
             "pattern": _id_pattern()}
    tenant = _query("tenant", "Tenant (admin key only; a proxy key implies its own). "
                    "Default: default.", ident)
    user = _query("user_id", "The user whose memories these are (in import records, or here).",
                  ident)
    owner = _query("user_id", "The user whose memories these are (a proxy key bound to a "
                   "user may leave it out).", ident, required=True)
    user_path = _path("user_id", ident, "May hold '/' (team/alice), percent-encoded or not")
    memory_id = [_path("memory_id", MEMORY_ID_SCHEMA)]
    list_params = [
        owner, tenant, _query("agent_id", "Only this agent's memories", ident),
        _query("session_id", "Only this session's memories", ident),
        _query("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": 1000}),
        _query("cursor", "next_cursor of the previous page"),
        _query("include_superseded", "List superseded memories too", {"type": "boolean"}),
        {"name": "filters", "in": "query", "required": False,
         "description": "Filters as JSON text", "content": {"application/json": {
             "schema": _ref("Filters")}}},
    ]
    def with_body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}

    list_of = {"type": "object", "properties": {"object": {"const": "list"}, "data": {
        "type": "array", "items": _ref("ScoredMemory")}}}
    history = {"type": "object", "properties": {"object": {"const": "list"}, "data": {
        "type": "array", "items": _ref("HistoryEvent")}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "memproxy memory API", "version": __version__,
                 "description": "See, correct, export and erase what memproxy remembers."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/memories": {
                "get": _op("List a user's memories, newest first", {"200": _json(
                    _ref("MemoryList"))}, parameters=list_params),
                "post": _op("Add memories (extracted with the LLM, or as given)",
                            {"201": _json(_ref("MemoryList"), "Created"),
                             "200": _json(_ref("MemoryList"), "Nothing new to remember")},
                            "502", "504", requestBody=with_body("CreateMemories")),
            },
            "/v1/memories/import": {"post": _op(
                "Import memories (JSON lines or an array, as exported)",
                {"200": _json({"type": "object", "properties": {
                    "imported": {"type": "integer"}, "history": {"type": "integer"},
                    "embedded": {"type": "integer", "description": "Texts embedded here (the "
                                 "others came with a vector of this memproxy's model)"}}})},
                "409", parameters=[user, tenant],
                requestBody={"required": True, "content": {
                    "application/x-ndjson": {"schema": TEXT},
                    "application/json": {"schema": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "description": "As exported: 'memory' (the text), "
                        "'user_id' (here or in the query), 'id', times, metadata, history, "
                        "'embedding' (an export's vector, used under the same model)",
                        "anyOf": [{"required": ["memory"]}, {"required": ["text"]}],
                        "properties": {"memory": TEXT, "text": TEXT, "embedding": {
                            "type": "object", "required": ["model", "vector"], "properties": {
                                "model": TEXT, "vector": {
                                    "type": "string", "format": "byte",
                                    "description": "float32 little-endian, base64"}}}}}}}}},
            )},
            "/v1/memories/search": {"post": _op(
                "Search a user's memories with the ranking the proxy injects with",
                {"200": _json(list_of)}, requestBody=with_body("Search"),
            )},
            "/v1/memories/{memory_id}": {
                "parameters": memory_id,
                "get": _op("Get a memory", {"200": _json(_ref("Memory"))}),
                "patch": _op("Change a memory's text and/or metadata",
                             {"200": _json(_ref("Memory"))}, requestBody=with_body(
                                 "PatchMemory")),
                "delete": _op("Delete a memory (its history stays)", {"200": _json({
                    "type": "object", "properties": {"id": {"type": "string"},
                                                     "deleted": {"type": "boolean"}}})}),
            },
            "/v1/memories/{memory_id}/history": {
                "parameters": memory_id,
                "get": _op("A memory's history", {"200": _json(history)}),
            },
            "/v1/users/{user_id}/export": {
                "parameters": [user_path, tenant, _query(
                    "vectors", "Add each memory's stored vector ('embedding'): an import into "
                    "a memproxy with the same model then embeds nothing",
                    {"type": "boolean", "default": False})],
                "get": _op("Export a user: JSON lines with metadata and history", {"200": {
                    "description": "One memory per line",
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}),
            },
            "/v1/users/{user_id}/jobs": {
                "parameters": [user_path, tenant, _query(
                    "wait", "Wait up to this many seconds (at most 60) for the user's pending "
                    "jobs to finish", {"type": "number", "minimum": 0, "maximum": 60})],
                "get": _op("A user's extraction jobs still to run (memories appear after them)",
                           {"200": _json({"type": "object", "properties": {
                               "pending": {"type": "integer"},
                               "states": {"type": "object",
                                          "additionalProperties": {"type": "integer"}},
                               "timed_out": {"type": "boolean"},
                               "extraction": {"enum": ["llm", "raw", "off"]}}})}),
            },
            "/v1/users/{user_id}": {
                "parameters": [user_path, tenant],
                "delete": _op("Forget a user: memories, history and pending jobs", {
                    "200": _json({"type": "object", "properties": {"deleted": {
                        "type": "object", "additionalProperties": {"type": "integer"}}}})}),
            },
            **inspection_paths(ident, _op, _json, _query),
            "/v1/chat/completions": _chat_path(),
            "/healthz": {"get": _plain("Liveness", "The process answers")},
            "/readyz": {"get": {**_plain("Readiness: memory store, jobs, workers", "Ready"),
                                "responses": {
                                    "200": _json({"type": "object"}, "Ready"),
                                    "503": _json({"type": "object"}, "Not ready")}}},
            "/metrics": {"get": _plain("Prometheus metrics", "Metrics",
                                       "text/plain; version=0.0.4")},
        },
        "components": {
            "schemas": {**_schemas(ident), **inspection_schemas(ident)},
            "responses": RESPONSES,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "The admin key (MEMPROXY_ADMIN_KEY), or in keys mode a proxy key "
                "(its own tenant and user only)"}},
        },
    }
