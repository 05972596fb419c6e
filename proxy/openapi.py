"""The memory API described as OpenAPI 3.1 (served at ``/openapi.json``), written by hand."""

from __future__ import annotations

from typing import Any

from proxy import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


ERRORS = {
    code: {"$ref": f"#/components/responses/{name}"}
    for code, name in (("400", "BadRequest"), ("401", "Unauthorized"), ("403", "Forbidden"),
                       ("404", "NotFound"), ("503", "Unavailable"))
}

TENANT = _query("tenant", "Tenant (admin key only; a proxy key implies its own). "
                "Default: default.")
USER = _query("user_id", "The user whose memories these are.")
NULLABLE_STRING = {"type": ["string", "null"]}
TIMESTAMP = {"type": "number", "description": "Unix time in seconds"}

SCHEMAS: dict[str, Any] = {
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
        "properties": {
            "user_id": {"type": "string"}, "tenant": {"type": "string"},
            "text": {"type": "string"},
            "messages": {"type": "array", "items": {"type": "object"}},
            "infer": {"type": "boolean", "default": True,
                      "description": "true: extract facts with the LLM; false: store the text "
                      "(or each user message) as given"},
            "model": {"type": "string", "description": "Model for infer=true"},
            "metadata": {"type": "object"}, "agent_id": {"type": "string"},
            "session_id": {"type": "string"},
        },
    },
    "PatchMemory": {
        "type": "object",
        "properties": {"text": {"type": "string"},
                       "metadata": {"type": "object", "description": "Merged; null removes a key"}},
    },
    "Search": {
        "type": "object", "required": ["user_id", "query"],
        "properties": {
            "user_id": {"type": "string"}, "tenant": {"type": "string"},
            "query": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            "filters": _ref("Filters"), "agent_id": {"type": "string"},
            "session_id": {"type": "string"}, "include_superseded": {"type": "boolean"},
        },
    },
}

RESPONSES = {
    name: _json(_ref("Error"), description)
    for name, description in (
        ("BadRequest", "Invalid request"), ("Unauthorized", "Missing or wrong key"),
        ("Forbidden", "Outside the caller's tenant or user"), ("NotFound", "No such memory"),
        ("Unavailable", "The memory store is unavailable"),
    )
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **ERRORS}, **extra}


def openapi_document() -> dict[str, Any]:
    memory_id = [_path("memory_id")]
    list_params = [
        USER, TENANT, _query("agent_id", "Only this agent's memories"),
        _query("session_id", "Only this session's memories"),
        _query("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": 1000}),
        _query("cursor", "next_cursor of the previous page"),
        _query("include_superseded", "List superseded memories too", {"type": "boolean"}),
        _query("filters", "Filters as JSON text"),
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
                            requestBody=with_body("CreateMemories")),
            },
            "/v1/memories/import": {"post": _op(
                "Import memories (JSON lines or an array, as exported)",
                {"200": _json({"type": "object", "properties": {
                    "imported": {"type": "integer"}, "history": {"type": "integer"}}})},
                parameters=[USER, TENANT],
                requestBody={"required": True, "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "array", "items": {
                        "type": "object"}}}}},
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
                "parameters": [_path("user_id"), TENANT],
                "get": _op("Export a user: JSON lines with metadata and history", {"200": {
                    "description": "One memory per line",
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}),
            },
            "/v1/users/{user_id}/jobs": {
                "parameters": [_path("user_id"), TENANT, _query(
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
                "parameters": [_path("user_id"), TENANT],
                "delete": _op("Forget a user: memories, history and pending jobs", {
                    "200": _json({"type": "object", "properties": {"deleted": {
                        "type": "object", "additionalProperties": {"type": "integer"}}}})}),
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "The admin key (MEMPROXY_ADMIN_KEY), or in keys mode a proxy key "
                "(its own tenant and user only)"}},
        },
    }
