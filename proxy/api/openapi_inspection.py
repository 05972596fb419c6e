"""The OpenAPI paths and schemas of the memory API's inspection side (the console's ground):
the users listing, Explain, the recent injections and the admin's job queue.

Kept apart from proxy/api/openapi.py, which assembles the document and owns the shared
pieces (the error responses, the id schema); see proxy/api/users.py, explain.py and jobs.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NULLABLE_STRING = {"type": ["string", "null"]}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
TEXT = {"type": "string", "minLength": 1, "pattern": "\\S"}
OUTCOMES = ["injected", "over_budget", "near_duplicate", "below_top_k", "gated"]
JOB_STATES = ["queued", "running", "waiting_key", "done", "dead", "failed"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def inspection_schemas(ident: dict[str, Any]) -> dict[str, Any]:
    nullable_ident = {**ident, "type": ["string", "null"]}
    scope = {"type": "object", "required": ["admin", "tenant", "user_id"], "properties": {
        "admin": {"type": "boolean"}, "tenant": NULLABLE_STRING, "user_id": NULLABLE_STRING}}
    return {
        "UserSummary": {
            "type": "object",
            "required": ["object", "tenant", "user_id", "memories", "superseded",
                         "last_activity"],
            "properties": {
                "object": {"const": "user"}, "tenant": {"type": "string"},
                "user_id": {"type": "string"},
                "memories": {**INTEGER, "description": "Current memories (retrievable)"},
                "superseded": {**INTEGER, "description": "Superseded memories, kept"},
                "last_activity": {**NUMBER, "description": "Unix time of the latest memory "
                                  "change still stored (added, updated, superseded)"},
            },
        },
        "UserList": {
            "type": "object", "required": ["object", "data", "has_more", "tenant", "scope"],
            "properties": {
                "object": {"const": "list"}, "data": {"type": "array",
                                                      "items": _ref("UserSummary")},
                "has_more": {"type": "boolean"}, "next_cursor": NULLABLE_STRING,
                "tenant": {"type": "string"},
                "tenants": {"type": "array", "items": {"type": "string"},
                            "description": "Admin: every tenant with memories; a proxy key: "
                            "its own"},
                "scope": {**scope, "description": "Whose memories the caller may see"},
            },
        },
        "Explain": {
            "type": "object", "required": ["user_id"],
            "description": "Exactly one of message and messages.",
            "oneOf": [{"required": ["message"]}, {"required": ["messages"]}],
            "properties": {
                "user_id": ident, "tenant": nullable_ident,
                "message": {**TEXT, "description": "A message as if the user sent it"},
                "messages": {"type": "array", "minItems": 1, "items": {"type": "object"},
                             "description": "Chat messages, as a chat request has them (the "
                             "query is built from them as the chat path builds it)"},
                "model": {**TEXT, "description": "The model whose tokenizer counts the "
                          "budget (as the chat request's model would)"},
                "max_candidates": {"type": "integer", "minimum": 1, "maximum": 500,
                                   "default": 50},
            },
        },
        "ExplainedCandidate": {
            "type": "object",
            "required": ["memory", "score", "keyword_score", "rank_score", "outcome", "reason"],
            "properties": {
                "memory": _ref("Memory"),
                "score": {**NUMBER, "description": "Cosine to the query (the search API's "
                          "score)"},
                "keyword_score": {**NUMBER, "description": "BM25 (0: no query term)"},
                "rank_score": {"type": ["number", "null"], "description": "The fused score "
                               "ranking orders by (the search API's rank_score); null: gated "
                               "out before ranking"},
                "outcome": {"enum": OUTCOMES}, "reason": {"type": "string"},
                "tokens": {"type": ["integer", "null"],
                           "description": "Its cost against the budget, when counted"},
            },
        },
        "Explanation": {
            "type": "object",
            "required": ["object", "tenant", "user_id", "query", "injected", "block",
                         "budget", "candidates"],
            "properties": {
                "object": {"const": "memory.explanation"}, "tenant": {"type": "string"},
                "user_id": {"type": "string"}, "model": NULLABLE_STRING,
                "query": {"type": "string"},
                "injected": {"type": "array", "items": {"type": "string"},
                             "description": "Ids injected, in the block's order"},
                "block": {**NULLABLE_STRING, "description": "The system message a chat "
                          "request would get (null: nothing injected)"},
                "block_tokens": INTEGER,
                "budget": {"type": "object", "properties": {
                    "max_tokens": INTEGER, "used_tokens": INTEGER,
                    "counted_with": {"enum": ["tokenizer", "estimate"]}}},
                "memories": {**INTEGER, "description": "The user's memories looked at"},
                "gating": {"type": "boolean", "description": "More than core_when_at_most: "
                           "a memory needs a query term, min_score or a day asked about"},
                "complete": {"type": "boolean", "description": "false: a user too large to "
                             "cache, only the nearest memories were ranked"},
                "time_asked": {
                    "type": "object", "required": ["spans", "dates_first"],
                    "description": "The days the question asks about (\"on 5 Jan 2024\", "
                    "\"yesterday\", \"last week\": read against today in "
                    "retrieval.timezone); its memories are lifted",
                    "properties": {
                        "spans": {"type": "array", "items": {
                            "type": "object", "required": ["from", "to", "said"],
                            "properties": {"from": {"type": "string", "format": "date"},
                                           "to": {"type": "string", "format": "date"},
                                           "said": {"type": "string"}}}},
                        "dates_first": {"type": "boolean", "description": "The question "
                                        "has nothing else to go on: those days' memories "
                                        "rank first"},
                    },
                },
                "settings": {"type": "object"},
                "candidates": {"type": "array", "items": _ref("ExplainedCandidate")},
            },
        },
        "InjectionRecord": {
            "type": "object", "required": ["object", "at", "tenant", "user_id", "injected"],
            "properties": {
                "object": {"const": "memory.injection"}, "seq": INTEGER, "at": NUMBER,
                "tenant": {"type": "string"}, "user_id": {"type": "string"},
                "model": NULLABLE_STRING,
                "injected": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "score": NUMBER, "rank_score": NUMBER,
                    "tokens": INTEGER}}},
                "used_tokens": INTEGER, "max_tokens": INTEGER, "candidates": INTEGER,
                "duration_ms": NUMBER,
                "late": {"type": "boolean", "description": "Slower than retrieval.timeout_ms:"
                         " the request was forwarded without these"},
                "query": {**NULLABLE_STRING, "description": "Only with "
                          "retrieval.recent_injections_text"},
                "phases_ms": {"type": "object", "additionalProperties": NUMBER,
                              "description": "Milliseconds per step: embed (the query), "
                              "candidates (the store; a cold user's load included), rank"},
            },
        },
        "Job": {
            "type": "object", "required": ["id", "state", "attempts", "created_at"],
            "properties": {
                "id": INTEGER, "state": {"type": "string"}, "user_id": NULLABLE_STRING,
                "attempts": INTEGER, "created_at": NUMBER, "run_after": NUMBER,
                "finished_at": {"type": ["number", "null"]},
                "last_error": {**NULLABLE_STRING, "description": "Why the last attempt failed "
                               "(a dead letter's cause)"},
                "facts": {"type": ["integer", "null"]},
            },
        },
        "RetryJobs": {
            "type": "object", "additionalProperties": False,
            "oneOf": [{"required": ["ids"]}, {"required": ["dead"],
                                              "properties": {"dead": {"const": True}}}],
            "properties": {
                "ids": {"type": "array", "minItems": 1, "maxItems": 1000,
                        "items": {"type": "integer", "minimum": 1}},
                "dead": {"type": "boolean", "description": "true: every dead job"},
            },
        },
        "PurgeJobs": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "states": {"type": "array", "minItems": 1,
                           "items": {"enum": ["done", "dead"]}, "default": ["done"]},
                "older_than_seconds": {"type": "number", "minimum": 0, "maximum": 1e10,
                                       "default": 0},
            },
        },
    }


def inspection_paths(
    ident: dict[str, Any], op: Callable[..., dict[str, Any]], json: Callable[..., Any],
    query: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """``op``, ``json`` and ``query`` are proxy/api/openapi.py's builders."""
    tenant = query("tenant", "Tenant (admin key only; a proxy key implies its own). "
                   "Default: default.", ident)
    limit = query("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": 1000})

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}

    def listing(item: str, **more: Any) -> dict[str, Any]:
        return {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref(item)},
            **more}}

    return {
        "/v1/users": {"get": op(
            "Find users: by id prefix, with memory counts and last activity", {"200": json(
                _ref("UserList"))},
            parameters=[
                tenant, query("prefix", "Only user ids starting with this",
                              {"type": "string", "maxLength": ident["maxLength"]}),
                query("order", "id: by user id; recent: latest activity first",
                      {"enum": ["id", "recent"], "default": "id"}),
                limit, query("cursor", "next_cursor of the previous page"),
            ],
        )},
        "/v1/memories/explain": {"post": op(
            "What a message would inject, and why: the block, every candidate's scores, "
            "what was gated out, the token budget", {"200": json(_ref("Explanation"))},
            requestBody=body("Explain"),
        )},
        "/v1/memories/injections": {"get": op(
            "Recent chat injections on this replica (ids and scores), newest first",
            {"200": json(listing("InjectionRecord", size=INTEGER,
                                 keeps_text={"type": "boolean"}))},
            parameters=[tenant, query("user_id", "Only this user's", ident), limit],
        )},
        "/v1/memories/jobs": {"get": op(
            "The extraction job queue (admin key): counts by state and the newest jobs",
            {"200": json(listing("Job", extraction={"enum": ["llm", "raw", "off"]},
                                 stats={"type": "object",
                                        "additionalProperties": NUMBER}))},
            parameters=[
                {"name": "state", "in": "query", "required": False, "style": "form",
                 "explode": True, "description": "Only jobs in these states",
                 "schema": {"type": "array", "items": {"enum": JOB_STATES}}},
                query("user_id", "Only this user's jobs", ident), limit,
            ],
        )},
        "/v1/memories/jobs/retry": {"post": op(
            "Queue jobs again with a fresh attempt count (admin key)",
            {"200": json({"type": "object", "properties": {"retried": INTEGER}})},
            requestBody=body("RetryJobs"),
        )},
        "/v1/memories/jobs/purge": {"post": op(
            "Delete finished jobs (done and/or dead) older than an age (admin key)",
            {"200": json({"type": "object", "properties": {"purged": INTEGER}})},
            requestBody=body("PurgeJobs"),
        )},
    }
